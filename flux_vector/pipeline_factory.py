"""The pipeline plugin point: ``FLUX_VECTOR_PIPELINE_FACTORY=package.module:callable``.

Everything that loads a pipeline (``flux-vector serve``'s embedded worker, ``flux-vector worker``, the in-process
facade, ``flux-vector generate``) goes through ``pipeline.load_pipeline``. With this environment variable set, that
imports the callable and serves ``callable(model, **options)`` instead of ``FluxVectorPipeline.from_pretrained(model,
**options)``, with the same arguments (defaults filled in). What it returns must be a
``flux_vector.jobs.worker.GeneratingPipeline`` as ``FluxVectorPipeline`` is: ``prepare(request)`` (the LoRA
strength rules and switch), ``generate(request, *, progress, on_step)``, ``fuse_lora(log)`` and
``warmup(sizes, log=...)``. The test suite points it at a pipeline that fails or stalls on request
(``tests/fake_pipeline.py``); a deployment can point it at a custom pipeline.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

FACTORY_ENV = "FLUX_VECTOR_PIPELINE_FACTORY"


def factory_from_env() -> Callable[..., Any] | None:
    """The callable ``$FLUX_VECTOR_PIPELINE_FACTORY`` names, or None when it is unset or empty."""
    spec = os.environ.get(FACTORY_ENV, "").strip()
    return import_factory(spec) if spec else None


def import_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:callable"`` -> the callable; ValueError saying what is wrong otherwise."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{FACTORY_ENV}={spec!r} is not allowed; it must be 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{FACTORY_ENV}={spec!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"{FACTORY_ENV}={spec!r} names {type(factory).__name__}, not a callable")
    return factory
