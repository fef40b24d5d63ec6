"""flux_vector: FLUX.1-dev + the Simple Vector LoRA locally, as a drop-in for Segmind's Simple_Vector_Flux API."""

from .request import ASPECT_RATIOS, GenerationRequest, RequestError, parse_request

__version__ = "0.1.0"


def __getattr__(name: str):
    # The pipeline pulls in diffusers/transformers (seconds of import time): load it only when asked for.
    if name in ("FluxVectorPipeline", "GenerationResult", "WeightsNotFound"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'flux_vector' has no attribute {name!r}")


__all__ = ["ASPECT_RATIOS", "FluxVectorPipeline", "GenerationRequest", "RequestError", "parse_request"]
