"""Single-step samplers: Euler and its ancestral / CFG++ forms, Heun, Heun++, DPM-2, DPM++ 2S/2M, LCM, DDPM.

Notation: sigma -> sigma' (``s``, ``s_next``), D = model(x, sigma), d = (x - D)/sigma (the flow velocity).
"""

from __future__ import annotations

import torch

from ..common import ancestral_split_rf, ancestral_split_ve, half_log_snr, sigma_from_half_log_snr, to_d
from .registry import register, report


@register("euler", "ddim")
def sample_euler(model, x, sigmas, *, noise=None, callback=None):
    """x <- x + (sigma' - sigma) d. ``ddim`` is the same update (its inpaint-noise flag is unused here)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@register("euler_ancestral", noise="seeded")
def sample_euler_ancestral(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """RF-DDIM step down to sigma_down, then re-noise to sigma' (the rectified-flow ancestral split)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, alpha_ratio, renoise = ancestral_split_rf(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@register("euler_ancestral_cfg_pp", noise="seeded", needs_uncond=True)
def sample_euler_ancestral_cfg_pp(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """CFG++: x0 from the guided D, the noise direction from the uncond prediction U.

    Works in the VP-like variables sigma/alpha with alpha = sigma * e^lambda, lambda = log((1-sigma)/sigma).
    At sigma = 1, alpha = 0 and the VE split sees inf/inf; Python's min keeps sigma_down = 0 there.
    """
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha = sigmas[i] * half_log_snr(sigmas[i]).exp()
        alpha_next = sigmas[i + 1] * half_log_snr(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha * model.uncond)
        sigma_down, sigma_up = ancestral_split_ve(sigmas[i] / alpha, sigmas[i + 1] / alpha_next, eta)
        x = alpha_next * denoised + alpha_next * sigma_down * d
        if eta > 0:
            x = x + alpha_next * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@register("euler_cfg_pp", needs_uncond=True)
def sample_euler_cfg_pp(model, x, sigmas, *, noise=None, callback=None):
    """x' = (1 - sigma') D + sigma' (x - (1 - sigma) U)/sigma: euler_ancestral_cfg_pp with eta = 0."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, noise=None, callback=callback, eta=0.0)


@register("heun", model_calls=2)
def sample_heun(model, x, sigmas, *, noise=None, callback=None):
    """Heun's method in sigma; the last interval (to 0) is a single Euler step."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
        x = x + (d + d_2) / 2 * dt
    return x


@register("heunpp2", model_calls=3)
def sample_heunpp2(model, x, sigmas, *, noise=None, callback=None):
    """Heun++: up to three slope evaluations per step, weighted by where they sit relative to sigma_0."""
    sigma_end, sigma_0 = sigmas[-1], sigmas[0]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == sigma_end:
            x = x + d * dt
        elif sigmas[i + 2] == sigma_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            w_2 = sigmas[i + 1] / (2 * sigma_0)
            x = x + ((1 - w_2) * d + w_2 * d_2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            dt_2 = sigmas[i + 2] - sigmas[i + 1]
            x_3 = x_2 + d_2 * dt_2
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
            w_2 = sigmas[i + 1] / (3 * sigma_0)
            w_3 = sigmas[i + 2] / (3 * sigma_0)
            x = x + ((1 - w_2 - w_3) * d + w_2 * d_2 + w_3 * d_3) * dt
    return x


def _dpm_2_step(model, x, d, sigma, sigma_to):
    """Half step to the geometric mean of sigma and sigma_to, full step with the midpoint slope."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
    return x + d_2 * (sigma_to - sigma)


@register("dpm_2", discard_penultimate=True, model_calls=2)
def sample_dpm_2(model, x, sigmas, *, noise=None, callback=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = _dpm_2_step(model, x, d, sigmas[i], sigmas[i + 1])
    return x


@register("dpm_2_ancestral", noise="seeded", discard_penultimate=True, model_calls=2)
def sample_dpm_2_ancestral(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        sigma_down, alpha_ratio, renoise = ancestral_split_rf(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm_2_step(model, x, d, sigmas[i], sigma_down)
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@register("dpmpp_2s_ancestral", noise="seeded", model_calls=2)
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S): an extra evaluation at sigma_s, the lambda-midpoint of sigma and sigma_down."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        sigma_down, alpha_ratio, renoise = ancestral_split_rf(sigmas[i], sigmas[i + 1], eta)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            continue
        if sigmas[i] == 1.0:
            sigma_s = torch.tensor(0.9999, dtype=sigmas.dtype, device=sigmas.device)
        else:
            lam, lam_down = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            sigma_s = sigma_from_half_log_snr(lam + (lam_down - lam) / 2)
        ratio_s = sigma_s / sigmas[i]
        denoised_s = model(ratio_s * x + (1 - ratio_s) * denoised, sigma_s)
        ratio_down = sigma_down / sigmas[i]
        x = ratio_down * x + (1 - ratio_down) * denoised_s
        if eta > 0:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@register("dpmpp_2m")
def sample_dpmpp_2m(model, x, sigmas, *, noise=None, callback=None):
    """DPM-Solver++(2M) in t = -log sigma; first-order on the first interval and on the one to 0."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@register("lcm", noise="seeded")
def sample_lcm(model, x, sigmas, *, noise, callback=None):
    """x <- D, then re-noised to sigma' with the rectified-flow mix sigma' n + (1 - sigma') D."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        report(callback, i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1]) + (1.0 - sigmas[i + 1]) * x
    return x


@register("ddpm", noise="seeded")
def sample_ddpm(model, x, sigmas, *, noise, callback=None):
    """A VP DDPM ancestral step; it reads sigma as VE (not RF-aware), as ComfyUI's does."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, denoised)
        eps = (x - denoised) / sigma
        alpha_bar, alpha_bar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
        alpha = alpha_bar / alpha_bar_next
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
        if sigma_next > 0:
            mu = mu + ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt() * noise(sigma, sigma_next)
            mu = mu * torch.sqrt(1.0 + sigma_next**2.0)
        x = mu
    return x
