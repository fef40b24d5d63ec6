"""ComfyUI-faithful rectified-flow sampling for Flux: pure torch, no diffusers."""

from .guidance import Denoiser
from .ksampler import HOSTED_SAMPLER_NAMES, PP_MIGRATION, SAMPLER_NAMES, ksampler, ksampler_sigmas, to_latent
from .noise import initial_noise
from .schedules import SCHEDULER_NAMES, flux_mu, get_sigmas, sigma_table

__all__ = [
    "HOSTED_SAMPLER_NAMES",
    "PP_MIGRATION",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "Denoiser",
    "flux_mu",
    "get_sigmas",
    "initial_noise",
    "ksampler",
    "ksampler_sigmas",
    "sigma_table",
    "to_latent",
]
