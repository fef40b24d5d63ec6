"""Every error the HTTP API answers is a JSON object with a human-readable ``error`` (and, for a bad parameter, the
``field``, ``value`` and ``allowed``): ``ApiError`` raised anywhere, and FastAPI's own errors, rewritten here."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..jobs.store import StoreFull
from ..request import shorten


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, /, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra, self.headers = status, message, extra, headers


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: any text (a lone surrogate included) can be sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


STORE_RETRY_AFTER_S = 5


def error_response(code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return AsciiJSONResponse({"error": message, **{k: json_safe(v) for k, v in extra.items()}}, code, headers=headers)


def json_safe(value: Any) -> Any:
    """The offending value as given when JSON can carry it (not NaN/inf, not the missing marker), else its repr."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return None if type(value) is object else repr(value)


def install_error_handlers(app: FastAPI, store_unavailable: tuple[type[Exception], ...] = ()) -> None:
    """``store_unavailable``: the exceptions meaning the job store cannot be reached now (503 with Retry-After)."""

    async def _store_unavailable(request: Request, exc: Exception):
        store = request.app.state.flux.store
        if isinstance(exc, StoreFull):  # its message names the store and what to do
            message = store.redact(str(exc))
        else:
            message = f"the job store ({store.kind}) is unavailable: {store.redact(f'{type(exc).__name__}: {exc}')}"
        request.app.state.flux.log(f"503: {message}")
        return error_response(503, message + "; retry later", headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

    for error_type in store_unavailable:  # handled below ServerErrorMiddleware: the connection stays open
        app.add_exception_handler(error_type, _store_unavailable)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "x-api-key"} if exc.status == 401 else {}
        return error_response(exc.status, exc.message, headers={**headers, **(exc.headers or {})}, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        path = shorten(request.url.path)
        if exc.status_code == 404:
            message = f"not found: {request.method} {path} is not an endpoint of this server (see /docs)"
        elif exc.status_code == 405:
            message = f"method not allowed: {request.method} {path} (see /docs)"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return error_response(500, f"internal server error: {type(exc).__name__}: {shorten(str(exc))}")
