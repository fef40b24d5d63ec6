"""Browser safety: no web page can drive this server through a visitor's browser.

- ``Host`` must name this server (DNS rebinding points an attacker's name at 127.0.0.1): an IP address, ``localhost``,
  the host it listens on, or the host of ``--public-url``. Anything else is a 400 on every route.
- A request carrying an ``Origin`` other than the server's own is a 403 unless ``--allow-origin`` lists it (then it
  also gets the CORS headers a browser needs). Same-origin pages (the playground, /docs) are unaffected.
- POST bodies must be ``application/json`` (415 otherwise, ``state.read_request``): a form or a ``text/plain``
  fetch, which a page may send cross-origin without asking, is never parsed.
- ``/docs`` is Swagger UI from the packaged files of ``swagger-ui-bundle`` (no CDN; ``docs.py``), under a CSP that
  allows scripts from this origin only, so nothing foreign runs on the origin where the playground keeps the API key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..request import shorten
from .docs import add_local_docs
from .errors import error_response


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased, as a browser writes it in ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``), lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """ASGI middleware: the ``Host`` and ``Origin`` checks above, before any route runs."""

    def __init__(self, app: ASGIApp, *, host_names: Iterable[str], allow_origins: Iterable[str], public_url: str):
        self.app = app
        self.host_names = {name.lower() for name in host_names if name} | {"localhost"}
        self.allow_origins = {origin_of(origin) for origin in allow_origins}
        self.public_origin = origin_of(public_url) if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        host = headers.get("host", "")
        name = host_name(host)
        if not (_is_ip(name) or name in self.host_names):
            answer = error_response(
                400,
                f"Host {shorten(host, 80)!r} is not a name of this server; it answers to an IP address, localhost"
                + "".join(f", {n}" for n in sorted(self.host_names - {"localhost"}))
                + " (flux-vector serve --public-url https://NAME adds one)",
                field="Host",
            )
            return await answer(scope, receive, send)
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin.lower(), host.lower()):
            answer = error_response(
                403,
                f"requests from the web page at Origin {shorten(origin, 80)!r} are refused: only this server's own "
                "pages may call it (flux-vector serve --allow-origin ORIGIN allows another)",
                field="Origin",
            )
            return await answer(scope, receive, send)
        return await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        own = {f"http://{host}", f"https://{host}", self.public_origin}
        return origin in own or origin in self.allow_origins


def add_browser_safety(app: FastAPI, *, bind_host: str, public_url: str, allow_origins: list[str]) -> None:
    """The guard (outermost), CORS for the listed origins, and the packaged Swagger UI at ``/docs``."""
    names = [bind_host, urlsplit(public_url).hostname or "" if public_url else ""]
    if allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted({origin_of(o) for o in allow_origins}),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["content-type", "x-api-key", "authorization"],
            expose_headers=["x-request-id", "x-image-count", "x-inference-time"],
        )
    app.add_middleware(BrowserGuard, host_names=names, allow_origins=allow_origins, public_url=public_url)
    add_local_docs(app)
