"""The v2 job queue: a ``JobStore`` (embedded default: ``SQLiteJobStore``) and the ``Worker`` that owns the model.

Used by the HTTP server (``flux_vector.server``) and by the in-process facade (``flux_vector.facade``).
"""

from .bodies import result_body, status_body
from .sqlite_store import SQLiteJobStore
from .store import (
    COMPLETED,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION_S,
    FAILED,
    PROCESSING,
    QUEUED,
    STATES,
    TERMINAL,
    Job,
    JobStore,
    QueueFull,
    Recovery,
    StoreLocked,
    UserQueueFull,
)
from .worker import ModelCannot, Worker, describe_error

__all__ = [
    "COMPLETED",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETENTION_S",
    "FAILED",
    "PROCESSING",
    "QUEUED",
    "STATES",
    "TERMINAL",
    "Job",
    "JobStore",
    "ModelCannot",
    "QueueFull",
    "Recovery",
    "SQLiteJobStore",
    "StoreLocked",
    "UserQueueFull",
    "Worker",
    "describe_error",
    "result_body",
    "status_body",
]
