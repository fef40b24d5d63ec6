"""Fusing a LoRA into plain weights: ``W = (W0.float() + sum s * scale * B @ A).to(dtype)``, always from the kept W0.

Rebuilding from W0 (instead of adding and subtracting deltas) is what keeps strength switches free of drift. The
product is accumulated in float32 and cast once, which matches ComfyUI's merge for float32 weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LoraPatch

FUSABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fuse_error(base: nn.Module) -> str | None:
    """Why a LoRA cannot be fused into ``base``, or None."""
    weight = getattr(base, "weight", None)
    if type(base) is not nn.Linear or type(weight) is not nn.Parameter:
        return f"{type(base).__name__} (quantized or custom layers are not fused; the runtime adapter works)"
    if weight.dtype not in FUSABLE_DTYPES:
        return f"weight dtype {weight.dtype}"
    return None


@torch.no_grad()
def write_fused_weight(
    weight: torch.Tensor, w0: torch.Tensor, fused: Sequence[tuple[float, Sequence[LoraPatch]]]
) -> None:
    """``weight`` <- W0 plus, for each (strength, patches), every patch's delta into its row range."""
    live = [(strength, patches) for strength, patches in fused if strength != 0.0]
    if not live:
        weight.copy_(w0)
        return
    # float32 weights are rebuilt in place (no allocation); others through a float32 scratch, then cast once
    acc = weight if weight.dtype == torch.float32 else torch.empty_like(weight, dtype=torch.float32)
    acc.copy_(w0)
    for strength, patches in live:
        for p in patches:
            up = p.up.to(device=acc.device, dtype=torch.float32)
            down = p.down.to(device=acc.device, dtype=torch.float32)
            acc[p.offset : p.offset + p.rows].addmm_(up, down, alpha=strength * p.scale)
    if acc is not weight:
        weight.copy_(acc)
