"""The fp8 tier's layer: weights stored as float8_e4m3fn, computed in the input's dtype (``quantize`` applies it).

As ComfyUI's ``fp8_e4m3fn`` weight dtype: 1 byte per weight, no scale; values saturated to +-448 (the e4m3 finite
maximum: torch's cast turns larger values into NaN). An fp8 weight (an fp8 checkpoint read as it is) is kept as it
is, without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8_e4m3fn value


def to_fp8(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as float8_e4m3fn, saturated to +-``FP8_MAX``; an fp8 tensor is returned as it is (no copy)."""
    if weight.dtype == FP8_DTYPE:
        return weight
    return weight.detach().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


class Fp8Linear(nn.Module):
    """A linear whose weight is stored in float8_e4m3fn and computed in the input's dtype:
    ``F.linear(x, weight.to(x.dtype), bias)``. Exposes ``in_features``/``out_features``/``weight``/``bias`` like
    ``nn.Linear`` (the LoRA adapter and ``parse_lora`` find it); it is not an ``nn.Linear`` subclass, so code that
    fuses or rewrites plain linears (LoRA fusing, fused QKV) leaves it alone."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(to_fp8(weight), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight = linear.weight.data  # an fp8 weight is kept as it is: the new Parameter shares its storage
        bias = linear.bias.data if linear.bias is not None else None
        return cls(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
