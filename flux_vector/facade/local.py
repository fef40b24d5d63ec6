"""The in-process backend: a private SQLite store, one worker thread and one lazily built pipeline per process,
behind the same calls as the HTTP backend. ``output`` URLs are ``file://`` URLs of the stored images."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..jobs import DEFAULT_RETENTION_S, FAILED, QUEUED, QueueFull, SQLiteJobStore, Worker
from ..jobs import result_body as _result_body
from ..jobs import status_body as _status_body
from ..jobs.store import CANCELLED_REASON
from ..request import SLUG, OverBudget, RequestError, WorkBudget, parse_request
from .backend import JobHandle
from .errors import SegmindError


class LocalEngine:
    """The in-process queue: a private SQLite store, one worker thread, one lazily built pipeline."""

    def __init__(
        self,
        *,
        model: str | None = None,
        pipeline: Any = None,
        store_dir: str | os.PathLike | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_queue: int | None = None,
        budget: WorkBudget | None = None,
        **pipeline_kwargs: Any,
    ):
        self.max_queue = max_queue
        self._budget = budget  # None: derived from the device's memory once the pipeline is loaded
        self.closed = False
        if store_dir is None:
            root = _inprocess_root()
            _remove_stale(root, retention_s)
            store_dir = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store_dir = Path(store_dir)
        # synchronous=NORMAL: in-process jobs die with the process anyway; only crash-consistency matters here
        self.store = SQLiteJobStore(self.store_dir / "jobs.sqlite3", retention_s=retention_s, synchronous="NORMAL")
        self.store.recover()

        def build():
            from ..pipeline import load_pipeline

            return load_pipeline(model, log=_log, **pipeline_kwargs)

        self.worker = Worker(self.store, pipeline if pipeline is not None else build, log=_log).start()
        # At interpreter exit, stop the worker at its next step: a daemon thread killed inside torch aborts the process.
        atexit.register(self.worker.stop, 60.0)

    def close(self) -> None:
        self.closed = True
        atexit.unregister(self.worker.stop)
        self.worker.stop()
        self.store.close()

    def budget(self) -> WorkBudget:
        """The work budget requests are checked against: ``configure(budget=...)``; else, as ``flux-vector serve``,
        derived from the memory of the pipeline's device once it is loaded (``WorkBudget()``'s defaults before that)."""
        if self._budget is not None:
            return self._budget
        if not self.worker.pipeline_loaded:
            return WorkBudget()
        from ..serving import device_memory_bytes

        self._budget = WorkBudget.for_memory(device_memory_bytes(self.worker.load_pipeline()))
        return self._budget

    def _token_counter(self):
        """The loaded pipeline's T5 tokenizer as a prompt-token counter (None before it is loaded: the prompts'
        grammar is still checked, and they are priced at the padded minimum)."""
        from ..prompt.count import PromptTokenCounter

        if not self.worker.pipeline_loaded:
            return None
        tokenizer = getattr(self.worker.load_pipeline(), "tokenizer_2", None)
        return None if tokenizer is None else PromptTokenCounter(tokenizer)

    # -- SegmindClient backend
    def _enqueue(self, slug: str, params: dict[str, Any]):
        if slug != SLUG:
            raise SegmindError(status=404, detail=f"model {slug!r} not found: flux_vector runs {SLUG!r}")
        from ..prompt.count import request_tokens  # the tokenizers' module: loaded with the first request

        try:
            request = parse_request(params)  # once, here at the edge: the store keeps the parsed request
            self.budget().check(request, request_tokens(request, self._token_counter()))
        except (RequestError, OverBudget) as exc:
            raise SegmindError(status=400, detail=str(exc)) from None
        try:
            job = self.store.submit(slug, request, max_queue=self.max_queue)
        except QueueFull as exc:
            raise SegmindError(status=429, detail=str(exc)) from None
        self.worker.notify()
        return job

    def submit(self, slug: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self._enqueue(slug, params)
        return {
            "request_id": job.id,
            "status": QUEUED,
            "position": job.position,
            "status_url": None,
            "response_url": None,
        }

    @contextlib.contextmanager
    def _open_store(self, request_id: str):
        """Store reads of a job; a 404 SegmindError when configure() shut this engine down meanwhile."""
        try:
            if self.closed:
                raise sqlite3.ProgrammingError("engine closed")
            yield
        except sqlite3.ProgrammingError:
            if not self.closed:
                raise
            raise SegmindError(
                status=404,
                detail=f"request {request_id!r} is no longer known: configure() replaced the in-process engine "
                "while it was waited for (its queued jobs were abandoned)",
            ) from None

    def _job(self, request_id: str):
        with self._open_store(request_id):
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

    def status(self, job: JobHandle) -> dict[str, Any]:
        return _status_body(self._job(job.request_id))

    def result(self, job: JobHandle) -> dict[str, Any]:
        found = self._job(job.request_id)
        return _result_body(found, self._url(found), lambda i: self.store.image(found.id, i))

    def cancel(self, job: JobHandle) -> dict[str, Any]:
        with self._open_store(job.request_id):
            found = self.store.cancel(job.request_id)
        if found is None:
            raise SegmindError(
                status=404, detail=f"request {job.request_id!r} not found: unknown, or its result expired"
            )
        if found.error != CANCELLED_REASON:
            raise SegmindError(
                status=409, detail=f"request {job.request_id!r} is {found.state} already; nothing to cancel"
            )
        return _status_body(found)

    def pause(self, job: JobHandle, seconds: float) -> None:
        with self._open_store(job.request_id):
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
        headers = {
            "Content-Type": job.result["media_type"],
            "X-Request-Id": job.id,
            "X-Image-Count": str(job.result.get("count", 1)),
            "X-Inference-Time": f"{job.result.get('inference_time') or 0:.4f}",
        }
        return httpx.Response(200, content=data, headers=headers, request=request)


_engine: LocalEngine | None = None
_engine_lock = threading.Lock()
_engine_settings: dict[str, Any] = {}


def local_engine() -> LocalEngine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = LocalEngine(**_engine_settings)
        return _engine


def reset_engine(settings: dict[str, Any]) -> None:
    """Shut the current engine down (its queued jobs are abandoned); the next use builds one with ``settings``."""
    global _engine
    with _engine_lock:
        old, _engine = _engine, None
        _engine_settings.clear()
        _engine_settings.update(settings)
    if old is not None:
        old.close()


def _inprocess_root() -> Path:
    from ..cache import default_cache_dir

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
