"""Stand-ins for FluxVectorPipeline with the same contract (``jobs.worker.GeneratingPipeline``: prepare, generate,
fuse_lora, warmup), for fast queue/server tests.

- ``FakePipelineBase``: ``prepare`` with the real strength rule (``lora.strength_without_lora``), ``fuse_lora`` and
  ``warmup`` that record what they were asked; a subclass draws.
- ``FakePipeline``: solid-colour images, no model; ``FakeLora`` stands for a loaded LoRA where a worker reports one.
- ``FaultInjectingPipeline``: a pipeline (the tiny model, or the fake one: ``load_fake``) that fails or stalls on
  request, because nothing in the parameter contract can make a valid request fail deterministically. Markers in a
  prompt act before the wrapped pipeline generates:

  - ``[[fault:nan]]``      the job fails as a model producing NaN latents would (FloatingPointError);
  - ``[[fault:oom]]``      the job fails as an out-of-memory model would (MemoryError);
  - ``[[fault:sleep=S]]``  the job holds the worker S extra seconds (interruptible: ``on_step`` is called meanwhile),
                           then runs normally.

  Server and worker processes serve it through the plugin point ``FLUX_VECTOR_PIPELINE_FACTORY``
  (``flux_vector/pipeline_factory.py``): pass ``FAULTS_ENV`` as their environment.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from flux_vector.request import GenerationRequest, Prepared

_ROOT = str(Path(__file__).resolve().parent.parent)  # so that a server started from any folder imports ``tests``
FAULTS_ENV = {
    "FLUX_VECTOR_PIPELINE_FACTORY": "tests.fake_pipeline:load_with_faults",
    "PYTHONPATH": os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH")))),
}
_MARKER = re.compile(r"\[\[fault:(nan|oom|sleep=(\d+(?:\.\d+)?))\]\]")


@dataclass
class FakeLora:
    """A loaded LoRA as a worker process reports it on ``/healthz`` (its strength, whether it is fused)."""

    strength: float = 1.0
    fused: bool = False


class FakePipelineBase:
    """The non-drawing part of the pipeline contract. ``lora``: None is a pipeline loaded without a LoRA (the
    strength rule then applies as ``FluxVectorPipeline.prepare`` applies it); anything else stands for one."""

    lora: object = "fake-lora"

    def prepare(self, request: GenerationRequest) -> Prepared:
        if self.lora is None and request.lora_strength != 0:
            from flux_vector.lora import strength_without_lora

            explicit = "lora_strength" in request.model_fields_set
            return Prepared(
                request.model_copy(update={"lora_strength": strength_without_lora(request.lora_strength, explicit)})
            )
        return Prepared(request)

    def fuse_lora(self, log: Callable[[str], None] = print) -> bool:
        self.fused = self.lora is not None
        if isinstance(self.lora, FakeLora):
            self.lora.fused = True
        return self.fused

    def warmup(self, sizes=None, *, log=None):
        self.warmed = list(sizes or [])
        return {}


class FakePipeline(FakePipelineBase):
    """Solid-colour images of the requested size; ``step_s`` seconds per step; ``error`` raised instead."""

    def __init__(self, step_s: float = 0.0, error: BaseException | None = None, lora: object = "fake-lora"):
        self.step_s, self.error, self.lora = step_s, error, lora
        self.calls: list[GenerationRequest] = []

    def generate(self, request, *, progress=True, on_step=None):
        request = self.prepare(request).request
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
        return SimpleNamespace(
            images=images,
            width=width,
            height=height,
            timings={"total_s": time.perf_counter() - started, "sample_s": 0.0},
        )


class SimulatedOutOfMemory(MemoryError):
    pass


def act_on_fault_markers(prompt: str, total_steps: int, on_step: Callable[[int, int], None] | None) -> None:
    """Raise or sleep as the prompt's markers say; while sleeping, ``on_step(0, total_steps)`` runs every 50 ms so
    that a worker stopping interrupts the sleep as it would a sampling step."""
    for match in _MARKER.finditer(prompt):
        kind = match.group(1)
        if kind == "nan":
            raise FloatingPointError("the sampler produced NaN/inf latents (simulated by a [[fault:nan]] marker)")
        if kind == "oom":
            raise SimulatedOutOfMemory("CUDA out of memory (simulated by a [[fault:oom]] marker)")
        deadline = time.monotonic() + float(match.group(2))
        while (left := deadline - time.monotonic()) > 0:
            if on_step is not None:
                on_step(0, total_steps)
            time.sleep(min(left, 0.05))


class FaultInjectingPipeline:
    """``inner`` with ``[[fault:...]]`` prompt markers acted on before it generates; every other attribute is
    ``inner``'s (its LoRA, ``prepare``, ``fuse_lora``, ``warmup``: the worker process fuses the real thing)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # only for names not defined here
        return getattr(self.inner, name)

    def generate(self, request, *, progress=True, on_step=None):
        act_on_fault_markers(request.prompt, request.steps, on_step)
        return self.inner.generate(request, progress=progress, on_step=on_step)


def with_fault_markers(inner: Any) -> FaultInjectingPipeline:
    return FaultInjectingPipeline(inner)


def load_with_faults(model: str, **options: Any) -> FaultInjectingPipeline:
    """A ``FLUX_VECTOR_PIPELINE_FACTORY``: the pipeline ``from_pretrained`` loads, wrapped to act on fault markers."""
    from flux_vector.pipeline import FluxVectorPipeline

    return with_fault_markers(FluxVectorPipeline.from_pretrained(model, **options))


FAKE_STEP_ENV = "FLUX_VECTOR_FAKE_STEP_S"
FAKE_ENV = {
    "FLUX_VECTOR_PIPELINE_FACTORY": "tests.fake_pipeline:load_fake",
    "PYTHONPATH": FAULTS_ENV["PYTHONPATH"],
}


def load_fake(model: str, **options: Any) -> FaultInjectingPipeline:
    """A ``FLUX_VECTOR_PIPELINE_FACTORY``: ``FakePipeline`` (no model; ``$FLUX_VECTOR_FAKE_STEP_S`` seconds a step)
    acting on fault markers, for process tests about the queue, the HTTP layer and crashes rather than the pixels (a
    server that loads no model is up on 40 % of the CPU: 2.6 s against 6.6 s for the tiny model). The server still
    reads ``model``'s tokenizer files to count prompt tokens."""
    return _fake(lora=None)


FAKE_LORA_ENV = {**FAKE_ENV, "FLUX_VECTOR_PIPELINE_FACTORY": "tests.fake_pipeline:load_fake_with_lora"}


def load_fake_with_lora(model: str, **options: Any) -> FaultInjectingPipeline:
    """``load_fake`` with a LoRA loaded (``FakeLora``: fused when the worker fuses it), for fleets of workers."""
    return _fake(lora=FakeLora())


def _fake(lora: object) -> FaultInjectingPipeline:
    return with_fault_markers(FakePipeline(step_s=float(os.environ.get(FAKE_STEP_ENV, "0")), lora=lora))
