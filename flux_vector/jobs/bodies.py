"""The Segmind-shaped JSON bodies of a job, shared by the HTTP server and the in-process facade.

Status (``GET /v2/requests/{id}/status``)::

    {"request_id": ..., "status": "QUEUED", "position": 0}                 # jobs ahead of it
    {"request_id": ..., "status": "PROCESSING", "progress": {"step": 3, "total": 20}}
    {"request_id": ..., "status": "COMPLETED"}
    {"request_id": ..., "status": "FAILED", "error": "..."}                # served as HTTP 422

Final body (``GET /v2/requests/{id}``, ``segmind.run``)::

    {"request_id": ..., "status": "COMPLETED", "output": "<url of the first image>", "outputs": [<all urls>],
     "metrics": {"inference_time": s, "queue_time": s, "total_time": s}, "width": .., "height": ..,
     <every request parameter, defaults filled in>,          # prompt, aspect_ratio, ..., seed, steps, base64
     "image": "<base64>", "images": [<base64>, ...]}         # only when base64 is true

A FAILED final body carries ``status``, ``error``, ``metrics`` and ``output: null``.
"""

from __future__ import annotations

import base64 as b64
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .store import COMPLETED, FAILED, PROCESSING, QUEUED, Job


def status_body(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": job.id, "status": job.state}
    if job.state == QUEUED and job.position is not None:
        body["position"] = job.position
    elif job.state == PROCESSING:
        body["progress"] = {"step": job.step or 0, "total": job.total_steps}
    elif job.state == FAILED:
        body["error"] = job.error
    return body


def metrics(job: Job) -> dict[str, float | None]:
    """Server-side seconds: compute (``inference_time``), waiting in the queue, submit to finish."""
    queue = None if job.started_at is None else max(0.0, job.started_at - job.created_at)
    total = None if job.finished_at is None else max(0.0, job.finished_at - job.created_at)
    return {
        "inference_time": _round(job.result.get("inference_time")),
        "queue_time": _round(queue),
        "total_time": _round(total),
    }


def result_body(
    job: Job,
    image_url: Callable[[int], str],
    image_bytes: Callable[[int], bytes | None] | None = None,
    *,
    encoded: Base64Images | None = None,
) -> dict[str, Any]:
    """The final body. ``image_url(i)`` names image i; ``image_bytes(i)`` reads it when the request asked base64
    (through ``encoded``, which encodes each job's images once, when given)."""
    if job.state != COMPLETED:
        body = status_body(job)
        if job.state == FAILED:
            body.update(output=None, metrics=metrics(job))
        return body
    result = job.result
    urls = [image_url(i) for i in range(result.get("count", 0))]
    body = {
        "request_id": job.id,
        "status": COMPLETED,
        "output": urls[0] if urls else None,
        "outputs": urls,
        "metrics": metrics(job),
        **result.get("echo", {}),
        # after the echo: a request that only named an aspect_ratio echoes width/height as None
        "width": result.get("width"),
        "height": result.get("height"),
    }
    if result.get("echo", {}).get("base64") and image_bytes is not None:
        if encoded is not None:
            images = encoded.get(job.id, len(urls), image_bytes)
        else:
            images = [_base64(image_bytes(i)) for i in range(len(urls))]
        body["image"] = images[0] if images else None
        body["images"] = images
    return body


def _base64(data: bytes | None) -> str:
    return b64.b64encode(data or b"").decode("ascii")


class Base64Images:
    """The base64 text of finished jobs' images, each job encoded once (concurrent readers of one job wait for the
    first) and kept, least recently used out first, up to ``max_chars`` in all."""

    def __init__(self, max_chars: int = 256 << 20):
        self.max_chars = max_chars
        self._done: OrderedDict[str, list[str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}

    def get(self, job_id: str, count: int, image_bytes: Callable[[int], bytes | None]) -> list[str]:
        with self._lock:
            job_lock = self._job_locks.setdefault(job_id, threading.Lock())
        with job_lock:
            with self._lock:
                if job_id in self._done:
                    self._done.move_to_end(job_id)
                    return self._done[job_id]
            images = [_base64(image_bytes(i)) for i in range(count)]
            with self._lock:
                self._keep(job_id, images)
                self._job_locks.pop(job_id, None)
        return images

    def _keep(self, job_id: str, images: list[str]) -> None:
        size = sum(map(len, images))
        if size > self.max_chars:
            return
        self._done[job_id] = images
        self._size += size
        while self._size > self.max_chars:
            _, dropped = self._done.popitem(last=False)
            self._size -= sum(map(len, dropped))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
