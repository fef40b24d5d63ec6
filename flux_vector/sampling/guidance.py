"""From velocity models to the sampler's ``denoise(x, sigma) -> D``: ComfyUI's CONST x0 and its CFG.

A velocity model is ``(x, sigma[B]) -> v`` (what the Flux transformer returns). For rectified flow (CONST) the
x0 prediction is ``D = x - sigma * v``, with v cast to float32 first. CFG combines on x0:
``D = U + cfg * (C - U)``; at cfg == 1 (``math.isclose``) the uncond pass is skipped and ``D = C``, unless the
sampler needs the uncond prediction (the cfg_pp samplers), which then reads it from ``Denoiser.uncond``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser:
    def __init__(
        self,
        positive: VelocityModel,
        negative: VelocityModel | None,
        cfg: float = 1.0,
        *,
        always_uncond: bool = False,
        mu: float = 1.15,
    ):
        self.positive, self.negative, self.cfg, self.mu = positive, negative, float(cfg), float(mu)
        self.use_uncond = always_uncond or not math.isclose(self.cfg, 1.0)
        if self.use_uncond and negative is None:
            raise ValueError("a negative model is needed: cfg != 1 or a cfg_pp sampler evaluates the uncond pass")
        self.uncond: torch.Tensor | None = None
        self.model_evals = 0

    def _x0(self, model: VelocityModel, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.model_evals += 1
        v = model(x, sigma).float()
        return x - v * sigma.view(-1, *([1] * (x.ndim - 1)))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # sigma lives on the CPU (see ksampler); a non-blocking copy does not make the host wait for the device.
        sigma_b = sigma.reshape(-1).to(x.device, torch.float32, non_blocking=True).expand(x.shape[0])
        cond = self._x0(self.positive, x, sigma_b)
        if not self.use_uncond:
            self.uncond = None
            return cond
        assert self.negative is not None  # __init__ refuses use_uncond without one
        uncond = self._x0(self.negative, x, sigma_b)
        self.uncond = uncond
        return uncond + (cond - uncond) * self.cfg
