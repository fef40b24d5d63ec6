"""ComfyUI-faithful rectified-flow sampling for Flux: pure torch, no diffusers.

The names are importable without torch (the parameter contract and API-only server processes need only them); the
rest loads on first use.
"""

from importlib import import_module

from .names import HOSTED_SAMPLER_NAMES, PP_MIGRATION, SAMPLER_NAMES, SCHEDULER_NAMES

_LAZY = {
    "Denoiser": ".guidance",
    "ksampler": ".sample",
    "ksampler_sigmas": ".sample",
    "to_latent": ".sample",
    "initial_noise": ".noise",
    "flux_mu": ".schedules",
    "get_sigmas": ".schedules",
    "sigma_table": ".schedules",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HOSTED_SAMPLER_NAMES", "PP_MIGRATION", "SAMPLER_NAMES", "SCHEDULER_NAMES", *_LAZY]
