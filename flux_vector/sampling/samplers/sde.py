"""SDE samplers on Brownian-tree noise: DPM-Solver++ SDE, 2M SDE (midpoint) and 3M SDE, ComfyUI's RF forms.

All work in the half-log-SNR lambda = log((1 - sigma)/sigma) with alpha = sigma * e^lambda (= 1 - sigma), after a
first sigma >= 1 is moved to where lambda is finite (``offset_first_sigma``). The step to sigma' = 0 is x = D.
eta = 1 and s_noise = 1 by default. The ``*_gpu`` names are the same functions: our tree always lives on the CPU.
"""

from __future__ import annotations

from ..common import ancestral_split_ve, half_log_snr, offset_first_sigma, sigma_from_half_log_snr
from .registry import register, report


def _alpha(sigma, lam):
    return sigma * lam.exp()


@register("dpmpp_sde", "dpmpp_sde_gpu", noise="brownian", model_calls=2)
def sample_dpmpp_sde(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++(2S) SDE: a stage at lambda + r h, then the full step; each stage an ancestral split in
    rho = e^-lambda (sigma/alpha). Both draws start at sigma: (sigma, sigma_1) and (sigma, sigma')."""
    sigmas = offset_first_sigma(sigmas, model.mu)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lam_next - lam
        lam_1 = lam + r * h
        sigma_1 = sigma_from_half_log_snr(lam_1)
        alpha, alpha_1, alpha_next = _alpha(sigma, lam), _alpha(sigma_1, lam_1), _alpha(sigma_next, lam_next)

        # stage 1: to lambda_1
        rho_down, rho_up = ancestral_split_ve(lam.neg().exp(), lam_1.neg().exp(), eta)
        h_ = rho_down.log().neg() - lam
        x_2 = (alpha_1 / alpha) * (-h_).exp() * x - alpha_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_1 * noise(sigma, sigma_1) * s_noise * rho_up
        denoised_2 = model(x_2, sigma_1)

        # stage 2: the full step with the blended data prediction
        rho_down, rho_up = ancestral_split_ve(lam.neg().exp(), lam_next.neg().exp(), eta)
        h_ = rho_down.log().neg() - lam
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_next / alpha) * (-h_).exp() * x - alpha_next * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * rho_up
    return x


def _sde_base_step(x, denoised, sigma, sigma_next, h, eta):
    """First-order part shared by 2M/3M SDE: x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1+eta) h}) D."""
    alpha_next = _alpha(sigma_next, half_log_snr(sigma_next))
    h_eta = h * (eta + 1)
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * (-h_eta).expm1().neg() * denoised
    return x, alpha_next, h_eta


def _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise):
    """Add sigma' sqrt(1 - e^{-2 eta h}) s_noise n."""
    if eta > 0 and s_noise > 0:
        x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
    return x


@register("dpmpp_2m_sde", "dpmpp_2m_sde_gpu", noise="brownian")
def sample_dpmpp_2m_sde(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE; the second-order term uses the previous D with r = h_last / h."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError("solver_type must be 'midpoint' or 'heun'")
    sigmas = offset_first_sigma(sigmas, model.mu)
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = half_log_snr(sigma_next) - half_log_snr(sigma)
            x, alpha_next, h_eta = _sde_base_step(x, denoised, sigma, sigma_next, h, eta)
            if old_denoised is not None and h_last is not None:  # both set from the second step on
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_next * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_next * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise)
        old_denoised, h_last = denoised, h
    return x


@register("dpmpp_3m_sde", "dpmpp_3m_sde_gpu", noise="brownian")
def sample_dpmpp_3m_sde(model, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: second- then third-order corrections from the last one/two D (phi_2, phi_3)."""
    sigmas = offset_first_sigma(sigmas, model.mu)
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = half_log_snr(sigma_next) - half_log_snr(sigma)
            x, alpha_next, h_eta = _sde_base_step(x, denoised, sigma, sigma_next, h, eta)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                assert h_1 is not None and denoised_1 is not None and denoised_2 is not None  # set before h_2
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_next * phi_2) * d1 - (alpha_next * phi_3) * d2
            elif h_1 is not None:
                x = x + (alpha_next * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            x = _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
