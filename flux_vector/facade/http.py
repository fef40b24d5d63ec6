"""The HTTP backend: what the ``segmind`` SDK sends on the wire (docs: the SDK's headers, v1 and v2 URLs, errors)."""

from __future__ import annotations

import time
from typing import Any

from ..jobs import COMPLETED, FAILED
from ..version import __version__
from .backend import JobHandle
from .errors import SegmindError, raise_for_status

_TERMINAL_STATES = (COMPLETED, FAILED)


class HttpBackend:
    """What the segmind SDK does on the wire (see docs/SEGMIND_SDK_WIRE.md)."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float):
        import httpx

        headers = {"User-Agent": f"flux-vector/{__version__} (segmind-python-sdk compatible)", "X-Initiator": "SDK-PY"}
        if api_key:
            headers["x-api-key"] = api_key
        self.base_url = base_url
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=5.0), base_url=base_url)

    def v2_base(self) -> str:
        base = self.base_url.rstrip("/")
        if "/" in base and base.rsplit("/", 1)[1].startswith("v"):
            base = base.rsplit("/", 1)[0]
        return base + "/v2"

    def run_sync(self, slug: str, params: dict[str, Any]):
        response = self.http.post(f"/{slug}", json=params)
        raise_for_status(response)
        return response

    def submit(self, slug: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self.http.request("POST", self.v2_base() + "/" + slug.lstrip("/"), json=params)
        raise_for_status(response)
        body = response.json()
        if not isinstance(body, dict):
            raise SegmindError(status=response.status_code, detail="v2 submit answered something not a JSON object")
        return body

    def _fetch(self, url: str) -> dict[str, Any]:
        response = self.http.request("GET", url)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("status") in _TERMINAL_STATES:
            return body
        if response.is_success:
            return body if isinstance(body, dict) else {}
        raise_for_status(response)
        return body

    def status(self, job: JobHandle) -> dict[str, Any]:
        return self._fetch(_url(job.status_url, job))

    def result(self, job: JobHandle) -> dict[str, Any]:
        return self._fetch(_url(job.response_url, job))

    def cancel(self, job: JobHandle) -> dict[str, Any]:
        response = self.http.request("DELETE", _url(job.response_url, job))
        raise_for_status(response)
        return response.json()

    def pause(self, job: JobHandle, seconds: float) -> None:
        time.sleep(seconds)


def _url(url: str | None, job: JobHandle) -> str:
    """A job's status or response URL (every job an HTTP submit returns has both: ``SegmindClient`` checks)."""
    if not url:
        raise SegmindError(
            status=None, detail=f"request {job.request_id!r} has no URL to poll (not submitted over HTTP)"
        )
    return url
