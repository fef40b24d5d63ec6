"""Choosing and applying an offload mode from the accelerator and its free memory.

diffusers' model/sequential offload needs an accelerator (it raises "requires accelerator" without one) and
group offload CPU->CPU does nothing, so without an accelerator everything runs on the CPU and we say so.

``offload_plan`` says, per mode, how each component is handled (pure, tested on the CPU):

* bitsandbytes weights (``quantize`` 8bit and nf4; ``resident_transformer`` below: the transformer holds them) are
  never moved by an offload hook (nf4's ``Params4bit.quant_state`` stays behind on ``_apply`` as int8's ``CB``/``SCB``
  do); fp8 weights (``fp8_linear.Fp8Linear``) are plain tensors, offloaded like any. Hooks move modules with
  ``_apply``, which swaps ``param.data`` and keeps the old ``Int8Params`` object, whose ``CB``/``SCB`` (and the
  layer's ``state.CB/SCB`` after a forward) still point at the device's int8 tensors: every onload could add a copy.
  So under 8-bit the transformer stays on the device ("device") and only the text encoders and the VAE are offloaded;
  sequential offload, which would move the int8 layers, is refused.
* Group offload groups the text encoders by their blocks: T5's ``encoder`` stack (one group per ``encoder.block``
  entry, the embedding and final norm as one more), not the ``T5EncoderModel`` itself, where diffusers' block-level
  grouping finds no block list at the top and would onload all 9.5 GB as one group. CLIP-L (0.25 GB) and the VAE
  stay on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI's parsers (OFFLOAD_MODES) start without it
    import torch

OFFLOAD_MODES = ("auto", "none", "model", "sequential", "group")
DEFAULT_OFFLOAD = "auto"  # chosen from the free accelerator memory (``choose_offload``)
GiB = 1024**3
# Activations of a 1024x1024 Flux step plus the CUDA context and allocator slack, measured loosely; a margin.
HEADROOM = 4 * GiB
GROUP_MIN_FREE = 6 * GiB
# Group offload with a CUDA stream prefetches the next group while the current one runs: two groups live at once.
GROUPS_IN_FLIGHT = 2
COMPONENTS = ("text_encoder", "text_encoder_2", "transformer", "vae")  # in the order a generation runs them
# How a component is handled: kept on the device, moved whole by a model-offload hook, grouped by its blocks,
# or moved layer by layer.
DEVICE, MODEL, GROUP, SEQUENTIAL = "device", "model", "group", "sequential"
# The submodule group offload is applied to ("" = the component itself): the one whose direct ModuleList children
# are the blocks. T5EncoderModel has none at the top; its stack ``encoder`` has ``block``.
GROUP_TARGET = {"transformer": "", "text_encoder_2": "encoder"}


@dataclass(frozen=True)
class OffloadChoice:
    mode: str  # none | model | sequential | group
    device: torch.device
    reason: str


def module_bytes(module: torch.nn.Module | None) -> int:
    """The bytes ``module`` holds: its parameters and buffers, and the quantization state bitsandbytes keeps beside
    a quantized parameter, each tensor once: an int8 weight's row scales (``SCB``, on the weight until the first
    forward moves it to the layer's ``state``); a 4-bit weight's ``quant_state`` absmax (one fp32 per 64 weights) and
    its 16-value code table."""
    if module is None:
        return 0
    total = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    extra: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        state = getattr(p, "quant_state", None)
        for t in (getattr(p, "SCB", None), getattr(state, "absmax", None), getattr(state, "code", None)):
            if t is not None and hasattr(t, "element_size"):
                extra[id(t)] = t
    for m in module.modules():
        scb = getattr(getattr(m, "state", None), "SCB", None)
        if scb is not None and hasattr(scb, "element_size"):
            extra[id(scb)] = scb
    return total + sum(t.numel() * t.element_size() for t in extra.values())


def offload_plan(mode: str, *, resident_transformer: bool = False) -> dict[str, str]:
    """How each component is handled under ``mode`` (see the module doc); pure."""
    if mode == "none":
        return dict.fromkeys(COMPONENTS, DEVICE)
    if mode == "sequential":
        if resident_transformer:
            raise ValueError(
                "offload='sequential' with quantize='8bit' is not allowed: sequential offload moves every layer, "
                "and bitsandbytes int8 layers keep their quantized copies on the GPU when moved; use "
                "offload='model' or 'group' (the int8 transformer stays on the GPU, the text encoders are offloaded)"
            )
        return dict.fromkeys(COMPONENTS, SEQUENTIAL)
    if mode == "model":
        plan = dict.fromkeys(COMPONENTS, MODEL)
    elif mode == "group":
        plan = {"text_encoder": DEVICE, "text_encoder_2": GROUP, "transformer": GROUP, "vae": DEVICE}
    else:
        raise ValueError(f"offload={mode!r} is not allowed; offload must be one of {', '.join(OFFLOAD_MODES[1:])}")
    if resident_transformer:
        plan["transformer"] = DEVICE
    return plan


def group_target(name: str, module: torch.nn.Module) -> torch.nn.Module:
    """The submodule of component ``name`` that group offload is applied to (see ``GROUP_TARGET``)."""
    path = GROUP_TARGET.get(name, "")
    return module.get_submodule(path) if path else module


def block_group_bytes(module: torch.nn.Module) -> list[int]:
    """The groups diffusers' block-level group offload (one block per group) makes of ``module``, in bytes: one per
    entry of each direct ModuleList/Sequential child, then one for everything else (it onloads with the module)."""
    from torch import nn

    blocks = [
        module_bytes(block)
        for child in module.children()
        if isinstance(child, nn.ModuleList | nn.Sequential)
        for block in child
    ]
    rest = module_bytes(module) - sum(blocks)
    return [*blocks, rest] if rest > 0 else blocks


def largest_group_bytes(modules: dict[str, Any], plan: dict[str, str] | None = None) -> int:
    """The largest group group offload would onload at once, over the components ``plan`` groups."""
    plan = plan or offload_plan("group")
    sizes = [
        max(block_group_bytes(group_target(name, module)), default=0)
        for name, module in modules.items()
        if module is not None and plan.get(name) == GROUP
    ]
    return max(sizes, default=0)


def choose_offload(
    requested: str,
    device: torch.device,
    free_bytes: int | None,
    component_bytes: dict[str, int],
    *,
    largest_group: int | None = None,
    resident_transformer: bool = False,
) -> OffloadChoice:
    """Pure decision logic (tested on CPU): which offload mode to use and why.

    ``largest_group``: the largest group group offload would onload (``largest_group_bytes``), None if unknown (then
    group needs ``GROUP_MIN_FREE``). ``resident_transformer``: the transformer holds bitsandbytes layers (8bit, nf4)
    and stays on the device whatever the mode (``offload_plan``); auto counts it as resident."""
    if requested not in OFFLOAD_MODES:
        raise ValueError(f"offload={requested!r} is not allowed; offload must be one of {', '.join(OFFLOAD_MODES)}")
    if device.type == "cpu":
        if requested not in ("auto", "none"):
            raise ValueError(
                f"offload={requested!r} needs an accelerator and none is in use; use offload='none' or 'auto'"
            )
        return OffloadChoice("none", device, "no accelerator: running on CPU, no offload")
    if requested != "auto":
        offload_plan(
            requested, resident_transformer=resident_transformer
        )  # refuses what cannot work (8-bit + sequential)
        return OffloadChoice(requested, device, f"offload={requested!r} as requested")
    if free_bytes is None:
        return OffloadChoice("none", device, f"{device.type}: free memory unknown, no offload")
    free = f"{free_bytes / GiB:.1f} GiB free"
    total = sum(component_bytes.values())
    if mode_needs("none", component_bytes) <= free_bytes:
        return OffloadChoice("none", device, f"{free}, all {total / GiB:.1f} GiB of weights fit: no offload")
    kept = " with the int8 transformer kept on the GPU" if resident_transformer else ""
    if mode_needs("model", component_bytes, resident_transformer=resident_transformer) <= free_bytes:
        largest = max(_offloaded("model", component_bytes, resident_transformer), default=0)
        return OffloadChoice(
            "model", device, f"{free}, largest offloaded component {largest / GiB:.1f} GiB fits: model offload{kept}"
        )
    group_needs = mode_needs(
        "group", component_bytes, largest_group=largest_group, resident_transformer=resident_transformer
    )
    group_size = "group sizes unknown" if largest_group is None else f"largest group {largest_group / GiB:.2f} GiB"
    if group_needs <= free_bytes:
        return OffloadChoice("group", device, f"{free}, {group_size}: block-level group offload{kept}")
    if resident_transformer:
        raise ValueError(
            f"quantize='8bit' keeps the int8 transformer ({component_bytes.get('transformer', 0) / GiB:.1f} GiB) on "
            f"the GPU and {free} is too little even with the text encoders offloaded ({group_needs / GiB:.1f} GiB "
            "needed); without quantize='8bit', offload='sequential' runs in less memory"
        )
    return OffloadChoice("sequential", device, f"{free}, {group_size}: sequential (layer by layer) offload, slowest")


def _resident(mode: str, component_bytes: dict[str, int], resident_transformer: bool) -> int:
    plan = offload_plan(mode, resident_transformer=resident_transformer)
    return sum(size for name, size in component_bytes.items() if plan.get(name, MODEL) == DEVICE)


def _offloaded(mode: str, component_bytes: dict[str, int], resident_transformer: bool) -> list[int]:
    plan = offload_plan(mode, resident_transformer=resident_transformer)
    return [size for name, size in component_bytes.items() if plan.get(name, MODEL) != DEVICE]


def mode_needs(
    mode: str, component_bytes: dict[str, int], *, largest_group: int | None = None, resident_transformer: bool = False
) -> int:
    """The accelerator memory ``mode`` needs for a generation (what ``choose_offload`` weighs against the free memory,
    and ``memory_tiers`` reports as the expected peak): the components kept on the device, what the mode onloads at
    once (model: the largest offloaded component; group: ``GROUPS_IN_FLIGHT`` of the largest group, at least
    ``GROUP_MIN_FREE`` in all when the group sizes are unknown or small; sequential: one layer, counted as nothing),
    plus ``HEADROOM``."""
    if mode == "none":
        return sum(component_bytes.values()) + HEADROOM
    resident = _resident(mode, component_bytes, resident_transformer)
    if mode == "model":
        return resident + max(_offloaded(mode, component_bytes, resident_transformer), default=0) + HEADROOM
    if mode == "group":
        in_flight = 0 if largest_group is None else GROUPS_IN_FLIGHT * largest_group
        return max(GROUP_MIN_FREE, resident + in_flight + HEADROOM)
    if mode == "sequential":
        return resident + HEADROOM
    raise ValueError(f"offload={mode!r} is not allowed; offload must be one of {', '.join(OFFLOAD_MODES[1:])}")


def accelerator_free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def apply_offload(
    choice: OffloadChoice,
    diffusers_pipe,
    modules: dict[str, torch.nn.Module | None],
    *,
    resident_transformer: bool = False,
) -> dict[str, str]:
    """Place the components for ``choice`` as ``offload_plan`` says (``diffusers_pipe`` is a FluxPipeline holding the
    same modules, for sequential offload); returns the plan applied."""
    plan = offload_plan(choice.mode, resident_transformer=resident_transformer)
    if choice.mode == "sequential":
        diffusers_pipe.enable_sequential_cpu_offload(device=choice.device)
        return plan
    for name, module in modules.items():
        if module is None:
            continue
        how = plan.get(name, DEVICE)
        if how == DEVICE:
            place(module, choice.device)
        elif how == GROUP:
            _group_offload(group_target(name, module), choice.device)
    if choice.mode == "model":
        _model_offload([(name, modules.get(name), plan.get(name, DEVICE)) for name in COMPONENTS], choice.device)
    return plan


def _group_offload(module: torch.nn.Module, device: torch.device) -> None:
    """diffusers' block-level group offload of ``module``, one block per group, prefetching on a CUDA stream
    (diffusers refuses streams off CUDA-like devices: there the groups onload in line)."""
    import torch
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=device.type == "cuda",
    )


def _model_offload(chain: list[tuple[str, Any, str]], device: torch.device) -> None:
    """accelerate's model offload over the components in the order a generation runs them: each offloaded
    component is moved whole onto the device when called and moves the previous one off. A component kept on the
    device (the int8 transformer) gets no hook that moves it; it only moves the previous one off before it runs."""
    from accelerate import cpu_offload_with_hook

    previous = None
    for _name, module, how in chain:
        if module is None:
            continue
        if how == MODEL:
            _, previous = cpu_offload_with_hook(module, device, prev_module_hook=previous)
        elif previous is not None:
            _offload_before_forward(module, previous)
            previous = None


def _offload_before_forward(module: torch.nn.Module, hook) -> None:
    """Before ``module`` runs, move the module behind ``hook`` (an accelerate ``UserCpuOffloadHook``) off the device;
    ``module`` itself is not moved."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    class OffloadPrevious(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            hook.offload()
            return args, kwargs

    add_hook_to_module(module, OffloadPrevious(), append=True)


def place(module: torch.nn.Module, device: torch.device) -> None:
    """``module.to(device)``, except that bitsandbytes layers (int8, nf4: placed when quantized) are left alone."""
    from .quantize import is_bitsandbytes_layer, stays_resident

    if not stays_resident(module):
        module.to(device)
        return
    for sub in module.modules():
        if is_bitsandbytes_layer(sub):
            continue
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
