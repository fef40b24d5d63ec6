"""``segmind``-shaped entry points, so that ``import flux_vector as segmind`` runs an existing script unchanged.

The names and signatures are those of the ``segmind`` package (1.3.0): ``run``, ``run_sync``, ``submit_async``,
``SegmindClient``, ``AsyncJob``, ``SegmindError``, ``InferenceFailed``, ``InferenceTimeout``.

- ``SegmindClient()`` without ``base_url`` (and the module-level functions) run **in-process**: jobs go through the
  same queue and worker as the server (``flux_vector.jobs``), with a private store under
  ``~/.cache/flux_vector/inprocess/`` and one pipeline per process, built on the first job from ``$FLUX_VECTOR_MODEL``
  (else FLUX.1-dev when cached, else the shipped demo model, as ``flux-vector serve`` chooses). ``output`` is a ``file://``
  URL; results and their files expire after an hour, as the hosted ones do. ``configure()`` picks another model or
  hands over a pipeline you already loaded.
- ``SegmindClient(base_url="http://host:port/v1")`` speaks HTTP to a ``flux-vector serve`` (or any Segmind-compatible
  endpoint), exactly as the SDK does: same headers, same URLs, same error handling.

``run_sync`` returns an ``httpx.Response`` in both modes (``.content`` is the image, ``.json()`` the body when
``base64=True``). Errors carry the SDK's attributes: ``SegmindError.status`` / ``.detail`` (400 invalid parameter,
404 unknown model or request, 429 queue full, 500 a failed sync job), ``InferenceFailed.status_body``,
``InferenceTimeout.request_id`` / ``.elapsed_s``. In-process, ``api_key`` and ``timeout`` are accepted and unused.
"""

from __future__ import annotations

import os
from typing import Any

from ..jobs import DEFAULT_RETENTION_S
from ..request import WorkBudget
from .client import DEFAULT_POLL_INTERVAL_S, DEFAULT_POLL_TIMEOUT_S, AsyncJob, SegmindClient
from .errors import InferenceFailed, InferenceTimeout, SegmindError
from .local import reset_engine

_default_client: SegmindClient | None = None


def configure(
    *,
    model: str | None = None,
    pipeline: Any = None,
    store_dir: str | os.PathLike | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
    max_queue: int | None = None,
    budget: WorkBudget | None = None,
    **pipeline_kwargs: Any,
) -> None:
    """Set up the in-process engine (before or between uses): ``model`` (as ``--model``) with ``from_pretrained``
    keyword arguments, or a ready ``pipeline``; where the store lives; retention; a queue bound; the work
    ``budget`` (a ``WorkBudget``; None: derived from the device's memory once the pipeline is loaded, as
    ``flux-vector serve`` does, and ``WorkBudget()``'s defaults until then). The previous engine
    is shut down: its queued jobs are abandoned and its request ids are no longer known."""
    global _default_client
    settings = dict(
        model=model,
        pipeline=pipeline,
        store_dir=store_dir,
        retention_s=retention_s,
        max_queue=max_queue,
        budget=budget,
        **pipeline_kwargs,
    )
    _default_client = None
    reset_engine(settings)


def _get_client() -> SegmindClient:
    global _default_client
    if _default_client is None:
        _default_client = SegmindClient()
    return _default_client


def run(slug: str, **params) -> dict:
    """Submit and wait until COMPLETED; the final body (``status``, ``output``, ``metrics``, the parameters)."""
    return _get_client().run(slug, **params)


def run_sync(slug: str, **params):
    """One blocking call: an ``httpx.Response`` whose ``.content`` is the image."""
    return _get_client().run_sync(slug, **params)


def submit_async(slug: str, **params) -> AsyncJob:
    """Enqueue and return an ``AsyncJob`` (``.request_id``, ``.status()``, ``.result()``, ``.wait()``)."""
    return _get_client().submit_async(slug, **params)


__all__ = [
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
]
