"""The sampler registry: a name, its function and what the KSampler node must prepare for it.

A sampler is ``fn(model, x, sigmas, *, noise, callback) -> x`` in the k-diffusion shape:
* ``model(x, sigma) -> D`` is the CFG-combined x0 prediction (a ``Denoiser``, whose ``uncond`` holds the
  uncond x0 after each call and ``mu`` the model's shift), ``sigma`` a 0-dim float32 tensor;
* ``x`` starts at ``sigmas[0] * noise`` (plus the latent), ``sigmas`` is the float32 list ending in 0;
* ``noise(sigma, sigma_next) -> n`` gives unit Gaussian draws (None for deterministic samplers);
* ``callback(i, x, denoised)`` is called once per step with x entering step i and its D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

SamplerFn = Callable[..., torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None
NoiseKind = Literal["none", "seeded", "brownian"]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: SamplerFn
    noise: NoiseKind = "none"
    discard_penultimate: bool = False  # the KSampler node computes steps+1 sigmas and drops the second-to-last
    needs_uncond: bool = False  # evaluates the negative prompt even at cfg 1 (ComfyUI's disable_cfg1_optimization)
    # Denoiser calls per step at most (heun: 2, heunpp2: 3): what the server's work budget prices. dpm_adaptive's
    # count follows its error estimate, not ``steps``: it is priced at its 3 calls per attempt, one attempt per step.
    model_calls: int = 1


SAMPLERS: dict[str, SamplerSpec] = {}


def register(
    *names: str,
    noise: NoiseKind = "none",
    discard_penultimate: bool = False,
    needs_uncond: bool = False,
    model_calls: int = 1,
):
    def decorate(fn: SamplerFn) -> SamplerFn:
        for name in names:
            if name in SAMPLERS:
                raise RuntimeError(f"sampler {name!r} registered twice")
            SAMPLERS[name] = SamplerSpec(name, fn, noise, discard_penultimate, needs_uncond, model_calls)
        return fn

    return decorate


def report(callback: Callback, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback(i, x, denoised)
