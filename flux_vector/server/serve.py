"""``flux-vector serve``: open the job store, recover it, load the model, then serve HTTP with uvicorn.

With ``--store redis://HOST:PORT/DB`` the process is API-only: it loads no model, enqueues into Redis and reads
results from it; ``flux-vector worker`` processes (one per GPU, on any machine) run the jobs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..jobs import DEFAULT_RETENTION_S, SQLiteJobStore, Worker
from ..jobs.redis_store import is_redis_url
from ..request import SLUG

API_KEY_ENV = "FLUX_VECTOR_API_KEY"
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 100


def default_store_path() -> Path:
    from ..tiny import default_cache_dir

    return default_cache_dir() / "server" / "jobs.sqlite3"


def serve(
    *,
    model: str,
    lora: str | None = None,
    quantize: str | None = None,
    offload: str = "auto",
    device: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    store: str | os.PathLike | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    retention_s: float = DEFAULT_RETENTION_S,
    log_level: str = "info",
) -> int:
    """Run the server until interrupted; 0 on a clean stop. Raises on a bad store or missing weights."""
    import uvicorn

    from .app import create_app

    def log(message: str) -> None:
        print(f"flux-vector serve: {message}", file=sys.stderr, flush=True)

    if max_queue < 1:
        raise ValueError(f"--max-queue={max_queue} is not allowed; it must be at least 1")
    api_key = os.environ.get(API_KEY_ENV) or None
    if store is not None and is_redis_url(store):
        return serve_api(url=str(store), host=host, port=port, max_queue=max_queue, retention_s=retention_s,
                         log_level=log_level, api_key=api_key, log=log)  # fmt: skip

    from ..pipeline import DEFAULT_LORA, FluxVectorPipeline

    path = Path(store) if store is not None else default_store_path()
    jobs = SQLiteJobStore(path, retention_s=retention_s)
    try:
        recovery = jobs.recover()
        log(f"store {path}: {recovery.queued} queued job(s) to run"
            + (f", {len(recovery.requeued)} interrupted job(s) requeued" if recovery.requeued else "")
            + (f", {len(recovery.failed)} interrupted too often and FAILED" if recovery.failed else ""))  # fmt: skip
        pipe = FluxVectorPipeline.from_pretrained(
            model, lora=DEFAULT_LORA if lora is None else lora, quantize=quantize, offload=offload, device=device,
            log=log,
        )  # fmt: skip
        worker = Worker(jobs, pipe, log=log)
        if worker.test_faults:
            log("FLUX_VECTOR_TEST_FAULTS=1: prompts with [[fault:...]] markers simulate model errors (tests only)")
        app = create_app(jobs, worker, slug=SLUG, api_key=api_key, max_queue=max_queue, model_name=model)
        log(f"model {model} loaded in {getattr(pipe, 'load_seconds', 0):.1f} s; API key "
            f"{'required (x-api-key)' if api_key else f'not required (set {API_KEY_ENV} to require one)'}; "
            f"max queue {max_queue}; results kept {retention_s:g} s; http://{host}:{port}/v1/{SLUG}")  # fmt: skip
        if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
            log(f"warning: listening on {host} without an API key: anyone who can reach the port can queue jobs "
                f"(set {API_KEY_ENV})")  # fmt: skip
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
        uvicorn.Server(config).run()
    finally:
        jobs.close()
    return 0


def serve_api(*, url: str, host: str, port: int, max_queue: int, retention_s: float, log_level: str,
              api_key: str | None, log) -> int:  # fmt: skip
    """An API-only process on a Redis store: no model, no worker."""
    import uvicorn

    from ..jobs.redis_store import RedisJobStore
    from .app import create_app

    jobs = RedisJobStore.from_url(url, retention_s=retention_s, log=log)
    try:
        workers = jobs.workers()
        log(f"store {jobs.url}: {jobs.counts()['QUEUED']} queued job(s), {len(workers)} live worker(s); API only "
            f"(run the model with: flux-vector worker --store {jobs.url} --model ...); API key "
            f"{'required (x-api-key)' if api_key else f'not required (set {API_KEY_ENV} to require one)'}; "
            f"max queue {max_queue}; results kept {retention_s:g} s; http://{host}:{port}/v1/{SLUG}")  # fmt: skip
        if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
            log(f"warning: listening on {host} without an API key: anyone who can reach the port can queue jobs "
                f"(set {API_KEY_ENV})")  # fmt: skip
        app = create_app(jobs, None, slug=SLUG, api_key=api_key, max_queue=max_queue, model_name="", log=log)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
        uvicorn.Server(config).run()
    finally:
        jobs.close()
    return 0
