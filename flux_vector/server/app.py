"""The HTTP API: Segmind's Simple_Vector_Flux endpoints over the job queue, for the unchanged ``segmind`` SDK.

``create_app(store, worker, ...)`` builds the FastAPI app from its parts: the shared state (``state.py``), the
error handlers (``errors.py``), the Segmind routes (``routes_api.py``), the operator routes (``routes_ops.py``) and
the playground (``playground.py``); the app starts and stops the worker with its lifespan.
With a shared store (``RedisJobStore``) ``worker`` is None: the process only enqueues and reads, GPU workers run
elsewhere (``flux-vector worker``), and ``/v1`` waits are woken by the store's notifications.

- ``POST /v1/{slug}``: blocks until the job finishes; the image bytes (Content-Type per ``output_format``), or the
  final JSON body with the image in base64 when ``base64`` is true. A job that fails is a 500 with its ``error``.
- ``POST /v2/{slug}``: enqueue; ``request_id`` and absolute ``status_url`` / ``response_url``.
- ``GET /v2/requests/{id}/status`` and ``GET /v2/requests/{id}``: FAILED is served as 422 with ``error``; a job not
  finished yet gets 202 and its status from the result URL; unknown or expired ids, and another user's, are 404.
- ``GET /v2/requests/{id}/images/{n}.{ext}``: an image (the ``output`` URL). Like a hosted media link it needs no
  API key: the 128-bit random request id in it is the capability.
- ``GET /healthz`` (liveness for anyone; this process and, on a shared store, the live workers with a key),
  ``GET /metrics`` (Prometheus text; a key unless ``public_metrics``), OpenAPI at ``/docs``.

Users (``users.py``): every key belongs to a user; a job belongs to the user who submitted it, and the worker takes
the users' jobs in turns (the stores' fair share).

Every error is a JSON object with a human-readable ``error`` (the README's error table): 400 (an invalid parameter
naming the field, the value and what is allowed; malformed, over-deep or empty JSON; a duplicate key; a lone
surrogate; over the work budget; a foreign ``Host``), 401 (the key missing or wrong when keys are configured),
403 (a foreign ``Origin``), 404 (unknown model slug, unknown or expired request id), 409 (cancelling a finished
request), 413 (body over 1 MiB, refused while it streams; the connection is closed), 415 (a POST body not
``application/json``), 429 (the queue holds ``max_queue`` jobs, or the user ``max_queue_per_user``), 503 with
``Retry-After`` (the store is unreachable; shutting down while a ``/v1`` caller waits). A bad value is quoted to
at most 200 characters.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..jobs import QUEUED, JobStore, Worker
from ..jobs.store import PROCESSING
from ..request import SLUG, WorkBudget
from ..serving import DEFAULT_HOST, DEFAULT_MAX_QUEUE
from ..version import __version__
from . import routes_api, routes_ops
from .browser import add_browser_safety
from .errors import ApiError, install_error_handlers
from .playground import add_playground
from .routes_api import IMAGE_HEADERS
from .state import MAX_BODY_BYTES, ServerState
from .users import Users

__all__ = ["IMAGE_HEADERS", "MAX_BODY_BYTES", "ApiError", "create_app"]


def create_app(
    store: JobStore,
    worker: Worker | None,
    *,
    slug: str = SLUG,
    api_key: str | None = None,
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    model_name: str = "",
    manage_worker: bool = True,
    log: Callable[[str], None] | None = None,
    host: str = DEFAULT_HOST,
    public_url: str = "",
    allow_origins: Sequence[str] = (),
    budget: WorkBudget | None = None,
    users: Users | None = None,
    public_metrics: bool = False,
    max_queue_per_user: int | None = None,
    token_counter: Any = None,
) -> FastAPI:
    """The app. ``manage_worker``: start the worker at startup and stop it (requeueing its job) at shutdown.
    ``worker=None``: an API-only process on a shared store (the workers run elsewhere). ``host`` (the address it
    listens on) and ``public_url`` (the URL clients reach it by; it also makes ``status_url`` and the image URLs)
    are the ``Host`` names it answers; ``allow_origins``: web origins besides its own that may call it. ``users``:
    the keys and their users (``api_key`` alone: the one user ``default``); ``token_counter``: a
    ``prompt.count.PromptTokenCounter`` pricing prompts by their T5 tokens (None: at the padded minimum)."""
    say = log or getattr(worker, "log", None) or (lambda message: print(message, file=sys.stderr, flush=True))
    state = ServerState(
        store,
        worker,
        slug,
        api_key,
        max_queue,
        model_name,
        say,
        public_url.rstrip("/"),
        budget or WorkBudget(),
        users=users or Users(),
        public_metrics=public_metrics,
        max_queue_per_user=max_queue_per_user,
        token_counter=token_counter,
    )
    manage_worker = manage_worker and worker is not None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_worker and worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is None:
                say("shut down cleanly (API process; queued jobs stay in the store)")
            elif manage_worker:
                stopped = await run_in_threadpool(worker.stop)
                counts = await run_in_threadpool(store.counts)
                # a job the worker could not stop is still PROCESSING: the next start's recovery runs it again
                waiting = counts[QUEUED] + (0 if stopped else counts[PROCESSING])
                worker.log(
                    f"shut down {'cleanly' if stopped else 'with the worker still busy'}; "
                    f"{waiting} queued job(s) will run at the next start"
                )

    app = FastAPI(
        title="flux_vector",
        version=__version__,
        description=f"FLUX.1-dev + the Simple Vector LoRA, serving Segmind's {slug!r} API locally.",
        lifespan=lifespan,
        docs_url=None,  # served from local files by add_browser_safety, never from a CDN
        redoc_url=None,
    )
    app.state.flux = state
    app.state.store, app.state.worker = store, worker
    install_error_handlers(app, tuple(store.unavailable_errors))
    app.state.on_exit_signal = state.waiters.shut_down  # serving.run_http: answer /v1 waiters at SIGTERM
    app.include_router(routes_api.router)
    add_playground(app, slug=slug, auth=state.users.required, model_name=model_name)  # GET /: the playground page
    app.include_router(routes_ops.router)
    add_browser_safety(app, bind_host=host, public_url=public_url, allow_origins=list(allow_origins))
    return app
