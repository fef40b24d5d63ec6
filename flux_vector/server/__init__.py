"""The HTTP server: Segmind's API shape over the job queue (``create_app``) and the ``flux-vector serve`` entry."""

from .app import ApiError, create_app

__all__ = ["ApiError", "create_app"]
