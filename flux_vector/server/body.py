"""Reading a request body safely: the size limit enforced while it streams in (the declared ``Content-Length``
first, then the bytes counted as they arrive, so an oversized upload is never held in memory), and JSON parsed
strictly: duplicate keys, nesting deeper than a parameter object needs and strings that UTF-8 cannot carry (lone
surrogates) are 400s naming what is wrong, never a 500."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from ..request import shorten
from .errors import ApiError

# A 413 closes the connection: the rest of the body is never read (the server would otherwise drain it to reach the
# next request on a keep-alive connection)
_CLOSE = {"Connection": "close"}
MAX_JSON_DEPTH = 32  # the parameter object is flat; 32 leaves room for any future nested option


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it is known to exceed ``limit`` bytes (before reading it when the
    ``Content-Length`` says so; otherwise at the first chunk past the limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.strip().isdigit():
            raise ApiError(
                400, f"Content-Length {shorten(declared, 40)!r} is not a number of bytes", field="Content-Length"
            )
        if int(declared) > limit:
            raise ApiError(
                413, f"the request body is {int(declared)} bytes; at most {limit} are accepted", headers=_CLOSE
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes; at most {limit} are accepted", headers=_CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of ``raw``; a 400 (``field="body"`` or the offending key) for anything else."""
    try:
        value = json.loads(raw, object_pairs_hook=_object_without_duplicates)
    except _DuplicateKey as exc:
        raise ApiError(
            400, f"the request body names {exc.key!r} more than once; send each parameter once", field=exc.key
        ) from None
    except RecursionError:
        raise ApiError(
            400, f"the request body is nested too deeply; at most {MAX_JSON_DEPTH} levels are accepted", field="body"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, f"the request body is not valid JSON ({exc}); send a JSON object of parameters", field="body"
        ) from None
    _check_value(value, "body", 0)
    return value


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = shorten(key if _utf8_ok(key) else ascii(key), 80)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_value(value: Any, where: str, depth: int) -> None:
    """Every string encodable as UTF-8 (a lone surrogate is not), and no deeper than ``MAX_JSON_DEPTH``."""
    if depth > MAX_JSON_DEPTH:
        raise ApiError(
            400, f"the request body is nested too deeply; at most {MAX_JSON_DEPTH} levels are accepted", field="body"
        )
    if isinstance(value, str):
        if not _utf8_ok(value):
            raise ApiError(
                400,
                f"{where} holds a lone UTF-16 surrogate ({ascii(value)[:80]}); send text that UTF-8 can carry",
                field=where,
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _utf8_ok(key):
                raise ApiError(400, f"the parameter name {key!a} holds a lone UTF-16 surrogate", field="body")
            _check_value(item, key if depth == 0 else f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
