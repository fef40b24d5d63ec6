"""Fusing a LoRA into plain weights: ``W = (W0.float() + sum s * scale * B @ A).to(dtype)``, always from the kept W0.

Rebuilding from W0 (instead of adding and subtracting deltas) is what keeps strength switches free of drift. The
product is accumulated in float32 and cast once, which matches ComfyUI's merge for float32 weights bit for bit.

Where W0 lives decides what a strength switch costs (``choose_w0_home``): on the weights' own device when the copies
fit there (a rebuild is then device-to-device), else in pinned host memory. Either way W0 keeps the weight's dtype
and reaches the weight's device as it is (``stage_w0``: a non-blocking copy, a DMA from pinned memory); the float32
conversion happens there. (A blocking bf16 -> float32 copy from pageable memory converts on the CPU first:
torch's ``Copy.cu`` picks the conversion device by ``non_blocking``, and it moves twice the bytes.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LoraPatch

FUSABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
W0_DEVICE, W0_PINNED = "device", "pinned"  # W0 beside the weight on its device | in pinned host memory
W0_HEADROOM = 4 * 1024**3  # device memory W0 copies must leave free (activations of a 1024x1024 step, slack)


def choose_w0_home(weight_device: torch.device, w0_bytes: int, free_bytes: int | None) -> str:
    """Where a fused LoRA's W0 copies go (pure): beside the weights when they are on the CPU, or on an accelerator
    with ``w0_bytes`` + ``W0_HEADROOM`` free; else in pinned host memory."""
    if weight_device.type == "cpu":
        return W0_DEVICE
    if free_bytes is not None and w0_bytes + W0_HEADROOM <= free_bytes:
        return W0_DEVICE
    return W0_PINNED


def _pinned_empty(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="cpu", pin_memory=True)


@torch.no_grad()
def keep_w0(weight: torch.Tensor, home: torch.device | str) -> torch.Tensor:
    """A copy of ``weight`` in its own dtype at ``home``: ``W0_DEVICE`` (its own device), ``W0_PINNED`` (pinned host
    memory) or a device."""
    if home == W0_DEVICE:
        return weight.detach().clone()
    if home == W0_PINNED:
        w0 = _pinned_empty(weight.shape, weight.dtype)
        w0.copy_(weight.detach())
        return w0
    return weight.detach().to(home, copy=True)


def stage_w0(w0: torch.Tensor, device: torch.device) -> torch.Tensor:
    """W0 on ``device`` in its own dtype: itself when it is there, else a non-blocking copy (from pinned memory a
    DMA the host does not wait for; the stream orders it before the kernels that read it)."""
    return w0 if w0.device == device else w0.to(device, non_blocking=True)


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
    w0 = stage_w0(w0, weight.device)
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
