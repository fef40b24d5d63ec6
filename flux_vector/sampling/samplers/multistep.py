"""Linear multistep samplers on d = (x - D)/sigma: LMS, iPNDM (fixed and variable step) and DEIS (tab).

Notation as in basic.py: sigma -> sigma', D = model(x, sigma), d = (x - D)/sigma. ``ds`` holds the newest d first.
All step x = D on the interval to sigma' = 0 (for DEIS through its Euler step, the same thing).
"""

from __future__ import annotations

import torch

from ..common import lagrange_basis, to_d
from .registry import register, report


def _lms_coeff(nodes: list[float], t: float, t_next: float, j: int) -> float:
    """integral over [t, t'] of the Lagrange basis polynomial of nodes[j] (nodes newest first)."""
    from scipy import integrate  # lazily: scipy.integrate costs ~0.2 s to import and only lms needs it

    return integrate.quad(lambda tau: lagrange_basis(nodes, j, tau), t, t_next, epsrel=1e-4)[0]


@register("lms")
def sample_lms(model, x, sigmas, *, noise=None, callback=None, order=4):
    """x' = x + sum_j c_j d_{i-j}, c_j the integral of the Lagrange basis on sigma_i..sigma_{i-p+1}, p = min(i+1, 4)."""
    s = sigmas.tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        ds = [to_d(x, sigmas[i], denoised), *ds][:order]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        nodes = [s[i - j] for j in range(len(ds))]
        x = x + sum(_lms_coeff(nodes, s[i], s[i + 1], j) * d for j, d in enumerate(ds))
    return x


# Adams-Bashforth weights for equal steps, newest d first.
_AB_WEIGHTS = ([1.0], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


def _adams_bashforth(model, x, sigmas, callback, weights, order):
    """x' = x + h0 * sum_k c_k d_{i-k} over the last min(i+1, order) slopes (newest first); the step to 0 is x = D."""
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        ds = [to_d(x, sigmas[i], denoised), *ds][:order]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(len(ds))]
        x = x + h[0] * sum(c * d for c, d in zip(weights(h), ds, strict=True))
    return x


@register("ipndm")
def sample_ipndm(model, x, sigmas, *, noise=None, callback=None, order=4):
    """Adams-Bashforth of order min(i+1, 4) with the fixed equal-step weights, whatever the sigma spacing."""
    return _adams_bashforth(model, x, sigmas, callback, lambda h: _AB_WEIGHTS[len(h) - 1], order)


def _ipndm_v_weights(h: list[torch.Tensor]) -> list[torch.Tensor | float]:
    """Variable-step Adams-Bashforth weights; h[0] = sigma' - sigma, h[k] the k-th previous sigma difference."""
    if len(h) == 1:
        return [1.0]
    h0, h1 = h[0], h[1]
    a, b = 1 + h0 / (2 * h1), h0 / (2 * h1)
    if len(h) == 2:
        return [a, -b]
    h2 = h[2]
    t1 = (1 - h0**2 / (3 * h1 * (h1 + h2))) / 2
    if len(h) == 3:
        return [a + t1, -b - (1 + h1 / h2) * t1, t1 * h1 / h2]
    h3 = h[3]
    h01, h012 = h0 + h1, h0 + h1 + h2
    t2 = ((1 - h0 / (3 * h01)) / 2 + (1 - h0 / (2 * h01)) * h0 / (6 * h012)) * (
        h0 * h01 * h012 / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        a + t1 + t2,
        -b - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
        t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
        -t2 * q * h1 / h2,
    ]


@register("ipndm_v")
def sample_ipndm_v(model, x, sigmas, *, noise=None, callback=None, order=4):
    """Adams-Bashforth of order min(i+1, 4) with weights for the actual (variable) sigma steps."""
    return _adams_bashforth(model, x, sigmas, callback, _ipndm_v_weights, order)


def _edm_vp_time(sigmas: torch.Tensor, eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """Map sigma to the VP time of the EDM VP fit (not Flux's values), in float32.

    Returns (t, beta_0, beta_1). beta_0 comes out slightly negative, so t(0) > 0.
    """
    log1p_sq = lambda s: (torch.tensor(s, dtype=torch.float32) ** 2 + 1).log()  # noqa: E731
    beta_d = 2 * (log1p_sq(sigma_min) / eps_s - log1p_sq(sigma_max)) / (eps_s - 1)
    beta_0 = log1p_sq(sigma_max) - 0.5 * beta_d
    t = ((beta_0**2 + 2 * beta_d * (sigmas.cpu() ** 2 + 1).log()).sqrt() - beta_0) / beta_d
    return t, beta_0, beta_d + beta_0


def _deis_coeffs(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list[list[torch.Tensor]]:
    """Per interval i, c_j = integral over [t_i, t_{i+1}] of dsigma/dtau * L_j(tau), L_j on t_i..t_{i-p+1}.

    A Riemann sum on n grid points, both ends included, times (t' - t)/n; dsigma/dtau of the VP schedule
    alpha_bar(tau) = exp(-tau^2 (beta_1 - beta_0)/2 - tau beta_0) is (tau (beta_1 - beta_0) + beta_0)/2 / sqrt(a(1-a)).
    """
    t, beta_0, beta_1 = _edm_vp_time(sigmas)
    coeffs: list[list[torch.Tensor]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], n)
        alpha_bar = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        integrand = 0.5 * (taus * (beta_1 - beta_0) + beta_0) / torch.sqrt(alpha_bar * (1 - alpha_bar))
        nodes = [t[i - k] for k in range(order)]
        dtau = (t[i + 1] - t[i]) / n
        coeffs.append([torch.sum(integrand * lagrange_basis(nodes, j, taus)) * dtau for j in range(order)])
    return coeffs


@register("deis")
def sample_deis(model, x, sigmas, *, noise=None, callback=None, max_order=3):
    """DEIS "tab": x' = x + sum_j c_j d_{i-j} with c_j from _deis_coeffs, order min(i+1, 3); Euler into sigma' <= 0."""
    coeffs = _deis_coeffs(sigmas, max_order)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        ds = [to_d(x, sigmas[i], denoised), *ds][:max_order]
        if sigmas[i + 1] <= 0 or len(ds) == 1:
            x = x + (sigmas[i + 1] - sigmas[i]) * ds[0]
        else:
            x = x + sum(c * d for c, d in zip(coeffs[i], ds, strict=True))
    return x
