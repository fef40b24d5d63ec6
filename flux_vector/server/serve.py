"""``flux-vector serve``: open the job store, recover it, load and prepare the model, then serve HTTP.

With ``--store redis://HOST:PORT/DB`` the process is API-only: it loads no model, enqueues into Redis and reads
results from it; ``flux-vector worker`` processes (one per GPU, on any machine) run the jobs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jobs import DEFAULT_RETENTION_S, SQLiteJobStore, Worker
from ..jobs.redis_store import EVICTION_OVERRIDE, is_redis_url
from ..offload import DEFAULT_OFFLOAD
from ..request import SLUG, WorkBudget
from ..serving import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    describe_urls,
    device_memory_bytes,
    prepare_for_serving,
    run_http,
    warn_if_demo_model,
    warn_if_open,
    work_budget,
)

if TYPE_CHECKING:
    from ..prompt.count import PromptTokenCounter

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
    api_keys_file: str | os.PathLike | None = None,
    public_metrics: bool = False,
    max_queue_per_user: int | None = None,
    **model_files: Any,
) -> int:
    """Run the server until interrupted; 0 on a clean stop. Raises on a bad store or missing weights, a
    world-readable or malformed ``api_keys_file``. ``budget``: ``WorkBudget`` settings overriding the defaults derived
    from the device's memory. ``model_files``: a single-file model's ``from_pretrained`` keywords (``base``,
    ``clip_l_file``, ``t5_file``, ``vae_file``, ``comfyui_models``)."""
    from .app import create_app
    from .users import load_users

    def log(message: str) -> None:
        print(f"flux-vector serve: {message}", file=sys.stderr, flush=True)

    if public_url and not public_url.startswith(("http://", "https://")):
        raise ValueError(f"--public-url={public_url!r} is not allowed; it must be an http:// or https:// URL")
    if max_queue < 1:
        raise ValueError(f"--max-queue={max_queue} is not allowed; it must be at least 1")
    if max_queue_per_user is not None and max_queue_per_user < 1:
        raise ValueError(f"--max-queue-per-user={max_queue_per_user} is not allowed; it must be at least 1")
    api_key = os.environ.get(API_KEY_ENV) or None
    users = load_users(api_keys_file, api_key)
    options: dict[str, Any] = {
        "host": host,
        "public_url": public_url,
        "allow_origins": allow_origins,
        "users": users,
        "public_metrics": public_metrics,
        "max_queue_per_user": max_queue_per_user,
    }
    if store is not None and is_redis_url(store):
        from ..models import default_model

        given_model = model  # recorded in every job (workers serving it run it); none given: any model
        # whose tokenizers count the prompts' tokens (said in the banner, after Redis is checked)
        model = model or default_model(log=lambda _message: None)
        limits = work_budget(WorkBudget(), **(budget or {}))
        return serve_api(
            url=str(store),
            port=port,
            max_queue=max_queue,
            retention_s=retention_s,
            log_level=log_level,
            log=log,
            fleet_model=given_model,
            token_model=model,
            lora=lora,
            allow_eviction=allow_eviction,
            app_options={**options, "budget": limits, "token_counter": prompt_token_counter(model, None, log)},
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
        pipe = load_pipeline(
            model, lora=lora, quantize=quantize, offload=offload, device=device, log=log, **model_files
        )
        prepare_for_serving(pipe, fuse=fuse, warmup=warmup, warmup_sizes=warmup_sizes, log=log)
        worker = Worker(jobs, pipe, log=log)
        limits = work_budget(WorkBudget.for_memory(device_memory_bytes(pipe)), **(budget or {}))
        log(describe_budget(limits))
        app = create_app(
            jobs,
            worker,
            slug=SLUG,
            max_queue=max_queue,
            model_name=model,
            budget=limits,
            token_counter=prompt_token_counter(model, pipe, log),
            **options,
        )
        log(
            f"model {model} loaded in {getattr(pipe, 'load_seconds', 0):.1f} s; API key {users.describe()}; "
            f"max queue {max_queue}{describe_user_cap(max_queue_per_user)}; results kept {retention_s:g} s"
        )
        log(describe_urls(host, port, SLUG))
        warn_if_demo_model(model, log)
        warn_if_open(host, users.required, log)
        run_http(app, host=host, port=port, log_level=log_level)
    finally:
        jobs.close()
    return 0


def serve_api(
    *,
    url: str,
    port: int,
    max_queue: int,
    retention_s: float,
    log_level: str,
    log,
    app_options: dict,
    fleet_model: str | None = None,
    token_model: str = "",
    lora: str | None = None,
    allow_eviction: bool = False,
) -> int:
    """An API-only process on a Redis store: no model, no worker. ``app_options``: ``create_app``'s keyword
    arguments (``host`` and ``users`` among them). ``fleet_model``/``lora`` (when given) are recorded in every job it
    accepts: only workers serving them run it."""
    from ..image_metadata import public_name
    from ..jobs.redis_store import Fleet, RedisJobStore
    from .app import create_app

    host, users = app_options["host"], app_options["users"]
    fleet = Fleet(model=public_name(fleet_model) or "", lora=public_name(lora) or "")
    jobs = RedisJobStore.from_url(url, retention_s=retention_s, log=log, fleet=fleet)
    try:
        jobs.verify("api", allow_eviction=allow_eviction)
        if allow_eviction:
            log(f"Redis eviction allowed ({EVICTION_OVERRIDE}): jobs and images may vanish when Redis fills up")
        workers = jobs.workers()
        log(
            f"store {jobs.url}: {jobs.counts()['QUEUED']} queued job(s), {len(workers)} live worker(s); API only "
            f"(run the model with: flux-vector worker --store {jobs.url} --model ...); API key {users.describe()}; "
            f"max queue {max_queue}{describe_user_cap(app_options.get('max_queue_per_user'))}; "
            f"results kept {retention_s:g} s"
        )
        log(
            describe_budget(app_options["budget"])
            + (f" (counted with {token_model}'s tokenizers)" if token_model else "")
        )
        log(describe_urls(host, port, SLUG))
        warn_if_open(host, users.required, log)
        app = create_app(jobs, None, slug=SLUG, max_queue=max_queue, model_name=fleet.model, log=log, **app_options)
        run_http(app, host=host, port=port, log_level=log_level)
    finally:
        jobs.close()
    return 0


def describe_budget(limits: WorkBudget) -> str:
    return (
        f"work budget: {limits.max_image_pixels:,} pixels per image, {limits.max_batch_pixels:,} per batch, "
        f"{limits.max_work:,} token-calls per request, prompts of at most {limits.max_prompt_tokens:,} T5 tokens"
    )


def describe_user_cap(max_queue_per_user: int | None) -> str:
    return "" if max_queue_per_user is None else f" ({max_queue_per_user} per user)"


def prompt_token_counter(model: str, pipe: Any, log: Callable[[str], None]) -> PromptTokenCounter | None:
    """What counts prompts' T5 tokens at submit: the loaded pipeline's tokenizer, else the tokenizer files of the
    model's folder (an API-only process loads no weights). None, with a warning, when neither exists: prompts are then
    priced at the padded minimum and ``--max-prompt-tokens`` cannot be enforced."""
    from ..prompt.count import PromptTokenCounter

    tokenizer = getattr(pipe, "tokenizer_2", None)
    if tokenizer is not None:
        return PromptTokenCounter(tokenizer)
    try:
        from ..models import resolve_model
        from ..single_file.load import shipped_tokenizers_for

        return PromptTokenCounter.from_folder(shipped_tokenizers_for(model) or resolve_model(model))
    except Exception as exc:
        log(
            f"warning: no T5 tokenizer found for {model} ({type(exc).__name__}: {str(exc)[:200]}); prompts are priced "
            "at 256 tokens and --max-prompt-tokens is not enforced"
        )
        return None
