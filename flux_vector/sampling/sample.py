"""What ComfyUI's KSampler node computes for a Flux (CONST) model, given velocity models for both prompts."""

from __future__ import annotations

import contextlib
import math

import torch

from .guidance import Denoiser, VelocityModel
from .names import PP_MIGRATION, SAMPLER_NAMES, SCHEDULER_NAMES
from .noise import BrownianTreeNoise, NoiseSampler, SeededNoise, initial_noise
from .prefetch import PrefetchedNoise, planned_noise_calls
from .samplers import SAMPLERS, SamplerSpec
from .samplers.registry import Callback
from .schedules import DEFAULT_MU, get_sigmas, get_sigmas_discard_penultimate

LATENT_SCALE, LATENT_SHIFT = 0.3611, 0.1159


def resolve_sampler(sampler_name: str, cfg: float) -> tuple[SamplerSpec, float]:
    """The algorithm and effective cfg a sampler name stands for (``*_pp`` -> plain sampler at 2x cfg)."""
    if sampler_name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler_name {sampler_name!r}; allowed: {', '.join(SAMPLER_NAMES)}")
    if sampler_name in PP_MIGRATION:
        return SAMPLERS[PP_MIGRATION[sampler_name]], 2.0 * cfg
    return SAMPLERS[sampler_name], cfg


def ksampler_sigmas(
    sampler_name: str, scheduler: str, steps: int, mu: float = DEFAULT_MU, denoise: float = 1.0
) -> torch.Tensor:
    """The sigma list the KSampler node uses: discard-penultimate for some samplers, truncated for denoise < 1."""
    spec, _ = resolve_sampler(sampler_name, 1.0)
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULER_NAMES)}")
    if isinstance(denoise, bool) or not isinstance(denoise, int | float) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be a number in (0, 1], got {denoise!r}")
    build = get_sigmas_discard_penultimate if spec.discard_penultimate else get_sigmas
    if denoise > 0.9999:
        return build(scheduler, steps, mu)
    return build(scheduler, int(steps / denoise), mu)[-(steps + 1) :]


def ksampler(
    positive: VelocityModel,
    negative: VelocityModel | None,
    *,
    sampler_name: str,
    scheduler: str,
    steps: int,
    seed: int,
    cfg: float = 1.0,
    latent: torch.Tensor,
    mu: float = DEFAULT_MU,
    denoise: float = 1.0,
    callback: Callback = None,
) -> torch.Tensor:
    """Sample like ComfyUI's KSampler node and return x in model space (before ``x/0.3611 + 0.1159``).

    ``latent`` is the node's LATENT input ([B,16,h,w]; zeros for text-to-image); a non-zero latent is moved to
    model space first, as ComfyUI does. The initial noise is ``randn`` from a CPU generator seeded with ``seed``.

    The sigmas stay on the CPU whatever the latent's device: the samplers' scalar math and their ``if sigma == 0``
    branches then never wait for the GPU, and 0-dim CPU tensors combine with device tensors as plain scalars.
    """
    if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg!r}")
    spec, cfg = resolve_sampler(sampler_name, cfg)
    sigmas = ksampler_sigmas(sampler_name, scheduler, steps, mu, denoise)
    model = Denoiser(positive, negative, cfg, always_uncond=spec.needs_uncond, mu=mu)

    noise = initial_noise(latent.shape, seed, torch.float32).to(latent.device)
    latent = latent.float()
    if torch.count_nonzero(latent) > 0:
        latent = (latent - LATENT_SHIFT) * LATENT_SCALE
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * latent

    with _noise_ahead(spec, x, sigmas, seed, mu) as noise:
        x = spec.fn(model, x, sigmas, noise=noise, callback=callback)
    return x / (1.0 - sigmas[-1])


def _noise_source(spec: SamplerSpec, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSampler | None:
    if spec.noise == "seeded":
        return SeededNoise(x, seed)
    if spec.noise == "brownian":
        return BrownianTreeNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)
    return None


def _noise_ahead(spec: SamplerSpec, x: torch.Tensor, sigmas: torch.Tensor, seed: int, mu: float):
    """The sampler's noise, drawn ahead on a background thread while the model runs (None: a deterministic one)."""
    source = _noise_source(spec, x, sigmas, seed)
    if source is None:
        return contextlib.nullcontext(None)
    return PrefetchedNoise(source, planned_noise_calls(spec.fn, sigmas, mu), x.device)


def to_latent(x: torch.Tensor) -> torch.Tensor:
    """The KSampler node's LATENT output (what VAEDecode consumes) from the model-space result."""
    return x / LATENT_SCALE + LATENT_SHIFT
