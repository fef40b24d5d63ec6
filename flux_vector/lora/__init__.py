"""LoRA for the FLUX transformer and its text encoders (CLIP-L, T5): read any common key layout, apply exactly.

ComfyUI semantics (docs/COMFY_SAMPLING.md section 7, docs/COMFY_E2E.md section 4): each placed layer gets
``ΔW = strength * (alpha / rank) * up @ down`` with rank = rows of ``down`` and scale 1.0 when there is no alpha key.
The text-encoder layers use the same strength as the transformer (LoraLoader with strength_clip = strength_model).

The modules, in the order a LoRA goes through them:

* ``formats``: ``load_lora_file`` and ``parse_lora`` (a state dict -> ``LoraPatch`` objects on this model);
* ``names``: the name tables ``parse_lora`` resolves keys with (the BFL names come from ``bfl.layout``);
* ``adapter``: ``apply_lora`` -> ``LoraHandle`` (strength switch, fuse/unfuse, remove) and ``LoraLinear``;
* ``fuse``: the weight math of fusing; ``projections`` / ``fused_qkv``: LoRAs on fused q/k/v projections;
* ``base``: ``LoraError``, the strength range and ``LoraPatch``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .adapter import LoraHandle, LoraLinear, apply_lora
from .base import (
    STRENGTH_MAX,
    STRENGTH_MIN,
    LoraError,
    LoraPatch,
    NoLoraLoaded,
    check_strength,
    strength_without_lora,
)
from .formats import load_lora_file, parse_lora
from .fused_qkv import fuse_qkv_projections

__all__ = [
    "STRENGTH_MAX",
    "STRENGTH_MIN",
    "LoraError",
    "LoraHandle",
    "LoraLinear",
    "LoraPatch",
    "NoLoraLoaded",
    "apply_lora",
    "check_strength",
    "fuse_qkv_projections",
    "load_lora",
    "load_lora_file",
    "parse_lora",
    "strength_without_lora",
]


def load_lora(
    path: str | Path,
    transformer: nn.Module,
    text_encoder: nn.Module | None = None,
    strength=1.0,
    text_encoder_2: nn.Module | None = None,
) -> LoraHandle:
    """``load_lora_file`` + ``parse_lora`` + ``apply_lora`` in one call."""
    return apply_lora(parse_lora(load_lora_file(path), transformer, text_encoder, text_encoder_2), strength)
