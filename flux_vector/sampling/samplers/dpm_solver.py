"""DPM-Solver (Lu et al. 2022) in its VE form, t = -log sigma and eps = (x - D)/sigma: dpm_fast and dpm_adaptive.

Both ignore the schedule except for sigma_max = sigmas[0] and sigma_min = the last nonzero sigma, and stop at
sigma_min (noise left in). With eta = 0 their noise draws are multiplied by 0, so they are skipped here.
"""

from __future__ import annotations

import math

import torch

from .registry import register, report


def _sigma(t):
    return t.neg().exp()


def _sigma_range(sigmas):
    """(sigma_min, sigma_max): the last nonzero sigma and the first one."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    return sigma_min, sigmas[0]


class _Eps:
    """eps(x, t) = (x - D(x, sigma(t))) / sigma(t), cached per step under a key."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, key, x, t):
        if key not in self.cache:
            sigma = _sigma(t)
            self.cache[key] = (x - self.model(x, sigma)) / sigma
        return self.cache[key]


def _dpm_solver_1_step(eps_fn, x, t, t_next):
    h = t_next - t
    eps = eps_fn("eps", x, t)
    return x - _sigma(t_next) * h.expm1() * eps


def _dpm_solver_2_step(eps_fn, x, t, t_next, r1=1 / 2):
    h = t_next - t
    eps = eps_fn("eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = eps_fn("eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _dpm_solver_3_step(eps_fn, x, t, t_next, r1=1 / 3, r2=2 / 3):
    h = t_next - t
    eps = eps_fn("eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = eps_fn("eps_r1", u1, s1)
    u2 = (
        x
        - _sigma(s2) * (r2 * h).expm1() * eps
        - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = eps_fn("eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


@register("dpm_fast")
def sample_dpm_fast(model, x, sigmas, *, noise=None, callback=None):
    """DPM-Solver-Fast: NFE = n = len(sigmas) - 1 spread over m = n//3 + 1 intervals evenly spaced in t,
    orders 3, ..., 3 then [2, 1] (3 | n) or [n mod 3]."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _sigma_range(sigmas)
    nfe = len(sigmas) - 1
    m = nfe // 3 + 1
    ts = torch.linspace(sigma_max.log().neg(), sigma_min.log().neg(), m + 1, device=sigmas.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    step = {1: _dpm_solver_1_step, 2: _dpm_solver_2_step, 3: _dpm_solver_3_step}
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        eps_fn = _Eps(model)
        eps = eps_fn("eps", x, t)
        report(callback, i, x, x - _sigma(t) * eps)
        x = step[order](eps_fn, x, t, t_next)
    return x


@register("dpm_adaptive", model_calls=3)
def sample_dpm_adaptive(
    model,
    x,
    sigmas,
    *,
    noise=None,
    callback=None,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    accept_safety=0.81,
    order=3,
):
    """Adaptive DPM-Solver-23 from sigma_max to sigma_min: x_low = 2nd order (r1 = 1/3), x_high = 3rd order
    (sharing its evaluations); error in a mixed abs/rel norm; integral controller h *= 1 + atan(err^(-1/order) - 1),
    the step accepted iff that factor >= accept_safety."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _sigma_range(sigmas)
    s, t_end = sigma_max.log().neg(), sigma_min.log().neg()
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    h, x_prev, attempt = abs(h_init), x, 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + h)
        eps_fn = _Eps(model)
        eps = eps_fn("eps", x, s)
        denoised = x - _sigma(s) * eps
        x_low = _dpm_solver_2_step(eps_fn, x, s, t, r1=1 / 3)
        x_high = _dpm_solver_3_step(eps_fn, x, s, t)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        factor = 1 + math.atan((1 / (float(error) + 1e-8)) ** (1 / order) - 1)
        if factor >= accept_safety:
            x_prev, x, s = x_low, x_high, t
        h *= factor
        report(callback, attempt, x, denoised)
        attempt += 1
    return x
