"""Flux sigma schedules, built the way ComfyUI builds them for ``ModelSamplingFlux`` + ``CONST``.

Everything here mimics ComfyUI's float32 arithmetic on purpose: ``simple``, ``beta`` and ``ddim_uniform`` read
straight from a 10000-entry float32 table, and a float64 table differs from it by up to ~2e-7 relative.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import overload

import numpy as np
import torch

from .names import SCHEDULER_NAMES

DEFAULT_MU = 1.15
TABLE_SIZE = 10000


@overload
def flux_time_shift(mu: float, t: torch.Tensor) -> torch.Tensor: ...


@overload
def flux_time_shift(mu: float, t: float) -> float: ...


def flux_time_shift(mu: float, t: torch.Tensor | float) -> torch.Tensor | float:
    """BFL's ``time_shift(mu, 1.0, t)``: sigma(t) = e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)


def flux_mu(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """ComfyUI's ModelSamplingFlux node: mu on the line (256 tokens, base) -> (4096 tokens, max), unclamped."""
    tokens = width * height / (8 * 8 * 2 * 2)
    slope = (max_shift - base_shift) / (4096 - 256)
    intercept = base_shift - slope * 256
    return tokens * slope + intercept


@lru_cache(maxsize=16)
def _table(mu: float) -> torch.Tensor:
    t = torch.arange(1, TABLE_SIZE + 1, 1) / TABLE_SIZE  # int64 / int -> float32, as ComfyUI
    return flux_time_shift(mu, t)


def sigma_table(mu: float = DEFAULT_MU) -> torch.Tensor:
    """The float32 table ``sigmas[i] = sigma((i + 1) / 10000)``; ``[0]`` is sigma_min and ``[-1]`` is 1.0."""
    return _table(float(mu)).clone()


def percent_to_sigma(percent: float, mu: float = DEFAULT_MU) -> float:
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return flux_time_shift(mu, 1.0 - percent)


def _simple(table: torch.Tensor, steps: int) -> list[float]:
    stride = len(table) / steps
    return [float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0]


def _normal(table: torch.Tensor, steps: int, mu: float, sgm: bool) -> list[float]:
    # For Flux the model timestep of a sigma is the sigma itself.
    start, end = table[-1], table[0]
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(flux_time_shift(mu, end)), 0.0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(flux_time_shift(mu, t)) for t in timesteps]
    return sigmas + [0.0] if append_zero else sigmas


def _karras(table: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _exponential(table: torch.Tensor, steps: int) -> torch.Tensor:
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _ddim_uniform(table: torch.Tensor, steps: int) -> list[float]:
    # Strides through the table while the index is below its length, so a step count that does not divide
    # 10000 yields more than steps + 1 values (6 -> 8, 30 -> 32): ComfyUI does the same.
    index = 1
    if math.isclose(float(table[index]), 0.0, abs_tol=1e-5):
        steps += 1
        sigmas: list[float] = []
    else:
        sigmas = [0.0]
    stride = max(len(table) // steps, 1)
    while index < len(table):
        sigmas.append(float(table[index]))
        index += stride
    return sigmas[::-1]


def _beta(table: torch.Tensor, steps: int, alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    import scipy.stats  # imported lazily: scipy costs ~0.3 s at import time

    last_index = len(table) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * last_index)
    sigmas: list[float] = []
    previous = -1.0
    for index in indices:  # consecutive duplicates are dropped, so a long schedule can have fewer values
        if index != previous:
            sigmas.append(float(table[int(index)]))
        previous = index
    return sigmas + [0.0]


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def get_sigmas(scheduler: str, steps: int, mu: float = DEFAULT_MU) -> torch.Tensor:
    """The float32 sigma list ComfyUI's ``calculate_sigmas`` gives for a Flux model at shift ``mu``."""
    steps = _check_steps(steps)
    if not math.isfinite(mu):
        raise ValueError(f"mu must be a finite number, got {mu!r}")
    table = _table(float(mu))
    match scheduler:
        case "simple":
            sigmas = _simple(table, steps)
        case "normal":
            sigmas = _normal(table, steps, mu, sgm=False)
        case "sgm_uniform":
            sigmas = _normal(table, steps, mu, sgm=True)
        case "karras":
            return _karras(table, steps)
        case "exponential":
            return _exponential(table, steps)
        case "ddim_uniform":
            sigmas = _ddim_uniform(table, steps)
        case "beta":
            sigmas = _beta(table, steps)
        case _:
            raise ValueError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULER_NAMES)}")
    return torch.tensor(sigmas, dtype=torch.float32)


def get_sigmas_discard_penultimate(scheduler: str, steps: int, mu: float = DEFAULT_MU) -> torch.Tensor:
    """The KSampler node's list for dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2: one more step, then the
    second-to-last sigma removed."""
    sigmas = get_sigmas(scheduler, _check_steps(steps) + 1, mu)
    return torch.cat([sigmas[:-2], sigmas[-1:]])
