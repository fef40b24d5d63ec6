"""The ComfyUI golden data in tests/data (see tests/data/README.md) and the analytic toy model of the sampling data."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
SAMPLING = DATA / "comfy_sampling"
E2E = DATA / "comfy_e2e"
E2E_MODEL = E2E / "tiny_flux"
E2E_LORA = E2E / "tiny_lora_kohya.safetensors"


@cache
def manifest() -> dict:
    return json.loads((SAMPLING / "comfy_flux_sampling.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(SAMPLING / "comfy_flux_sampling.safetensors")


@cache
def e2e_manifest() -> dict:
    return json.loads((E2E / "golden.json").read_text())


@cache
def e2e_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(E2E / "golden.safetensors")


def toy_velocity(m: torch.Tensor, s: float):
    """v = ((sigma - (1-sigma) s^2) x - sigma m) / ((1-sigma)^2 s^2 + sigma^2), in float64, cast to float32."""

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x64 = x.double()
        sig = sigma.double().view(-1, 1, 1, 1)
        mean = m.double().to(x.device)
        denom = (1 - sig) ** 2 * s**2 + sig**2
        return (((sig - (1 - sig) * s**2) * x64 - sig * mean) / denom).float()

    return velocity


class CountingModel:
    """Wraps a velocity model and counts its evaluations (one per batch row)."""

    def __init__(self, fn):
        self.fn, self.evals = fn, 0

    def __call__(self, x, sigma):
        self.evals += x.shape[0]
        return self.fn(x, sigma)


def toy_models() -> tuple[CountingModel, CountingModel]:
    t, spec = tensors(), manifest()["toy_denoiser"]
    return (
        CountingModel(toy_velocity(t["latest/toy/m_pos"], spec["s_pos"])),
        CountingModel(toy_velocity(t["latest/toy/m_neg"], spec["s_neg"])),
    )
