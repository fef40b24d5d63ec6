"""All sampler families; importing this package fills ``SAMPLERS``."""

from . import basic, dpm_solver, multistep, sde, unipc  # noqa: F401  (registration side effects)
from .registry import SAMPLERS, SamplerSpec

__all__ = ["SAMPLERS", "SamplerSpec"]
