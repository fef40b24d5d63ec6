"""The HTTP API: Segmind's Simple_Vector_Flux endpoints over the job queue, for the unchanged ``segmind`` SDK.

``create_app(store, worker, ...)`` builds the FastAPI app; the app starts and stops the worker with its lifespan.
With a shared store (``RedisJobStore``) ``worker`` is None: the process only enqueues and reads, GPU workers run
elsewhere (``flux-vector worker``), and ``/v1`` waits are woken by the store's notifications.

- ``POST /v1/{slug}``: blocks until the job finishes; the image bytes (Content-Type per ``output_format``), or the
  final JSON body with the image in base64 when ``base64`` is true. A job that fails is a 500 with its ``error``.
- ``POST /v2/{slug}``: enqueue; ``request_id`` and absolute ``status_url`` / ``response_url``.
- ``GET /v2/requests/{id}/status`` and ``GET /v2/requests/{id}``: FAILED is served as 422 with ``error``; a job not
  finished yet gets 202 and its status from the result URL; unknown or expired ids are 404.
- ``GET /v2/requests/{id}/images/{n}.{ext}``: an image (the ``output`` URL). Like a hosted media link it needs no
  API key: the 128-bit random request id in it is the capability.
- ``GET /healthz`` (this process and, on a shared store, the live workers), ``GET /metrics`` (Prometheus text),
  OpenAPI at ``/docs``.

Every error is a JSON object with a human-readable ``error``: 400 (any invalid parameter, naming the field, the value
and what is allowed; malformed JSON; a body that is not an object), 401 (``x-api-key`` missing or wrong when an API
key is configured), 404 (unknown model slug, unknown or expired request id), 413 (body over 1 MiB), 429 (the queue
holds ``max_queue`` jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..jobs import COMPLETED, FAILED, QUEUED, Job, JobStore, QueueFull, Worker, result_body, status_body
from ..jobs.metrics import JobMetrics
from ..request import SLUG, GenerationRequest, RequestError, parse_request
from .playground import add_playground

MAX_BODY_BYTES = 1 << 20
# Every image response: never sniffed as another type, and opened directly (an SVG is a document) it may load and run
# nothing. Our SVGs hold only paths (flux_vector/vectorize.py); this is the second wall.
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _error(code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code, headers=headers)




def _json_safe(value: Any) -> Any:
    """The offending value as given when JSON can carry it (not NaN/inf, not the missing marker), else its repr."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return None if type(value) is object else repr(value)

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerationRequest.model_json_schema()}},
    }
}
_ERROR_DOC = {"content": {"application/json": {"example": {"error": "steps=0 is not allowed; steps must be ..."}}}}


def create_app(
    store: JobStore,
    worker: Worker | None,
    *,
    slug: str = SLUG,
    api_key: str | None = None,
    max_queue: int | None = 100,
    model_name: str = "",
    manage_worker: bool = True,
    log: Callable[[str], None] | None = None,
) -> FastAPI:
    """The app. ``manage_worker``: start the worker at startup and stop it (requeueing its job) at shutdown.
    ``worker=None``: an API-only process on a shared store (the workers run elsewhere)."""
    metrics_ = JobMetrics(store, worker)
    say = log or getattr(worker, "log", None) or (lambda message: print(message, file=sys.stderr, flush=True))
    waiters: dict[str, list[asyncio.Future]] = {}
    manage_worker = manage_worker and worker is not None

    def wake(job_id: str, job: Job | None) -> None:  # worker or store thread
        for future in list(waiters.get(job_id, ())):
            future.get_loop().call_soon_threadsafe(_resolve, future, job)

    def on_finished(job: Job) -> None:  # worker thread
        metrics_.on_finished(job)
        wake(job.id, job)

    if worker is not None:
        worker.add_listener(on_finished)
    # a shared store announces jobs finished by any worker (None: re-read the store)
    store_notifies = store.add_finished_listener(lambda job_id: wake(job_id, None))
    recheck_s = 5.0 if worker is not None or store_notifies else 0.05

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_worker:
            worker.start()
        try:
            yield
        finally:
            if worker is None:
                say("shut down cleanly (API process; queued jobs stay in the store)")
            elif manage_worker:
                stopped = await run_in_threadpool(worker.stop)
                waiting = (await run_in_threadpool(store.counts))[QUEUED]
                worker.log(f"shut down {'cleanly' if stopped else 'with the worker still busy'}; "
                           f"{waiting} queued job(s) will run at the next start")  # fmt: skip

    app = FastAPI(
        title="flux_vector",
        version=__version__,
        description=f"FLUX.1-dev + the Simple Vector LoRA, serving Segmind's {slug!r} API locally.",
        lifespan=lifespan,
    )
    app.state.store, app.state.worker = store, worker

    # ------------------------------------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "x-api-key"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers=headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"not found: {request.method} {request.url.path} is not an endpoint of this server (see /docs)"
        elif exc.status_code == 405:
            message = f"method not allowed: {request.method} {request.url.path} (see /docs)"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _error(500, f"internal server error: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------- helpers
    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("x-api-key")
        if not given:
            raise ApiError(401, "missing API key: send it in the x-api-key header")
        if not hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8")):
            raise ApiError(401, "invalid API key")

    def check_slug(requested: str) -> None:
        if requested != slug:
            raise ApiError(404, f"model {requested!r} not found: this server serves {slug!r}")

    async def read_request(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted")
        if not raw.strip():
            raise ApiError(400, 'the request body is empty: send a JSON object of parameters, e.g. {"prompt": "..."}',
                           field="body")  # fmt: skip
        try:
            params = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object of parameters",
                           field="body") from None  # fmt: skip
        try:
            parse_request(params)
        except RequestError as exc:
            raise ApiError(400, str(exc), field=exc.field, value=_json_safe(exc.value), allowed=exc.allowed) from None
        return params

    async def submit(params: dict[str, Any]) -> Job:
        try:
            job = await run_in_threadpool(store.submit, slug, params, max_queue=max_queue)
        except QueueFull as exc:
            metrics_.rejected_total.labels("queue_full").inc()
            raise ApiError(429, str(exc), max_queue=exc.max_queue) from None
        metrics_.submitted_total.inc()
        if worker is not None:
            worker.notify()
        return job

    def get_job(request_id: str) -> Job:
        job = store.get(request_id)
        if job is None:
            raise ApiError(404, f"request {request_id!r} not found: unknown, or its result expired "
                                f"({store.retention_s:g} s after it finished)")  # fmt: skip
        return job

    def image_url(request: Request, job: Job):
        ext = job.result.get("ext", "png")
        return lambda i: str(request.url_for("job_image", request_id=job.id, name=f"{i}.{ext}"))

    def final_body(request: Request, job: Job) -> dict[str, Any]:
        return result_body(job, image_url(request, job), lambda i: store.image(job.id, i))

    auth = [Depends(check_key)]
    errors = {code: {"description": text, **_ERROR_DOC} for code, text in
              ((400, "Invalid parameter"), (401, "Missing or invalid x-api-key"), (404, "Unknown model slug"),
               (429, "The queue is full"))}  # fmt: skip

    # ------------------------------------------------------------------------------------------- routes
    @app.post("/v1/{model_slug}", dependencies=auth, openapi_extra=_BODY_DOC, responses=errors,
              summary="Generate and wait (sync): the image bytes, or JSON with base64")  # fmt: skip
    async def run_sync(model_slug: str, request: Request):
        check_slug(model_slug)
        params = await read_request(request)
        job = await submit(params)
        job = await wait_finished(job.id)
        if job.state == FAILED:
            return _error(500, job.error or "the job failed", request_id=job.id, status=FAILED)
        if job.result.get("echo", {}).get("base64"):
            return JSONResponse(await run_in_threadpool(final_body, request, job))
        data = await run_in_threadpool(store.image, job.id, 0)
        if data is None:
            raise ApiError(404, f"request {job.id!r}: its image expired before it could be sent")
        headers = {"X-Request-Id": job.id, "X-Image-Count": str(job.result.get("count", 1)),
                   "X-Inference-Time": f"{job.result.get('inference_time') or 0:.4f}", **IMAGE_HEADERS}  # fmt: skip
        return Response(data, media_type=job.result["media_type"], headers=headers)

    async def wait_finished(job_id: str) -> Job:
        loop = asyncio.get_running_loop()
        while True:
            # registered before the store is read, so a notification between the read and the wait is not missed
            future = loop.create_future()
            waiters.setdefault(job_id, []).append(future)
            try:
                job = await run_in_threadpool(store.get, job_id)
                if job is None:
                    raise ApiError(404, f"request {job_id!r} disappeared from the store")
                if job.finished:
                    return job
                with contextlib.suppress(asyncio.TimeoutError):
                    # a listener resolves it (with the job, or None: read the store again); the timeout re-reads
                    # the store in case a notification was missed
                    finished = await asyncio.wait_for(future, timeout=recheck_s)
                    if finished is not None:
                        return finished
            finally:
                entries = waiters.get(job_id, [])
                if future in entries:
                    entries.remove(future)
                if not entries:
                    waiters.pop(job_id, None)

    @app.post("/v2/{model_slug}", dependencies=auth, openapi_extra=_BODY_DOC, responses=errors,
              summary="Submit to the queue (async)")  # fmt: skip
    async def submit_async(model_slug: str, request: Request):
        check_slug(model_slug)
        job = await submit(await read_request(request))
        return {"request_id": job.id, "status": QUEUED, "position": job.position,
                "status_url": str(request.url_for("job_status", request_id=job.id)),
                "response_url": str(request.url_for("job_result", request_id=job.id))}  # fmt: skip

    @app.get("/v2/requests/{request_id}/status", dependencies=auth, name="job_status", summary="Poll a request")
    def job_status(request_id: str):
        job = get_job(request_id)
        return JSONResponse(status_body(job), status_code=422 if job.state == FAILED else 200)

    @app.get("/v2/requests/{request_id}", dependencies=auth, name="job_result", summary="The final body")
    def job_result(request_id: str, request: Request):
        job = get_job(request_id)
        code = {COMPLETED: 200, FAILED: 422}.get(job.state, 202)
        return JSONResponse(final_body(request, job), status_code=code)

    @app.get("/v2/requests/{request_id}/images/{name}", name="job_image", summary="An output image (no key needed)")
    def job_image(request_id: str, name: str):
        index_text, _, ext = name.partition(".")
        job = get_job(request_id)
        if job.state != COMPLETED:
            raise ApiError(404, f"request {request_id!r} has no image: it is {job.state}")
        if not index_text.isdigit() or ext != job.result.get("ext"):
            raise ApiError(404, f"no image {name!r} for request {request_id!r}: images are "
                                f"0..{job.result.get('count', 1) - 1}.{job.result.get('ext')}")  # fmt: skip
        data = store.image(request_id, int(index_text))
        if data is None:
            raise ApiError(404, f"no image {name!r} for request {request_id!r} (expired, or no such index)")
        return Response(data, media_type=job.result["media_type"],
                        headers={"Cache-Control": "private, max-age=3600", **IMAGE_HEADERS})  # fmt: skip

    add_playground(app, slug=slug, auth=bool(api_key))  # GET /: the playground page

    @app.get("/healthz", summary="Liveness and worker state")
    def healthz():
        if worker is None:  # API process on a shared store: healthy while the store answers
            try:
                body = {"status": "ok", "role": "api", "store": store.kind, "slug": slug, "worker": None,
                        "workers": store.workers() if hasattr(store, "workers") else [], "jobs": store.counts(),
                        "max_queue": max_queue, "retention_s": store.retention_s, "auth": bool(api_key)}  # fmt: skip
            except Exception as exc:
                return _error(503, f"the job store is unreachable: {type(exc).__name__}: {exc}", status="unavailable")
            return JSONResponse(body)
        alive = worker.running
        body = {"status": "ok" if alive else "unavailable", "model": model_name, "slug": slug,
                "worker": worker.state, "current_job": worker.current_job, "jobs": store.counts(),
                "max_queue": max_queue, "retention_s": store.retention_s, "auth": bool(api_key)}  # fmt: skip
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics():
        data, content_type = metrics_.render()
        return Response(data, media_type=content_type)

    return app


def _resolve(future: asyncio.Future, job: Job) -> None:
    if not future.done():
        future.set_result(job)
