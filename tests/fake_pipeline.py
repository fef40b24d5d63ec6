"""A stand-in for FluxVectorPipeline with the same ``generate`` contract, for fast queue/server tests."""

from __future__ import annotations

import time
from types import SimpleNamespace

from PIL import Image


class FakePipeline:
    """Solid-colour images of the requested size; ``step_s`` seconds per step; ``error`` raised instead."""

    def __init__(self, step_s: float = 0.0, error: BaseException | None = None, lora: object = "fake-lora"):
        self.step_s, self.error, self.lora = step_s, error, lora
        self.calls = []

    def generate(self, request, *, progress=True, on_step=None):
        self.calls.append(request)
        started = time.perf_counter()
        for i in range(request.steps):
            if self.step_s:
                time.sleep(self.step_s)
            if on_step is not None:
                on_step(i + 1, request.steps)
        if self.error is not None:
            raise self.error
        width, height = request.size
        colour = (request.seed % 256, 40, 200)
        images = [Image.new("RGB", (width, height), colour) for _ in range(request.batch_size)]
        return SimpleNamespace(images=images, width=width, height=height,
                               timings={"total_s": time.perf_counter() - started, "sample_s": 0.0})  # fmt: skip
