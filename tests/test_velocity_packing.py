"""The velocity model's one-copy packing equals diffusers' two-step pack/unpack (with the dtype casts), bitwise."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from flux_vector.pipeline import pack_latents_as, unpack_latents_float


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pack_and_unpack_equal_diffusers(dtype):
    x = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(0))
    want = FluxPipeline._pack_latents(x.to("cpu", dtype), 2, 16, 6, 10)
    got = pack_latents_as(x, torch.device("cpu"), dtype)
    assert got.dtype == dtype and got.is_contiguous() and torch.equal(got, want)

    out = torch.randn(2, 15, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = FluxPipeline._unpack_latents(out, 6 * 8, 10 * 8, 8).float()
    got = unpack_latents_float(out, 6, 10)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, want)
