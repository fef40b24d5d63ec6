"""What ``SegmindClient`` and ``AsyncJob`` need of a backend (``HttpBackend`` over the wire, ``LocalEngine``
in-process), as Protocols: the backends depend on these, not on the client module, so the facade has no import
cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx


class JobHandle(Protocol):
    """A submitted job as a backend reads it (``AsyncJob`` is one)."""

    @property
    def request_id(self) -> str: ...

    @property
    def status_url(self) -> str | None: ...

    @property
    def response_url(self) -> str | None: ...


class Backend(Protocol):
    """Submit, read, cancel and wait for jobs: the calls ``SegmindClient`` and ``AsyncJob`` make."""

    def run_sync(self, slug: str, params: dict[str, Any]) -> httpx.Response: ...

    def submit(self, slug: str, params: dict[str, Any]) -> dict[str, Any]: ...

    def status(self, job: JobHandle) -> dict[str, Any]: ...

    def result(self, job: JobHandle) -> dict[str, Any]: ...

    def cancel(self, job: JobHandle) -> dict[str, Any]: ...

    def pause(self, job: JobHandle, seconds: float) -> None:
        """Wait up to ``seconds`` before the next status read (in-process: wakes when the job ends)."""
