"""What the routes share, as one explicit object (``ServerState``, at ``app.state.flux``): the store, the worker
(None in an API-only process on a shared store), the settings, the metrics, and the requests waiting for a job to
finish. Routes get it with ``Depends(get_state)``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ..jobs import Job, JobStore, QueueFull, UserQueueFull, Worker, result_body
from ..jobs.bodies import Base64Images
from ..jobs.metrics import JobMetrics
from ..request import (
    GenerationRequest,
    OverBudget,
    RequestError,
    TextTokens,
    WorkBudget,
    parse_request,
    shorten,
)
from .body import parse_json_body, read_body_limited
from .errors import ApiError, json_safe
from .users import ANONYMOUS, Users, key_from_headers

MAX_BODY_BYTES = 1 << 20


class FinishedWaiters:
    """Requests waiting for a job to finish, woken from the worker's or the store's thread. Without a notification
    the store is read again every ``recheck_s``."""

    def __init__(self, recheck_s: float):
        self.recheck_s = recheck_s
        self._futures: dict[str, list[asyncio.Future]] = {}
        self.shutting_down = False

    def shut_down(self) -> None:  # the event loop's thread (uvicorn's signal handler)
        """Answer every waiting request now (503: the job stays in the store) instead of holding it until the
        graceful-shutdown timeout cancels it."""
        self.shutting_down = True
        for futures in list(self._futures.values()):
            for future in list(futures):
                future.get_loop().call_soon_threadsafe(_resolve, future, _SHUTDOWN)

    def wake(self, job_id: str, job: Job | None) -> None:  # any thread
        for future in list(self._futures.get(job_id, ())):
            future.get_loop().call_soon_threadsafe(_resolve, future, job)

    async def wait(self, store: JobStore, job_id: str) -> Job:
        loop = asyncio.get_running_loop()
        while True:
            if self.shutting_down:
                raise _shutdown_error(job_id)
            # registered before the store is read, so a notification between the read and the wait is not missed
            future = loop.create_future()
            self._futures.setdefault(job_id, []).append(future)
            try:
                job = await run_in_threadpool(store.get, job_id)
                if job is None:
                    raise ApiError(404, f"request {job_id!r} disappeared from the store")
                if job.finished:
                    return job
                with contextlib.suppress(asyncio.TimeoutError):
                    # resolved with the job, or with None (read the store again); the timeout re-reads the store in
                    # case a notification was missed
                    finished = await asyncio.wait_for(future, timeout=self.recheck_s)
                    if finished is _SHUTDOWN:
                        raise _shutdown_error(job_id)
                    if finished is not None:
                        return finished
            finally:
                entries = self._futures.get(job_id, [])
                if future in entries:
                    entries.remove(future)
                if not entries:
                    self._futures.pop(job_id, None)


_SHUTDOWN: Any = object()  # resolves a waiter when the server is stopping
SHUTDOWN_RETRY_AFTER_S = 10


def _shutdown_error(job_id: str) -> ApiError:
    return ApiError(
        503,
        f"the server is shutting down; request {job_id!r} stays in the store and runs after the restart "
        f"(poll /v2/requests/{job_id}/status)",
        request_id=job_id,
        headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)},
    )


def _resolve(future: asyncio.Future, job: Job | None) -> None:
    if not future.done():
        future.set_result(job)


@dataclass
class ServerState:
    store: JobStore
    worker: Worker | None
    slug: str
    api_key: str | None
    max_queue: int | None
    model_name: str
    log: Callable[[str], None]
    public_url: str = ""  # the base of the URLs handed out; "" builds them from the request
    budget: WorkBudget = field(default_factory=WorkBudget)
    users: Users = field(default_factory=Users)  # the keys and their users (with ``api_key``: the user "default")
    public_metrics: bool = False  # /metrics without a key
    max_queue_per_user: int | None = None
    # counts prompt tokens with the model's tokenizer (None: the grammar is checked, prompts priced at the minimum)
    token_counter: Any = None
    metrics: JobMetrics = field(init=False)
    waiters: FinishedWaiters = field(init=False)
    base64_images: Base64Images = field(init=False, default_factory=Base64Images)

    def __post_init__(self) -> None:
        if self.api_key and not self.users.required:
            from .users import load_users

            self.users = load_users(None, self.api_key)
        self.metrics = JobMetrics(self.store, self.worker)
        if self.worker is not None:
            self.worker.add_listener(self._on_finished)
        # a shared store announces jobs finished by any worker (None: re-read the store)
        store_notifies = self.store.add_finished_listener(lambda job_id: self.waiters.wake(job_id, None))
        self.waiters = FinishedWaiters(5.0 if self.worker is not None or store_notifies else 0.05)

    def _on_finished(self, job: Job) -> None:  # worker thread
        self.metrics.on_finished(job)
        self.waiters.wake(job.id, job)

    # ------------------------------------------------------------------------------------------- checks
    def authenticate(self, request: Request) -> str:
        """The calling user's name (``ANONYMOUS`` on a server without keys), or a 401."""
        if not self.users.required:
            return ANONYMOUS
        given = key_from_headers(request.headers)
        if not given:
            raise ApiError(401, "missing API key: send it in the x-api-key header")
        user = self.users.identify(given)
        if user is None:
            raise ApiError(401, "invalid API key")
        return user

    def caller(self, request: Request) -> str | None:
        """The user a request's key names; None without a valid key (no 401: for routes that answer anyone)."""
        if not self.users.required:
            return ANONYMOUS
        given = key_from_headers(request.headers)
        return self.users.identify(given) if given else None

    def check_slug(self, requested: str) -> None:
        if requested != self.slug:
            raise ApiError(404, f"model {shorten(requested, 80)!r} not found: this server serves {self.slug!r}")

    async def read_request(self, request: Request) -> GenerationRequest:
        """The body parsed by the contract, once, here at the edge (400 naming the field), within the work budget;
        or an ApiError. The parsed request is what the store keeps and the worker runs."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(
                415,
                f"the request body is {media_type or 'untyped'}; send it as Content-Type: application/json",
                field="Content-Type",
            )
        raw = await read_body_limited(request, MAX_BODY_BYTES)
        if not raw.strip():
            raise ApiError(
                400, 'the request body is empty: send a JSON object of parameters, e.g. {"prompt": "..."}', field="body"
            )
        params = parse_json_body(raw)
        try:
            parsed = parse_request(params)
            text = await run_in_threadpool(self.count_text, parsed)
            self.budget.check(parsed, text)
            if parsed.output_format == "svg":
                check_svg_size(parsed)
        except RequestError as exc:
            raise ApiError(
                400, str(exc), field=exc.field, value=shorten(json_safe(exc.value)), allowed=exc.allowed
            ) from None
        except OverBudget as exc:
            self.metrics.rejected_total.labels("over_budget").inc()
            raise ApiError(
                400,
                str(exc),
                field=exc.fields[0],
                fields=list(exc.fields),
                count=exc.amount,
                limit=exc.limit,
                setting=exc.setting,
            ) from None
        return parsed

    def count_text(self, request: GenerationRequest) -> TextTokens | None:
        """The prompts' T5 tokens in bounded memory (``prompt.count``), their grammar checked."""
        from ..prompt.count import request_tokens

        return request_tokens(request, self.token_counter)

    # ------------------------------------------------------------------------------------------- jobs
    async def submit(self, request: GenerationRequest, user: str = ANONYMOUS) -> Job:
        try:
            job = await run_in_threadpool(
                lambda: self.store.submit(
                    self.slug, request, max_queue=self.max_queue, user=user, max_queue_per_user=self.max_queue_per_user
                )
            )
        except UserQueueFull as exc:
            self.metrics.rejected_total.labels("user_queue_full").inc()
            self.metrics.user_rejected_total.labels(user, "user_queue_full").inc()
            wait = self.retry_after_s()
            headers = {
                "Retry-After": str(wait),
                "x-rate-limit-reset-at-utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + wait)),
            }
            raise ApiError(429, str(exc), headers=headers, max_queue_per_user=exc.max_queue) from None
        except QueueFull as exc:
            self.metrics.rejected_total.labels("queue_full").inc()
            self.metrics.user_rejected_total.labels(user, "queue_full").inc()
            raise ApiError(429, str(exc), max_queue=exc.max_queue) from None
        self.metrics.submitted_total.inc()
        self.metrics.user_submitted_total.labels(user).inc()
        if self.worker is not None:
            self.worker.notify()
        return job

    def retry_after_s(self) -> int:
        """Seconds until a queued job of a capped user is likely to have started: the mean model time of the jobs
        this process saw finish (at least 1 s), 10 s before any did."""
        count, total = self.metrics.inference_mean()
        return max(1, math.ceil(total / count)) if count else DEFAULT_RETRY_AFTER_S

    def get_job(self, request_id: str, user: str | None = None) -> Job:
        """The job, or a 404 for an unknown, expired or (``user`` given, keys configured) another user's job: the
        same answer, so an id of someone else's job tells nothing."""
        job = self.store.get(request_id)
        if job is None or (user is not None and self.users.required and job.user != user):
            raise ApiError(
                404,
                f"request {shorten(request_id, 80)!r} not found: unknown, or its result expired "
                f"({self.store.retention_s:g} s after it finished)",
            )
        return job

    async def wait_finished(self, job_id: str) -> Job:
        return await self.waiters.wait(self.store, job_id)

    def url_for(self, request: Request, route: str, /, **params: str) -> str:
        """The absolute URL of a route: on ``public_url`` when set, else on the request's own (checked) host."""
        if self.public_url:
            return self.public_url + str(request.app.url_path_for(route, **params))
        return str(request.url_for(route, **params))

    def final_body(self, request: Request, job: Job) -> dict[str, Any]:
        ext = job.result.get("ext", "png")

        def image_url(i: int) -> str:
            return self.url_for(request, "job_image", request_id=job.id, name=f"{i}.{ext}")

        return result_body(job, image_url, lambda i: self.store.image(job.id, i), encoded=self.base64_images)


def get_state(request: Request) -> ServerState:
    return request.app.state.flux


State = Annotated[ServerState, Depends(get_state)]  # a route parameter of this type receives the state


DEFAULT_RETRY_AFTER_S = 10


def authenticated_user(request: Request) -> str:
    return get_state(request).authenticate(request)


User = Annotated[str, Depends(authenticated_user)]  # a route parameter of this type receives the caller's user name


def check_svg_size(request: GenerationRequest) -> None:
    """An SVG request's image is within what can be traced (``vectorize.MAX_VECTORIZE_PIXELS``), else a 400 naming
    output_format. Today's contract (width and height up to 4096) keeps every request within it: this guards a
    wider contract or a lower limit."""
    from ..vectorize import MAX_VECTORIZE_PIXELS, ImageTooLarge, check_vectorize_size  # numpy: only for svg

    width, height = request.size
    try:
        check_vectorize_size(width, height, what=f"output_format 'svg' of a {width}x{height} image")
    except ImageTooLarge as exc:
        raise ApiError(400, str(exc), field="output_format", limit=MAX_VECTORIZE_PIXELS) from None
