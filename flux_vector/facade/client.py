"""``SegmindClient`` and ``AsyncJob``, as the ``segmind`` SDK has them: a client with a backend (HTTP with a
``base_url``, else the process's in-process engine) and the job handle that polls it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..jobs import COMPLETED, FAILED
from .backend import Backend
from .errors import InferenceFailed, InferenceTimeout, SegmindError
from .http import HttpBackend
from .local import local_engine

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_POLL_TIMEOUT_S = 600.0
MIN_POLL_INTERVAL_S = 0.05  # wait(interval=0) would poll the status as fast as the CPU allows


@dataclass
class AsyncJob:
    """A submitted request (as ``segmind.AsyncJob``). In-process, ``status_url``/``response_url`` are None."""

    request_id: str
    status_url: str | None
    response_url: str | None
    submit_response: dict[str, Any]
    _client: SegmindClient = field(repr=False)

    def status(self) -> dict[str, Any]:
        """The status body now: ``status`` is QUEUED, PROCESSING, COMPLETED or FAILED (then with ``error``)."""
        return self._client._backend.status(self)

    def result(self) -> dict[str, Any]:
        """The final body (meaningful once COMPLETED; a FAILED body is returned too)."""
        return self._client._backend.result(self)

    def cancel(self) -> dict[str, Any]:
        """Cancel the request: queued, it never runs; running, it stops at its next step. Its status body after
        (FAILED, ``error`` saying it was cancelled); ``SegmindError`` 409 when it had finished already."""
        return self._client._backend.cancel(self)

    def wait(
        self, timeout: float = DEFAULT_POLL_TIMEOUT_S, interval: float = DEFAULT_POLL_INTERVAL_S
    ) -> dict[str, Any]:
        """Block until COMPLETED (return ``result()``) or FAILED (raise ``InferenceFailed``); ``InferenceTimeout`` past
        ``timeout`` seconds. Polls every ``interval`` seconds, at least ``MIN_POLL_INTERVAL_S`` (in-process it also
        wakes the moment the job ends)."""
        interval = interval if interval >= MIN_POLL_INTERVAL_S else MIN_POLL_INTERVAL_S  # NaN too
        start = time.monotonic()
        deadline = start + timeout
        while True:
            status_body = self.status()
            state = status_body.get("status")
            if state == COMPLETED:
                return self.result()
            if state == FAILED:
                raise InferenceFailed(detail=status_body.get("error"), status_body=status_body)
            now = time.monotonic()
            if now >= deadline:
                raise InferenceTimeout(request_id=self.request_id, elapsed_s=now - start)
            self._client._backend.pause(self, max(0.0, min(interval, deadline - now)))


class SegmindClient:
    """``SegmindClient(api_key=None, base_url=None, timeout=30.0)``: in-process without ``base_url``, else HTTP."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0):
        self.api_key = api_key or os.getenv("SEGMIND_API_KEY")
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self._http = HttpBackend(self.base_url, api_key=self.api_key, timeout=timeout) if self.base_url else None

    @property
    def _backend(self) -> Backend:
        # in-process clients share the process's one engine (built on first use, replaced by configure())
        return self._http if self._http is not None else local_engine()

    @property
    def _client(self):
        """The ``httpx.Client`` (HTTP mode), as the SDK names it."""
        if self._http is None:
            raise AttributeError("an in-process SegmindClient has no HTTP client")
        return self._http.http

    def run(self, slug: str, **params) -> dict:
        """Submit and wait (``submit_async(slug, **params).wait()``); every keyword is a model parameter."""
        return self.submit_async(slug, **params).wait()

    def run_sync(self, slug: str, **params):
        """One blocking call: an ``httpx.Response`` with the image bytes (or JSON when ``base64=True``)."""
        return self._backend.run_sync(slug, params)

    def submit_async(self, slug: str, **params) -> AsyncJob:
        """Enqueue; the returned ``AsyncJob`` has ``request_id`` at once."""
        body = self._backend.submit(slug, params)
        request_id, status_url, response_url = body.get("request_id"), body.get("status_url"), body.get("response_url")
        if not request_id or (self.base_url and not (status_url and response_url)):
            raise SegmindError(
                status=None,
                detail="v2 submit returned 2xx but is missing request_id / status_url / "
                f"response_url; got keys={sorted(body.keys())}",
            )
        return AsyncJob(
            request_id=request_id, status_url=status_url, response_url=response_url, submit_response=body, _client=self
        )

    def __repr__(self) -> str:
        return f"SegmindClient(base_url={self.base_url!r})" if self.base_url else "SegmindClient(in-process)"
