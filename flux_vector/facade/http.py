"""The HTTP backend: what the ``segmind`` SDK sends on the wire (docs: the SDK's headers, v1 and v2 URLs, errors)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..jobs import COMPLETED, FAILED
from .errors import SegmindError, raise_for_status

if TYPE_CHECKING:
    from .client import AsyncJob, SegmindClient

_TERMINAL_STATES = (COMPLETED, FAILED)


class HttpBackend:
    """What the segmind SDK does on the wire (see docs/SEGMIND_SDK_WIRE.md)."""

    def __init__(self, client: SegmindClient):
        import httpx

        headers = {"User-Agent": f"flux-vector/{__version__} (segmind-python-sdk compatible)", "X-Initiator": "SDK-PY"}
        if client.api_key:
            headers["x-api-key"] = client.api_key
        self.base_url = client.base_url
        self.http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(client.timeout, connect=5.0), base_url=client.base_url
        )

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

    def status(self, job: AsyncJob) -> dict[str, Any]:
        return self._fetch(job.status_url)

    def result(self, job: AsyncJob) -> dict[str, Any]:
        return self._fetch(job.response_url)

    def cancel(self, job: AsyncJob) -> dict[str, Any]:
        response = self.http.request("DELETE", job.response_url)
        raise_for_status(response)
        return response.json()

    def pause(self, job: AsyncJob, seconds: float) -> None:
        time.sleep(seconds)
