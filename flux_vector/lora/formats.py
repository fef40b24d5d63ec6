"""Reading LoRA files: a safetensors state dict in any common key layout -> ``LoraPatch`` objects on this model.

Accepted layouts: kohya (``lora_unet_<BFL path with _>``), BFL/ComfyUI (``diffusion_model.<BFL path>``),
diffusers/peft/ai-toolkit (``transformer.<diffusers path>``, optional ``base_model.model.``), OneTrainer
(``lora_transformer_<diffusers path with _>``), kohya text encoders (``lora_te1_<CLIP path with _>``; ``lora_te2_`` /
``lora_te3_<T5 path with _>``, ComfyUI's names for T5 in a Flux CLIP) and diffusers text encoders (``text_encoder.``,
``text_encoder_2.``). Factors are ``lora_down``/``lora_up``, ``lora_A``/``lora_B`` or ``lora.down``/``lora.up``, with
an optional ``.alpha`` (scale alpha/rank, else 1). Anything that cannot be placed raises ``LoraError`` listing the
keys: a LoRA never silently does nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .base import LoraError, LoraPatch, format_problems
from .names import Spec, build_tables, resolve


def load_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` LoRA file, on CPU. ``LoraError`` if it is missing, unreadable or empty."""
    path = Path(path)
    if not path.exists():
        raise LoraError(f"LoRA file not found: {path}")
    if not path.is_file():
        raise LoraError(f"LoRA path is not a file: {path}")
    try:
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types (and OSError for permissions)
        raise LoraError(
            f"cannot read LoRA file {path} as safetensors ({type(exc).__name__}: {exc}); "
            "only .safetensors LoRAs are supported"
        ) from exc
    if not state_dict:
        raise LoraError(f"LoRA file {path} holds no tensors")
    return state_dict


_PAIR = re.compile(
    r"^(?P<base>.+?)(?:\.lora_(?P<a>up|down|A|B)|_lora\.(?P<b>up|down)|\.lora\.(?P<c>up|down))"
    r"(?:\.default)?(?:\.weight)?$"
)


def _as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    if t.ndim == 4 and t.shape[2:] == (1, 1):
        t = t.flatten(1)
    return t if t.ndim == 2 else None


def _check_factors(slot: dict, spec: Spec) -> tuple[torch.Tensor, torch.Tensor, float] | str:
    if "down" not in slot or "up" not in slot:
        return f"needs both lora_down/lora_A and lora_up/lora_B, found only {'/'.join(sorted(slot))}"
    down, up = _as_matrix(slot["down"][1]), _as_matrix(slot["up"][1])
    if down is None or up is None:
        return f"factors must be matrices, got down {tuple(slot['down'][1].shape)}, up {tuple(slot['up'][1].shape)}"
    if not (down.is_floating_point() and up.is_floating_point()):
        return f"factors must be floating point, got {down.dtype} and {up.dtype}"
    rank = down.shape[0]
    if rank == 0 or up.shape[1] != rank:
        return f"rank mismatch: down {tuple(down.shape)}, up {tuple(up.shape)}"
    if down.shape[1] != spec.in_features or up.shape[0] != spec.out_rows:
        targets = ", ".join(s.target for s in spec.segments)
        return (
            f"shape mismatch: LoRA maps {down.shape[1]} -> {up.shape[0]} features, "
            f"{targets} maps {spec.in_features} -> {spec.out_rows}"
        )
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
        return "factors contain NaN or inf"
    scale = 1.0
    if "alpha" in slot:
        alpha = slot["alpha"][1]
        if alpha.numel() != 1 or not math.isfinite(float(alpha.float().reshape(()))):
            return f"alpha must be one finite number, got shape {tuple(alpha.shape)}"
        scale = float(alpha.float().reshape(())) / rank
    return down, up, scale


def parse_lora(
    state_dict: Mapping[str, torch.Tensor],
    transformer: nn.Module,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> list[LoraPatch]:
    """Place every key of a LoRA state dict on the transformer or a text encoder (CLIP-L, T5). ``LoraError``
    otherwise."""
    if not state_dict:
        raise LoraError("the LoRA holds no tensors")
    problems: dict[str, str] = {}
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not torch.is_tensor(tensor):
            problems[str(key)] = "not a named tensor"
            continue
        match = _PAIR.match(key)
        if match:
            base, kind = match["base"], match["a"] or match["b"] or match["c"]
            role = "up" if kind in ("up", "B") else "down"
        elif key.endswith(".alpha"):
            base, role = key[: -len(".alpha")], "alpha"
        else:
            problems[key] = "not a LoRA factor or alpha (unsupported key type)"
            continue
        slot = groups.setdefault(base, {})
        if role in slot:
            problems[key] = f"a second {role} for {base!r} (first: {slot[role][0]})"
            continue
        slot[role] = (key, tensor)

    tables = build_tables(transformer, text_encoder, text_encoder_2)
    given = {"transformer": transformer, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    # resolve() places keys only in the tables of the models given
    models = {component: model for component, model in given.items() if model is not None}
    patches: list[LoraPatch] = []
    for base, slot in groups.items():
        resolved = resolve(base, tables)
        if isinstance(resolved, str):
            checked: tuple[torch.Tensor, torch.Tensor, float] | str = resolved
        else:
            spec = resolved[0]
            checked = _check_factors(slot, spec)
        if isinstance(checked, str):
            for key, _ in slot.values():
                problems[key] = checked
            continue
        down, up, scale = checked
        model = models[spec.component]
        for seg in spec.segments:
            patches.append(
                LoraPatch(
                    target=seg.target,
                    module=model.get_submodule(seg.target),
                    down=down,
                    up=up[seg.src : seg.src + seg.rows],
                    offset=seg.dst,
                    scale=scale,
                    key=base,
                    component=spec.component,
                    root=model,
                )
            )
    if problems:
        raise LoraError(format_problems(problems, "LoRA keys that cannot be placed"), keys=sorted(problems))
    if not patches:
        raise LoraError("the LoRA holds no lora_down/lora_up pairs")
    return patches
