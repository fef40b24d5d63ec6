"""The ``segmind`` SDK's errors, with its attributes: ``SegmindError.status`` / ``.detail``,
``InferenceFailed.status_body``, ``InferenceTimeout.request_id`` / ``.elapsed_s``."""

from __future__ import annotations

from typing import Any


class SegmindError(Exception):
    """Base class of every error (as ``segmind.SegmindError``): ``status`` (HTTP code or None) and ``detail``."""

    title: str | None = None
    status: int | None = None
    detail: str | None = None

    def __init__(self, status: int | None = None, detail: str | None = None) -> None:
        self.status = status
        self.detail = detail

    @classmethod
    def from_response(cls, response) -> SegmindError:
        try:
            data = response.json()
            if not isinstance(data, dict):
                data = {}
        except ValueError:
            data = {}
        return cls(detail=data.get("error"), status=response.status_code)

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail}

    def __str__(self) -> str:
        return "\n-----SegmindError Details-----\n" + "\n".join(f"{k}: {v}" for k, v in self.to_dict().items())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(status={self.status}, detail={self.detail})"


class InferenceFailed(SegmindError):
    """The request reached FAILED: the error in ``detail``, the status body in ``status_body``."""

    status_body: dict[str, Any]

    def __init__(self, detail: str | None, status_body: dict[str, Any]) -> None:
        super().__init__(status=None, detail=detail)
        self.status_body = status_body


class InferenceTimeout(SegmindError):
    """``wait`` passed its ``timeout`` before a terminal state; the job may still finish."""

    request_id: str
    elapsed_s: float

    def __init__(self, request_id: str, elapsed_s: float) -> None:
        super().__init__(status=None, detail=f"v2 request {request_id!r} did not complete within {elapsed_s:.1f}s")
        self.request_id = request_id
        self.elapsed_s = elapsed_s


def raise_for_status(response) -> None:
    if not (200 <= response.status_code < 400):
        raise SegmindError.from_response(response)
