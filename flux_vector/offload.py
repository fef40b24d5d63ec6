"""Choosing and applying an offload mode from the accelerator and its free memory.

diffusers' model/sequential offload needs an accelerator (it raises "requires accelerator" without one) and
group offload CPU->CPU does nothing, so without an accelerator everything runs on the CPU and we say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI's parsers (OFFLOAD_MODES) start without it
    import torch

OFFLOAD_MODES = ("auto", "none", "model", "sequential", "group")
DEFAULT_OFFLOAD = "auto"  # chosen from the free accelerator memory (``choose_offload``)
GiB = 1024**3
# Activations of a 1024x1024 Flux step plus the CUDA context and allocator slack, measured loosely; a margin.
HEADROOM = 4 * GiB
GROUP_MIN_FREE = 6 * GiB


@dataclass(frozen=True)
class OffloadChoice:
    mode: str  # none | model | sequential | group
    device: torch.device
    reason: str


def module_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def choose_offload(
    requested: str, device: torch.device, free_bytes: int | None, component_bytes: dict[str, int]
) -> OffloadChoice:
    """Pure decision logic (tested on CPU): which offload mode to use and why."""
    if requested not in OFFLOAD_MODES:
        raise ValueError(f"offload={requested!r} is not allowed; offload must be one of {', '.join(OFFLOAD_MODES)}")
    if device.type == "cpu":
        if requested not in ("auto", "none"):
            raise ValueError(
                f"offload={requested!r} needs an accelerator and none is in use; use offload='none' or 'auto'"
            )
        return OffloadChoice("none", device, "no accelerator: running on CPU, no offload")
    if requested != "auto":
        return OffloadChoice(requested, device, f"offload={requested!r} as requested")
    if free_bytes is None:
        return OffloadChoice("none", device, f"{device.type}: free memory unknown, no offload")
    total, largest = sum(component_bytes.values()), max(component_bytes.values(), default=0)
    free = f"{free_bytes / GiB:.1f} GiB free"
    if total + HEADROOM <= free_bytes:
        return OffloadChoice("none", device, f"{free}, all {total / GiB:.1f} GiB of weights fit: no offload")
    if largest + HEADROOM <= free_bytes:
        return OffloadChoice("model", device, f"{free}, largest component {largest / GiB:.1f} GiB fits: model offload")
    if free_bytes >= GROUP_MIN_FREE:
        return OffloadChoice("group", device, f"{free}, too little for the transformer: block-level group offload")
    return OffloadChoice("sequential", device, f"{free}: sequential (layer by layer) offload, slowest")


def accelerator_free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def apply_offload(choice: OffloadChoice, diffusers_pipe, modules: dict[str, torch.nn.Module]) -> None:
    """Place the components for ``choice`` (``diffusers_pipe`` is a FluxPipeline holding the same modules)."""
    import torch

    if choice.mode == "none":
        for module in modules.values():
            if module is not None:
                place(module, choice.device)
    elif choice.mode == "model":
        diffusers_pipe.enable_model_cpu_offload(device=choice.device)
    elif choice.mode == "sequential":
        diffusers_pipe.enable_sequential_cpu_offload(device=choice.device)
    elif choice.mode == "group":
        for name, module in modules.items():
            if name == "vae":
                module.to(choice.device)
            elif module is not None:
                module.enable_group_offload(
                    onload_device=choice.device,
                    offload_device=torch.device("cpu"),
                    offload_type="block_level",
                    num_blocks_per_group=1,
                    use_stream=True,
                ) if hasattr(module, "enable_group_offload") else _group_offload_plain(module, choice.device)
    else:  # pragma: no cover - choose_offload only returns the modes above
        raise ValueError(choice.mode)


def _group_offload_plain(module: torch.nn.Module, device: torch.device) -> None:
    import torch
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=True,
    )


def place(module: torch.nn.Module, device: torch.device) -> None:
    """``module.to(device)``, except that bitsandbytes int8 layers (placed when quantized) are left alone."""
    from .quantize import is_quantized

    if not is_quantized(module):
        module.to(device)
        return
    from .quiet import import_bitsandbytes

    bnb = import_bitsandbytes()
    for sub in module.modules():
        if isinstance(sub, bnb.nn.Linear8bitLt):
            continue
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
