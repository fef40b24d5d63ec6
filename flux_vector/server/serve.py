"""``flux-vector serve``: open the job store, recover it, load and prepare the model, then serve HTTP.

With ``--store redis://HOST:PORT/DB`` the process is API-only: it loads no model, enqueues into Redis and reads
results from it; ``flux-vector worker`` processes (one per GPU, on any machine) run the jobs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..jobs import DEFAULT_RETENTION_S, SQLiteJobStore, Worker
from ..jobs.redis_store import EVICTION_OVERRIDE, is_redis_url
from ..offload import DEFAULT_OFFLOAD
from ..request import SLUG, WorkBudget
from ..serving import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    describe_api_key,
    describe_urls,
    device_memory_bytes,
    prepare_for_serving,
    run_http,
    warn_if_demo_model,
    warn_if_open,
    work_budget,
)

DEFAULT_LOG_LEVEL = "info"


def default_store_path() -> Path:
    from ..cache import default_cache_dir

    return default_cache_dir() / "server" / "jobs.sqlite3"


def serve(
    *,
    model: str | None,
    lora: str | None = None,
    quantize: str | None = None,
    offload: str = DEFAULT_OFFLOAD,
    device: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    store: str | os.PathLike | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    retention_s: float = DEFAULT_RETENTION_S,
    log_level: str = DEFAULT_LOG_LEVEL,
    fuse: bool = True,
    warmup: bool = True,
    warmup_sizes: tuple[tuple[int, int], ...] = (),
    public_url: str = "",
    allow_origins: tuple[str, ...] = (),
    budget: dict[str, int | None] | None = None,
    allow_eviction: bool = False,
) -> int:
    """Run the server until interrupted; 0 on a clean stop. Raises on a bad store or missing weights. ``budget``:
    ``WorkBudget`` settings overriding the defaults derived from the device's memory."""
    from .app import create_app

    def log(message: str) -> None:
        print(f"flux-vector serve: {message}", file=sys.stderr, flush=True)

    if public_url and not public_url.startswith(("http://", "https://")):
        raise ValueError(f"--public-url={public_url!r} is not allowed; it must be an http:// or https:// URL")
    if max_queue < 1:
        raise ValueError(f"--max-queue={max_queue} is not allowed; it must be at least 1")
    api_key = os.environ.get(API_KEY_ENV) or None
    if store is not None and is_redis_url(store):
        return serve_api(
            url=str(store),
            host=host,
            port=port,
            max_queue=max_queue,
            retention_s=retention_s,
            log_level=log_level,
            api_key=api_key,
            log=log,
            model=model,
            lora=lora,
            allow_eviction=allow_eviction,
            browser={
                "host": host,
                "public_url": public_url,
                "allow_origins": allow_origins,
                "budget": work_budget(WorkBudget(), **(budget or {})),
            },
        )

    from ..models import default_model
    from ..pipeline import load_pipeline

    path = Path(store) if store is not None else default_store_path()
    jobs = SQLiteJobStore(path, retention_s=retention_s)
    try:
        recovery = jobs.recover()
        log(
            f"store {path}: {recovery.queued} queued job(s) to run"
            + (f", {len(recovery.requeued)} interrupted job(s) requeued" if recovery.requeued else "")
            + (f", {len(recovery.failed)} interrupted too often and FAILED" if recovery.failed else "")
        )
        model = model or default_model(log=log)
        pipe = load_pipeline(model, lora=lora, quantize=quantize, offload=offload, device=device, log=log)
        prepare_for_serving(pipe, fuse=fuse, warmup=warmup, warmup_sizes=warmup_sizes, log=log)
        worker = Worker(jobs, pipe, log=log)
        limits = work_budget(WorkBudget.for_memory(device_memory_bytes(pipe)), **(budget or {}))
        log(
            f"work budget: {limits.max_image_pixels:,} pixels per image, {limits.max_batch_pixels:,} per batch, "
            f"{limits.max_step_pixels:,} pixel-steps per request"
        )
        app = create_app(
            jobs,
            worker,
            slug=SLUG,
            api_key=api_key,
            max_queue=max_queue,
            model_name=model,
            host=host,
            public_url=public_url,
            allow_origins=allow_origins,
            budget=limits,
        )
        log(
            f"model {model} loaded in {getattr(pipe, 'load_seconds', 0):.1f} s; API key {describe_api_key(api_key)}; "
            f"max queue {max_queue}; results kept {retention_s:g} s"
        )
        log(describe_urls(host, port, SLUG))
        warn_if_demo_model(model, log)
        warn_if_open(host, api_key, log)
        run_http(app, host=host, port=port, log_level=log_level)
    finally:
        jobs.close()
    return 0


def serve_api(
    *,
    url: str,
    host: str,
    port: int,
    max_queue: int,
    retention_s: float,
    log_level: str,
    api_key: str | None,
    log,
    browser: dict | None = None,
    model: str | None = None,
    lora: str | None = None,
    allow_eviction: bool = False,
) -> int:
    """An API-only process on a Redis store: no model, no worker. ``model``/``lora`` (when given) are recorded in
    every job it accepts: only workers serving them run it."""
    from ..image_metadata import public_name
    from ..jobs.redis_store import Fleet, RedisJobStore
    from .app import create_app

    fleet = Fleet(model=public_name(model) or "", lora=public_name(lora) or "")
    jobs = RedisJobStore.from_url(url, retention_s=retention_s, log=log, fleet=fleet)
    try:
        jobs.verify("api", allow_eviction=allow_eviction)
        if allow_eviction:
            log(f"Redis eviction allowed ({EVICTION_OVERRIDE}): jobs and images may vanish when Redis fills up")
        workers = jobs.workers()
        log(
            f"store {jobs.url}: {jobs.counts()['QUEUED']} queued job(s), {len(workers)} live worker(s); API only "
            f"(run the model with: flux-vector worker --store {jobs.url} --model ...); API key "
            f"{describe_api_key(api_key)}; max queue {max_queue}; results kept {retention_s:g} s"
        )
        log(describe_urls(host, port, SLUG))
        warn_if_open(host, api_key, log)
        app = create_app(
            jobs,
            None,
            slug=SLUG,
            api_key=api_key,
            max_queue=max_queue,
            model_name=fleet.model,
            log=log,
            **(browser or {}),
        )
        run_http(app, host=host, port=port, log_level=log_level)
    finally:
        jobs.close()
    return 0
