"""Noise sources, all seeded on the CPU so that one seed gives the same image on any device.

* ``initial_noise``: ComfyUI's ``prepare_noise``, one ``randn`` of the whole batch from a CPU generator.
* ``SeededNoise``: the ancestral samplers' source. ComfyUI (2025-01 on) uses a private generator seeded with the
  KSampler seed *on the latent's device*; on CPU its first draw equals the initial noise. Here the generator is
  always a CPU one and the draw moves to the device afterwards, so a CUDA run gives the CPU (golden) result.
  This deliberately departs from ComfyUI-on-CUDA, whose Philox stream differs.
* ``BrownianTreeNoise``: the SDE samplers' source, a ``torchsde.BrownianTree`` over [sigma_min, sigma_max]
  with the seed as entropy. ComfyUI builds it on the CPU for the plain names and on the device for ``*_gpu``;
  here both build it on the CPU (identical on CPU, device-independent elsewhere).

Both sources return CPU draws; ``prefetch.PrefetchedNoise`` computes them ahead and moves them to the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cpu_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in 0..2^64-1, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)


def initial_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The initial noise ComfyUI draws for a latent of ``shape``: ``manual_seed(seed); randn(shape)`` on CPU."""
    return torch.randn(tuple(shape), dtype=dtype, generator=cpu_generator(seed), device="cpu")


class SeededNoise:
    """Unit Gaussian CPU draws of a fixed shape from a private CPU generator seeded with ``seed``."""

    def __init__(self, like: torch.Tensor, seed: int):
        self.shape, self.dtype = like.shape, like.dtype
        self.generator = cpu_generator(seed)
        self.draws = 0

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.draws += 1
        return torch.randn(self.shape, dtype=self.dtype, generator=self.generator, device="cpu")


class BrownianTreeNoise:
    """Unit-variance Brownian increments ``(W(s') - W(s)) / sqrt|s' - s|`` from a CPU Brownian tree (CPU draws)."""

    def __init__(self, like: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seed: int):
        import torchsde  # imported lazily: only the SDE samplers need it

        cpu_generator(seed)  # validates the seed
        _ignore_tree_start_warning()
        t0, t1 = torch.as_tensor(sigma_min).cpu().float(), torch.as_tensor(sigma_max).cpu().float()
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = min(t0, t1), max(t0, t1)
        # ComfyUI's torchsde.BrownianTree(t0, zeros, t1, entropy=seed) is this interval with cache_size=45. The
        # cache only memoizes (each node's draw comes from its own seed, so the values do not depend on it); 64
        # keeps both endpoints' paths of a step and needs 29 instead of 44 randn calls per draw.
        self.tree = torchsde.BrownianInterval(
            t0=t0,
            t1=t1,
            size=like.shape,
            dtype=like.dtype,
            device="cpu",
            entropy=seed,
            tol=1e-6,
            pool_size=24,
            halfway_tree=True,
            cache_size=64,
        )
        self.draws = 0

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.draws += 1
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = self.tree(lo.cpu().float(), hi.cpu().float()).to(t0.dtype) * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()


_TREE_START_WARNING = "Should have ta>=t0"


def _ignore_tree_start_warning() -> None:
    """torchsde rounds the tree's start to its 1e-6 tolerance, just above a float32 sigma_min, and warns
    "Should have ta>=t0" on draws that touch it; ComfyUI takes the same path and the draws match it.

    A process-wide filter for that one message, not ``catch_warnings`` around each draw: the draws run on the
    prefetch thread, and ``catch_warnings`` swaps the global filter list, which races with other threads.
    """
    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == _TREE_START_WARNING for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_TREE_START_WARNING)
