"""For operators: ``GET /healthz`` (this process and, on a shared store, the live workers) and ``GET /metrics``
(Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..jobs.store import StoreUnavailable
from .errors import error_response
from .state import State

router = APIRouter()


@router.get("/healthz", summary="Liveness and worker state")
def healthz(state: State):
    store, worker = state.store, state.worker
    settings = {"max_queue": state.max_queue, "auth": bool(state.api_key)}
    if worker is None:  # API process on a shared store: healthy while the store answers and can be trusted
        try:
            workers = store.workers()
            body = {
                "status": "ok",
                "role": "api",
                "store": store.kind,
                "slug": state.slug,
                "worker": None,
                "workers": workers,
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
            message = f"the job store is unreachable: {store.redact(f'{type(exc).__name__}: {exc}')}"
            return error_response(503, message, headers={"Retry-After": "5"}, status="unavailable")
        return JSONResponse(body)
    alive = worker.running
    try:
        store.check()
    except Exception as exc:
        message = f"the job store cannot be trusted now: {store.redact(str(exc))}"
        return error_response(503, message, headers={"Retry-After": "30"}, status="unavailable", worker=worker.state)
    body = {
        "status": "ok" if alive else "unavailable",
        "model": state.model_name,
        "slug": state.slug,
        "worker": worker.state,
        "current_job": worker.current_job,
        "jobs": store.counts(),
        "retention_s": store.retention_s,
        **settings,
    }
    return JSONResponse(body, status_code=200 if alive else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(state: State):
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)
