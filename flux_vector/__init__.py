"""flux_vector: FLUX.1-dev + the Simple Vector LoRA locally, as a drop-in for Segmind's Simple_Vector_Flux API.

``import flux_vector as segmind`` gives the ``segmind`` SDK's ``run``, ``run_sync``, ``submit_async``,
``SegmindClient``, ``AsyncJob`` and errors, running in-process (see ``flux_vector.facade``).
"""

__version__ = "0.1.0"

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
from .request import ASPECT_RATIOS, SLUG, GenerationRequest, RequestError, parse_request


def __getattr__(name: str):
    # The pipeline pulls in diffusers/transformers (seconds of import time): load it only when asked for.
    if name in ("FluxVectorPipeline", "GenerationResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "batch":  # flux-vector batch from Python (flux_vector.batching.runner.batch)
        from .batching.runner import batch

        return batch
    if name == "WeightsNotFound":
        from .models import WeightsNotFound

        return WeightsNotFound
    raise AttributeError(f"module 'flux_vector' has no attribute {name!r}")


__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_POLL_INTERVAL_S",
    "DEFAULT_POLL_TIMEOUT_S",
    "SLUG",
    "AsyncJob",
    "FluxVectorPipeline",
    "GenerationRequest",
    "InferenceFailed",
    "InferenceTimeout",
    "RequestError",
    "SegmindClient",
    "SegmindError",
    "batch",
    "configure",
    "parse_request",
    "run",
    "run_sync",
    "submit_async",
]
