"""UniPC (bh1 and bh2), multistep data-prediction predictor-corrector, as ComfyUI runs it on a flow model.

It is not RF-aware: sigma is read as a VE sigma and converted to the VP quantities (alpha, s, lambda), with the time
variable being sigma itself. Those conversions must stay float32 (at sigma = 0.001 float32 gives lambda = 6.931, the
true value is 6.908, and the golden data has the float32 one).

Notation: m = the data prediction (about D); lambda = log(alpha / s); history entries (lambda_j, m_j), newest last.
"""

from __future__ import annotations

import math

import torch

from .registry import register

_FINAL_SIGMA = 0.001  # ComfyUI replaces a final sigma of 0 by this (lambda would be infinite)


def _vp(sigma: torch.Tensor):
    """(alpha, s, lambda) of the VP process with the same signal-to-noise ratio as VE sigma, in float32."""
    log_alpha = 0.5 * torch.log(1 / (sigma * sigma + 1))
    alpha = log_alpha.exp()
    s = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
    lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
    return alpha, s, lam


def _unipc_step(x, history, sigma, order, variant, data_pred):
    """One UniPC step from the newest history entry to ``sigma``, of the given order.

    ``history`` is a list of (sigma_j, m_j), newest last. ``data_pred`` evaluates m at (x_vp, sigma), or is None for the
    final step (predictor only). Returns (x, m at the predicted point or None).
    """
    sigma_0, m_0 = history[-1]
    _, s_0, lam_0 = _vp(sigma_0)
    alpha, s, lam = _vp(sigma)
    h = lam - lam_0
    hh = -h
    r = [(_vp(sigma_j)[2] - lam_0) / h for sigma_j, _ in reversed(history[-order:-1])]
    d1 = [(m_j - m_0) / r_j for (_, m_j), r_j in zip(reversed(history[-order:-1]), r, strict=True)]
    rks = torch.tensor([*r, 1.0])

    # b_k = g_k k! / B(h): g_1 = expm1(hh)/hh - 1, g_{k+1} = g_k/hh - 1/(k+1)!; R_kj = r_j^(k-1).
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    g = h_phi_1 / hh - 1
    b_values, rows = [], []
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b_values.append(g * math.factorial(k) / b_h)
        g = g / hh - 1 / math.factorial(k + 1)
    big_r, b = torch.stack(rows), torch.tensor(b_values)

    x_base = s / s_0 * x - alpha * h_phi_1 * m_0
    if d1:
        rho_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        x_pred = x_base - alpha * b_h * sum(rho * d for rho, d in zip(rho_p, d1, strict=True))
    else:
        x_pred = x_base
    if data_pred is None:
        return x_pred, None

    m_t = data_pred(x_pred, sigma)
    rho_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(big_r, b)
    corr = sum(rho * d for rho, d in zip(rho_c[:-1], d1, strict=True))
    return x_base - alpha * b_h * (corr + rho_c[-1] * (m_t - m_0)), m_t


def _sample_unipc(model, x, sigmas, callback, variant, max_order=3):
    # When the list ends in 0, ComfyUI overwrites that 0 with 0.001 *in the caller's sigma tensor*, so its final
    # inverse noise scaling for CONST, x / (1 - sigmas[-1]), divides by 0.999. Our ksampler divides by 1 - 0 = 1 (we
    # never mutate the caller's tensor), so the /0.999 is done here at the end instead.
    sigmas = sigmas.clone()
    overwritten = bool(sigmas[-1] == 0)
    if overwritten:
        sigmas[-1] = _FINAL_SIGMA
    n_steps = len(sigmas) - 1
    evals = 0

    def data_pred(x_vp, sigma):
        nonlocal evals
        x_ve = x_vp * (sigma**2 + 1.0) ** 0.5
        denoised = model(x_ve, sigma)
        if callback is not None:
            callback(evals, x_ve, denoised)
        evals += 1
        alpha, s, _ = _vp(sigma)
        eps = (x_ve - denoised) / sigma
        return (x_vp - s * eps) / alpha

    x = x / torch.sqrt(sigmas[0] ** 2 + 1)  # VE -> VP
    order = max(min(max_order, len(sigmas) - 2), 1)  # ComfyUI gets order 0 for a single step and fails
    history = [(sigmas[0], data_pred(x, sigmas[0]))]
    for k in range(1, n_steps + 1):
        step_order = k if k < order else min(order, n_steps + 1 - k)
        last = k == n_steps
        x, m = _unipc_step(x, history, sigmas[k], step_order, variant, None if last else data_pred)
        history = [*history, (sigmas[k], m)][-order:]
    x = x / _vp(sigmas[-1])[0]
    if overwritten:
        x = x / (1.0 - sigmas[-1])
    return x


@register("uni_pc", discard_penultimate=True)
def sample_uni_pc(model, x, sigmas, *, noise=None, callback=None):
    return _sample_unipc(model, x, sigmas, callback, "bh1")


@register("uni_pc_bh2", discard_penultimate=True)
def sample_uni_pc_bh2(model, x, sigmas, *, noise=None, callback=None):
    return _sample_unipc(model, x, sigmas, callback, "bh2")
