"""Noise drawn ahead of the sampler, on one background thread, so that the model never waits for it.

The CPU noise sources (``SeededNoise``, ``BrownianTreeNoise``) are exact only when called with the same
(sigma, sigma_next) pairs in the same order as the sampler would call them. Those pairs depend on the sigma list
alone, never on the model's output, so ``planned_noise_calls`` finds them with a dry run of the sampler on a 0-dim
x and a free model. ``PrefetchedNoise`` then calls the source with exactly those pairs, in that order, on a thread
that runs while the model runs, and hands each draw over on the sampler's device: from pinned memory with a
non-blocking copy when that device is CUDA, so neither the draw nor the copy makes the host wait for the GPU.

The source's work is torch ops (which release the GIL) and torchsde's Python bookkeeping (which holds it); with
a GPU-bound model the host thread is mostly waiting, so one thread is enough (``benchmarks/bench_samplers.py``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import torch

from .noise import NoiseSampler

THREAD_NAME = "flux-vector-noise-prefetch"
Call = tuple[torch.Tensor, torch.Tensor]


class _Probe:
    """A free stand-in for the ``Denoiser`` in a dry run: D = 0 and U = 0 for any x."""

    def __init__(self, mu: float):
        self.mu = mu
        self.uncond = torch.zeros(())

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def planned_noise_calls(sampler_fn: Callable[..., torch.Tensor], sigmas: torch.Tensor, mu: float) -> list[Call]:
    """The (sigma, sigma_next) pairs ``sampler_fn`` will ask its noise source for on ``sigmas``, in order."""
    calls: list[Call] = []

    def record(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        calls.append((sigma, sigma_next))
        return torch.zeros(())

    sampler_fn(_Probe(mu), torch.zeros(()), sigmas, noise=record, callback=None)
    return calls


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class PrefetchedNoise:
    """``source``'s draws for the planned ``calls``, computed up to ``depth`` ahead on a background thread.

    Use it as a context manager: leaving the block (normally, or by an exception from the model) stops and joins
    the thread. Asked for anything but the next planned call, it raises: the plan was wrong, and a draw out of
    order would silently change the image.
    """

    def __init__(self, source: NoiseSampler, calls: Sequence[Call], device: torch.device, depth: int = 4):
        self.source, self.calls, self.device = source, list(calls), torch.device(device)
        self.taken = 0
        self._pin = self.device.type == "cuda"
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self.taken >= len(self.calls) or not _same_call(self.calls[self.taken], (sigma, sigma_next)):
            planned = self.calls[self.taken] if self.taken < len(self.calls) else "no more draws"
            raise RuntimeError(
                f"noise asked for ({float(sigma)}, {float(sigma_next)}) at draw {self.taken}, planned {planned}"
            )
        self.taken += 1
        item = self._ready.get()
        if isinstance(item, _Failed):
            raise item.error
        return item.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PrefetchedNoise:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _produce(self) -> None:
        try:
            with torch.no_grad():
                for sigma, sigma_next in self.calls:
                    if self._stop.is_set():
                        return
                    draw = self.source(sigma, sigma_next)
                    self._hand_over(draw.pin_memory() if self._pin else draw)
        except BaseException as error:  # re-raised on the sampler's thread, at its next draw
            self._hand_over(_Failed(error))

    def _hand_over(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.05)
                return
            except queue.Full:
                continue


def _same_call(planned: Call, asked: Call) -> bool:
    return all(float(p) == float(a) for p, a in zip(planned, asked, strict=True))
