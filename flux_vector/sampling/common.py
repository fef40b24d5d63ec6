"""Pieces several samplers share: the derivative, the two ancestral splits, the half-log-SNR transforms."""

from __future__ import annotations

import torch

from .schedules import percent_to_sigma


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma = (x - D) / sigma: the flow velocity for CONST, the "eps" of the VE solvers."""
    return (x - denoised) / sigma


def ancestral_split_rf(sigma, sigma_next, eta: float = 1.0):
    """Rectified-flow ancestral split (ComfyUI's RF branch): returns (sigma_down, alpha_ratio, renoise).

    Step deterministically to ``sigma_down``, then ``x = alpha_ratio * x + renoise * n`` lands on sigma_next
    with the right signal/noise mix.
    """
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def ancestral_split_ve(sigma_from, sigma_to, eta: float = 1.0):
    """Variance-exploding ancestral split: returns (sigma_down, sigma_up).

    ``min`` is Python's on purpose: ``min(a, nan)`` is ``a``, which is what keeps euler_ancestral_cfg_pp finite
    at sigma = 1 (there sigma/alpha is inf and the second argument is nan).
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = log((1 - sigma) / sigma) for rectified flow."""
    return sigma.logit().neg()


def sigma_from_half_log_snr(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().sigmoid()


def offset_first_sigma(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """Replace a first sigma >= 1 by percent_to_sigma(1e-4), where the half-log-SNR is finite."""
    if len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = percent_to_sigma(1e-4, mu)
    return sigmas


def lagrange_basis(nodes, j: int, tau):
    """The j-th Lagrange basis polynomial on ``nodes`` at ``tau``: prod_{k != j} (tau - t_k) / (t_j - t_k).

    Works on floats and on tensors alike (``tau`` may be a grid).
    """
    out = 1.0
    for k, t_k in enumerate(nodes):
        if k != j:
            out = out * (tau - t_k) / (nodes[j] - t_k)
    return out
