"""``segmind``-shaped entry points, so that ``import flux_vector as segmind`` runs an existing script unchanged.

The names and signatures are those of the ``segmind`` package (1.3.0): ``run``, ``run_sync``, ``submit_async``,
``SegmindClient``, ``AsyncJob``, ``SegmindError``, ``InferenceFailed``, ``InferenceTimeout``.

- ``SegmindClient()`` without ``base_url`` (and the module-level functions) run **in-process**: jobs go through the
  same queue and worker as the server (``flux_vector.jobs``), with a private store under
  ``~/.cache/flux_vector/inprocess/`` and one pipeline per process, built on the first job from ``$FLUX_VECTOR_MODEL``
  (else FLUX.1-dev when cached, else the tiny demo, as ``flux-vector generate`` chooses). ``output`` is a ``file://``
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

import atexit
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .jobs import COMPLETED, DEFAULT_RETENTION_S, FAILED, QUEUED, QueueFull, SQLiteJobStore, Worker
from .jobs import result_body as _result_body
from .jobs import status_body as _status_body
from .request import SLUG, RequestError, parse_request

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_POLL_TIMEOUT_S = 600.0
_TERMINAL_STATES = (COMPLETED, FAILED)


# ----------------------------------------------------------------------------------------------- errors
class SegmindError(Exception):
    """Base class of every error (as ``segmind.SegmindError``): ``status`` (HTTP code or None) and ``detail``."""

    title: str | None = None
    status: int | None = None
    detail: str | None = None

    def __init__(self, status: int | None = None, detail: str | None = None) -> None:
        self.status = status
        self.detail = detail

    @classmethod
    def from_response(cls, response) -> SegmindError:
        try:
            data = response.json()
            if not isinstance(data, dict):
                data = {}
        except ValueError:
            data = {}
        return cls(detail=data.get("error"), status=response.status_code)

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail}

    def __str__(self) -> str:
        return "\n-----SegmindError Details-----\n" + "\n".join(f"{k}: {v}" for k, v in self.to_dict().items())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(status={self.status}, detail={self.detail})"


class InferenceFailed(SegmindError):
    """The request reached FAILED: the error in ``detail``, the status body in ``status_body``."""

    status_body: dict[str, Any]

    def __init__(self, detail: str | None, status_body: dict[str, Any]) -> None:
        super().__init__(status=None, detail=detail)
        self.status_body = status_body


class InferenceTimeout(SegmindError):
    """``wait`` passed its ``timeout`` before a terminal state; the job may still finish."""

    request_id: str
    elapsed_s: float

    def __init__(self, request_id: str, elapsed_s: float) -> None:
        super().__init__(status=None, detail=f"v2 request {request_id!r} did not complete within {elapsed_s:.1f}s")
        self.request_id = request_id
        self.elapsed_s = elapsed_s


def _raise_for_status(response) -> None:
    if not (200 <= response.status_code < 400):
        raise SegmindError.from_response(response)


# ----------------------------------------------------------------------------------------------- AsyncJob
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

    def wait(
        self, timeout: float = DEFAULT_POLL_TIMEOUT_S, interval: float = DEFAULT_POLL_INTERVAL_S
    ) -> dict[str, Any]:
        """Block until COMPLETED (return ``result()``) or FAILED (raise ``InferenceFailed``); ``InferenceTimeout`` past
        ``timeout`` seconds. Polls every ``interval`` seconds (in-process it also wakes the moment the job ends)."""
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


# ----------------------------------------------------------------------------------------------- client
class SegmindClient:
    """``SegmindClient(api_key=None, base_url=None, timeout=30.0)``: in-process without ``base_url``, else HTTP."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0):
        self.api_key = api_key or os.getenv("SEGMIND_API_KEY")
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self._http = _HttpBackend(self) if self.base_url else None

    @property
    def _backend(self) -> _HttpBackend | _LocalEngine:
        # in-process clients share the process's one engine (built on first use, replaced by configure())
        return self._http if self._http is not None else _local_engine()

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
            raise SegmindError(status=None, detail="v2 submit returned 2xx but is missing request_id / status_url / "
                                                   f"response_url; got keys={sorted(body.keys())}")  # fmt: skip
        return AsyncJob(request_id=request_id, status_url=status_url, response_url=response_url,
                        submit_response=body, _client=self)  # fmt: skip

    def __repr__(self) -> str:
        return f"SegmindClient(base_url={self.base_url!r})" if self.base_url else "SegmindClient(in-process)"


class _HttpBackend:
    """What the segmind SDK does on the wire (see spec/SEGMIND_SDK_WIRE.md)."""

    def __init__(self, client: SegmindClient):
        import httpx

        headers = {"User-Agent": f"flux-vector/{__version__} (segmind-python-sdk compatible)", "X-Initiator": "SDK-PY"}
        if client.api_key:
            headers["x-api-key"] = client.api_key
        self.base_url = client.base_url
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(client.timeout, connect=5.0),
                                 base_url=client.base_url)  # fmt: skip

    def v2_base(self) -> str:
        base = self.base_url.rstrip("/")
        if "/" in base and base.rsplit("/", 1)[1].startswith("v"):
            base = base.rsplit("/", 1)[0]
        return base + "/v2"

    def run_sync(self, slug: str, params: dict[str, Any]):
        response = self.http.post(f"/{slug}", json=params)
        _raise_for_status(response)
        return response

    def submit(self, slug: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self.http.request("POST", self.v2_base() + "/" + slug.lstrip("/"), json=params)
        _raise_for_status(response)
        body = response.json()
        if not isinstance(body, dict):
            raise SegmindError(status=response.status_code, detail="v2 submit answered something not a JSON object")
        return body

    def _fetch(self, url: str) -> dict[str, Any]:
        response = self.http.request("GET", url)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("status") in _TERMINAL_STATES:
            return body
        if response.is_success:
            return body if isinstance(body, dict) else {}
        _raise_for_status(response)
        return body

    def status(self, job: AsyncJob) -> dict[str, Any]:
        return self._fetch(job.status_url)

    def result(self, job: AsyncJob) -> dict[str, Any]:
        return self._fetch(job.response_url)

    def pause(self, job: AsyncJob, seconds: float) -> None:
        time.sleep(seconds)


# ----------------------------------------------------------------------------------------------- in-process
class _LocalEngine:
    """The in-process queue: a private SQLite store, one worker thread, one lazily built pipeline."""

    def __init__(
        self,
        *,
        model: str | None = None,
        pipeline: Any = None,
        store_dir: str | os.PathLike | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_queue: int | None = None,
        **pipeline_kwargs: Any,
    ):
        self.max_queue = max_queue
        if store_dir is None:
            root = _inprocess_root()
            _remove_stale(root, retention_s)
            store_dir = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store_dir = Path(store_dir)
        # synchronous=NORMAL: in-process jobs die with the process anyway; only crash-consistency matters here
        self.store = SQLiteJobStore(self.store_dir / "jobs.sqlite3", retention_s=retention_s, synchronous="NORMAL")
        self.store.recover()

        def build():
            from .models import load_pipeline

            return load_pipeline(model, log=_log, **pipeline_kwargs)

        self.worker = Worker(self.store, pipeline if pipeline is not None else build, log=_log).start()
        # At interpreter exit, stop the worker at its next step: a daemon thread killed inside torch aborts the process.
        atexit.register(self.worker.stop, 60.0)

    def close(self) -> None:
        atexit.unregister(self.worker.stop)
        self.worker.stop()
        self.store.close()

    # -- SegmindClient backend
    def _enqueue(self, slug: str, params: dict[str, Any]):
        if slug != SLUG:
            raise SegmindError(status=404, detail=f"model {slug!r} not found: flux_vector runs {SLUG!r}")
        try:
            parse_request(params)
        except RequestError as exc:
            raise SegmindError(status=400, detail=str(exc)) from None
        try:
            job = self.store.submit(slug, params, max_queue=self.max_queue)
        except QueueFull as exc:
            raise SegmindError(status=429, detail=str(exc)) from None
        self.worker.notify()
        return job

    def submit(self, slug: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self._enqueue(slug, params)
        return {"request_id": job.id, "status": QUEUED, "position": job.position, "status_url": None,
                "response_url": None}  # fmt: skip

    def _job(self, request_id: str):
        job = self.store.get(request_id)
        if job is None:
            raise SegmindError(status=404, detail=f"request {request_id!r} not found: unknown, or its result expired")
        return job

    def _url(self, job):
        def file_url(index: int) -> str:
            path = self.store.image_file(job.id, index)
            if path is None:  # expired since the job was read
                detail = f"image {index} of request {job.id!r} is not a file here: expired, or the store keeps no files"
                raise SegmindError(status=404, detail=detail)
            return path.resolve().as_uri()

        return file_url

    def status(self, job: AsyncJob) -> dict[str, Any]:
        return _status_body(self._job(job.request_id))

    def result(self, job: AsyncJob) -> dict[str, Any]:
        found = self._job(job.request_id)
        return _result_body(found, self._url(found), lambda i: self.store.image(found.id, i))

    def pause(self, job: AsyncJob, seconds: float) -> None:
        self.worker.wait(job.request_id, timeout=seconds)

    def run_sync(self, slug: str, params: dict[str, Any]):
        import httpx

        job = self._enqueue(slug, params)
        job = self.worker.wait(job.id)
        request = httpx.Request("POST", f"http://in-process/v1/{slug}")
        if job is None:
            raise SegmindError(status=404, detail="the request disappeared before it finished")
        if job.state == FAILED:
            raise SegmindError(status=500, detail=job.error)
        if job.result.get("echo", {}).get("base64"):
            body = _result_body(job, self._url(job), lambda i: self.store.image(job.id, i))
            return httpx.Response(200, json=body, request=request)
        data = self.store.image(job.id, 0) or b""
        headers = {"Content-Type": job.result["media_type"], "X-Request-Id": job.id,
                   "X-Image-Count": str(job.result.get("count", 1)),
                   "X-Inference-Time": f"{job.result.get('inference_time') or 0:.4f}"}  # fmt: skip
        return httpx.Response(200, content=data, headers=headers, request=request)


_engine: _LocalEngine | None = None
_engine_lock = threading.Lock()
_engine_settings: dict[str, Any] = {}


def _local_engine() -> _LocalEngine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _LocalEngine(**_engine_settings)
        return _engine


def configure(
    *,
    model: str | None = None,
    pipeline: Any = None,
    store_dir: str | os.PathLike | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
    max_queue: int | None = None,
    **pipeline_kwargs: Any,
) -> None:
    """Set up the in-process engine (before or between uses): ``model`` (as ``--model``) with ``from_pretrained``
    keyword arguments, or a ready ``pipeline``; where the store lives; retention; a queue bound. The previous engine
    is shut down: its queued jobs are abandoned and its request ids are no longer known."""
    global _engine, _default_client
    settings = dict(model=model, pipeline=pipeline, store_dir=store_dir, retention_s=retention_s, max_queue=max_queue,
                    **pipeline_kwargs)  # fmt: skip
    with _engine_lock:
        old, _engine = _engine, None
        _engine_settings.clear()
        _engine_settings.update(settings)
        _default_client = None
    if old is not None:
        old.close()


def _inprocess_root() -> Path:
    from .models import default_cache_dir

    return default_cache_dir() / "inprocess"


def _remove_stale(root: Path, retention_s: float) -> None:
    """Store folders of processes that have ended, once their results would have expired anyway."""
    if not root.is_dir():
        return
    cutoff = time.time() - retention_s
    for folder in root.iterdir():
        lock = folder / "jobs.sqlite3.lock"
        try:
            newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
            if newest >= cutoff or not _lock_is_free(lock):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _lock_is_free(path: Path) -> bool:
    if not path.exists():
        return True
    try:
        import fcntl
    except ImportError:
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


def _log(message: str) -> None:
    print(f"flux_vector: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- module level
_default_client: SegmindClient | None = None


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
