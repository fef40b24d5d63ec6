"""For operators: ``GET /healthz`` (this process and, on a shared store, the live workers) and ``GET /metrics``
(Prometheus text).

With keys configured, ``/healthz`` without a valid key answers liveness only (``status``): no job ids (a job id is the
capability to its images), no prompts, no counts; with a key it says more, and names the running job only to the
user who submitted it. ``/metrics`` needs a key (``x-api-key`` or ``Authorization: Bearer``) unless the server runs
with ``--public-metrics``; it names users, never keys.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..jobs.store import StoreUnavailable
from .errors import error_response
from .state import ServerState, State

router = APIRouter()


@router.get("/healthz", summary="Liveness (anyone); worker and queue state (with a key)")
def healthz(request: Request, state: State):
    store, worker = state.store, state.worker
    user = state.caller(request)
    settings = {"max_queue": state.max_queue, "auth": state.users.required}
    if worker is None:  # API process on a shared store: healthy while the store answers and can be trusted
        try:
            workers = store.workers()
            body = {
                "status": "ok",
                "role": "api",
                "store": store.kind,
                "slug": state.slug,
                "worker": None,
                "workers": [_without_others_job(state, w, user) for w in workers] if user is not None else [],
                "jobs": store.counts(),
                "retention_s": store.retention_s,
                **settings,
            }
            problem = store.serving_problem(workers)
            if problem:
                body["serving"] = problem
            store.check()  # evicting since the start, or full
        except StoreUnavailable as exc:  # reachable, but not fit: say why
            return error_response(503, store.redact(str(exc)), headers={"Retry-After": "30"}, status="unavailable")
        except Exception as exc:
            if user is None:
                return error_response(503, "unavailable", headers={"Retry-After": "5"}, status="unavailable")
            message = f"the job store is unreachable: {store.redact(f'{type(exc).__name__}: {exc}')}"
            return error_response(503, message, headers={"Retry-After": "5"}, status="unavailable")
        return JSONResponse(body if user is not None else {"status": "ok"})
    alive = worker.running
    try:
        store.check()
    except Exception as exc:
        if user is None:
            return error_response(503, "unavailable", headers={"Retry-After": "30"}, status="unavailable")
        message = f"the job store cannot be trusted now: {store.redact(str(exc))}"
        return error_response(503, message, headers={"Retry-After": "30"}, status="unavailable", worker=worker.state)
    status = 200 if alive else 503
    if user is None:  # keys configured, none given: liveness only
        return JSONResponse({"status": "ok" if alive else "unavailable"}, status_code=status)
    body = {
        "status": "ok" if alive else "unavailable",
        "model": state.model_name,
        "slug": state.slug,
        "worker": worker.state,
        "current_job": _own_job(state, worker.current_job, user),
        "jobs": store.counts(),
        "retention_s": store.retention_s,
        **settings,
    }
    return JSONResponse(body, status_code=status)


def _without_others_job(state: ServerState, worker: dict, user: str) -> dict:
    """A worker's announced entry with its ``current_job`` hidden unless ``user`` submitted that job."""
    if "current_job" in worker:
        worker = {**worker, "current_job": _own_job(state, worker["current_job"], user)}
    return worker


def _own_job(state: ServerState, job_id: str | None, user: str) -> str | None:
    """The running job's id when ``user`` may see it (it submitted it, or the server has no keys), else None."""
    if job_id is None or not state.users.required:
        return job_id
    job = state.store.get(job_id)
    return job_id if job is not None and job.user == user else None


@router.get("/metrics", summary="Prometheus metrics (a key unless --public-metrics)")
def metrics(request: Request, state: State):
    if not state.public_metrics:
        state.authenticate(request)
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)
