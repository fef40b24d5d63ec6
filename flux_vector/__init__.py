"""flux_vector: FLUX.1-dev + the Simple Vector LoRA locally, as a drop-in for Segmind's Simple_Vector_Flux API.

``import flux_vector as segmind`` gives the ``segmind`` SDK's ``run``, ``run_sync``, ``submit_async``,
``SegmindClient``, ``AsyncJob`` and errors, running in-process (see ``flux_vector.facade``).

Importing the root package imports nothing else: every public name below is loaded on first use (PEP 562), so that
``import flux_vector.sampling`` or ``import flux_vector.request`` does not pay for pydantic, the job layer or torch.
The version lives in ``flux_vector.version``; modules inside the package import it from there, never from here.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "DEFAULT_POLL_INTERVAL_S",
            "DEFAULT_POLL_TIMEOUT_S",
            "AsyncJob",
            "InferenceFailed",
            "InferenceTimeout",
            "SegmindClient",
            "SegmindError",
            "configure",
            "run",
            "run_sync",
            "submit_async",
        ),
        ".facade",
    ),
    **dict.fromkeys(("ASPECT_RATIOS", "SLUG", "GenerationRequest", "RequestError", "parse_request"), ".request"),
    # the pipeline pulls in diffusers/transformers (seconds of import time)
    "FluxVectorPipeline": ".pipeline",
    "GenerationResult": ".pipeline",
    "batch": ".batching.runner",  # flux-vector batch from Python
    "WeightsNotFound": ".models",
}

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time each name is loaded by __getattr__
    from .batching.runner import batch
    from .facade import (
        DEFAULT_POLL_INTERVAL_S,
        DEFAULT_POLL_TIMEOUT_S,
        AsyncJob,
        InferenceFailed,
        InferenceTimeout,
        SegmindClient,
        SegmindError,
        configure,
        run,
        run_sync,
        submit_async,
    )
    from .models import WeightsNotFound
    from .pipeline import FluxVectorPipeline, GenerationResult
    from .request import ASPECT_RATIOS, SLUG, GenerationRequest, RequestError, parse_request


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # a submodule not imported yet (``flux_vector.facade``, ``flux_vector.jobs``), as an eager root had them
        if not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
            return import_module(f".{name}", __name__)
        raise AttributeError(f"module 'flux_vector' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_POLL_INTERVAL_S",
    "DEFAULT_POLL_TIMEOUT_S",
    "SLUG",
    "AsyncJob",
    "FluxVectorPipeline",
    "GenerationRequest",
    "GenerationResult",
    "InferenceFailed",
    "InferenceTimeout",
    "RequestError",
    "SegmindClient",
    "SegmindError",
    "WeightsNotFound",
    "__version__",
    "batch",
    "configure",
    "parse_request",
    "run",
    "run_sync",
    "submit_async",
]
