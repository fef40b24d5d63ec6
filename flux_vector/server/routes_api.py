"""The Segmind endpoints: ``POST /v1/{slug}`` (wait for the image), ``POST /v2/{slug}`` (queue), and the
``/v2/requests/...`` status, result and image URLs."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..jobs import COMPLETED, FAILED, QUEUED, status_body
from ..jobs.store import CANCELLED_REASON
from ..request import GenerationRequest
from .errors import ApiError, error_response
from .state import State, User

# Every image response: never sniffed as another type, and opened directly (an SVG is a document) it may load and run
# nothing. Our SVGs hold only paths (flux_vector/vectorize.py); this is the second wall.
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerationRequest.model_json_schema()}},
    }
}
_ERROR_DOC = {"content": {"application/json": {"example": {"error": "steps=0 is not allowed; steps must be ..."}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, **_ERROR_DOC}
    for code, text in (
        (400, "Invalid parameter"),
        (401, "Missing or invalid x-api-key"),
        (404, "Unknown model slug; unknown, expired or another user's request"),
        (413, "The body is over 1 MiB"),
        (409, "Nothing to cancel: the request finished already"),
        (415, "The body is not application/json"),
        (429, "The queue is full, or this user's share of it (x-rate-limit-reset-at-utc, Retry-After)"),
    )
}

_IMAGE_INDEX = re.compile(r"[0-9]{1,6}")  # ASCII digits only: "²".isdigit() is True and int("²") raises

router = APIRouter()


@router.post(
    "/v1/{model_slug}",
    openapi_extra=_BODY_DOC,
    responses=_ERRORS,
    summary="Generate and wait (sync): the image bytes, or JSON with base64",
)
async def run_sync(model_slug: str, request: Request, state: State, user: User):
    state.check_slug(model_slug)
    job = await state.submit(await state.read_request(request), user)
    job = await state.wait_finished(job.id)
    if job.state == FAILED:
        return error_response(500, job.error or "the job failed", request_id=job.id, status=FAILED)
    if job.result.get("echo", {}).get("base64"):
        return JSONResponse(await run_in_threadpool(state.final_body, request, job))
    data = await run_in_threadpool(state.store.image, job.id, 0)
    if data is None:
        raise ApiError(404, f"request {job.id!r}: its image expired before it could be sent")
    headers = {
        "X-Request-Id": job.id,
        "X-Image-Count": str(job.result.get("count", 1)),
        "X-Inference-Time": f"{job.result.get('inference_time') or 0:.4f}",
        **IMAGE_HEADERS,
    }
    return Response(data, media_type=job.result["media_type"], headers=headers)


@router.post(
    "/v2/{model_slug}",
    openapi_extra=_BODY_DOC,
    responses=_ERRORS,
    summary="Submit to the queue (async)",
)
async def submit_async(model_slug: str, request: Request, state: State, user: User):
    state.check_slug(model_slug)
    job = await state.submit(await state.read_request(request), user)
    return {
        "request_id": job.id,
        "status": QUEUED,
        "position": job.position,
        "status_url": state.url_for(request, "job_status", request_id=job.id),
        "response_url": state.url_for(request, "job_result", request_id=job.id),
    }


@router.get("/v2/requests/{request_id}/status", name="job_status", summary="Poll a request")
def job_status(request_id: str, state: State, user: User):
    job = state.get_job(request_id, user)
    return JSONResponse(status_body(job), status_code=422 if job.state == FAILED else 200)


@router.get("/v2/requests/{request_id}", name="job_result", summary="The final body")
def job_result(request_id: str, request: Request, state: State, user: User):
    job = state.get_job(request_id, user)
    code = {COMPLETED: 200, FAILED: 422}.get(job.state, 202)
    return JSONResponse(state.final_body(request, job), status_code=code)


@router.delete(
    "/v2/requests/{request_id}",
    name="job_cancel",
    summary="Cancel: a queued job never runs, a running one stops at its next step (FAILED, 'cancelled')",
)
async def job_cancel(request_id: str, state: State, user: User):
    # another user's job: the same 404 as an unknown one
    before = await run_in_threadpool(state.get_job, request_id, user)
    job = await run_in_threadpool(state.store.cancel, request_id)
    if job is None:
        job = state.get_job(request_id)  # the 404 naming why (it expired meanwhile)
    if job.error != CANCELLED_REASON:
        raise ApiError(
            409, f"request {request_id!r} is {job.state} already; there is nothing to cancel", status=job.state
        )
    state.waiters.wake(job.id, job)  # a /v1 caller waiting for it is answered now
    if not before.finished:
        state.metrics.cancelled_total.labels(user).inc()
        state.log(f"request {job.id} cancelled by {f'user {user}' if user else 'the client'}")
    return status_body(job)


@router.get("/v2/requests/{request_id}/images/{name}", name="job_image", summary="An output image (no key needed)")
def job_image(request_id: str, name: str, state: State):
    index_text, _, ext = name.partition(".")
    job = state.get_job(request_id)
    if job.state != COMPLETED:
        raise ApiError(404, f"request {request_id!r} has no image: it is {job.state}")
    if not _IMAGE_INDEX.fullmatch(index_text) or ext != job.result.get("ext"):
        raise ApiError(
            404,
            f"no image {name!r} for request {request_id!r}: images are "
            f"0..{job.result.get('count', 1) - 1}.{job.result.get('ext')}",
        )
    data = state.store.image(request_id, int(index_text))
    if data is None:
        raise ApiError(404, f"no image {name!r} for request {request_id!r} (expired, or no such index)")
    return Response(
        data,
        media_type=job.result["media_type"],
        headers={"Cache-Control": f"private, max-age={int(state.store.retention_s)}", **IMAGE_HEADERS},
    )
