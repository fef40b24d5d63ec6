"""The v2 job queue's storage interface: ``JobStore``, the ``Job`` record, its states and the store errors.

A job goes QUEUED -> PROCESSING -> COMPLETED | FAILED. A store owns ordering (first in, first out), the queue bound,
the retention of finished jobs (``retention_s`` after completion a job and its images are gone, as if they had never
existed) and recovery after a crash. Two stores implement it: ``SQLiteJobStore`` (``sqlite_store.py``, the embedded
default) and ``RedisJobStore`` (``redis_store.py``: many API processes and GPU workers on many machines); nothing
above ``jobs/`` knows which store it talks to. ``tests/test_store_contract.py`` runs the same scenarios on both.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..request import GenerationRequest, stored_params


class JobState(StrEnum):
    """A job's state; each is its own name as a string (``"QUEUED"``), as the stores and the API bodies write it."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


QUEUED, PROCESSING, COMPLETED, FAILED = JobState.QUEUED, JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED
STATES: tuple[JobState, ...] = tuple(JobState)
TERMINAL: tuple[JobState, ...] = (COMPLETED, FAILED)
DEFAULT_RETENTION_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 2  # a job caught PROCESSING by a crash runs once more, then FAILS (a job that kills the process)


class QueueFull(RuntimeError):
    """``submit`` found ``max_queue`` jobs already waiting."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        super().__init__(f"the queue is full ({max_queue} jobs waiting); retry later")


class UserQueueFull(QueueFull):
    """``submit`` found ``max_queue_per_user`` jobs of this user already waiting."""

    def __init__(self, max_queue_per_user: int, user: str):
        self.max_queue, self.user = max_queue_per_user, user
        RuntimeError.__init__(
            self,
            f"you have {max_queue_per_user} jobs waiting, the most one user may queue on this server; retry when one "
            "has started",
        )


class StoreLocked(RuntimeError):
    """Another process already serves this store."""


# the ``error`` of a job its client cancelled (a FAILED job's reason, not a state)
CANCELLED_REASON = "cancelled by the client (DELETE /v2/requests/{id} or AsyncJob.cancel())"


class StoreWriteError(RuntimeError):
    """A result could not be stored (disk full, the images folder unwritable): the job FAILS with this reason."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (a shared store's server is down or the URL is wrong)."""


class StoreFull(StoreUnavailable):
    """The store refuses writes because it is full (Redis at its ``maxmemory``): a submit is 503 with Retry-After,
    never a job's failure."""


SETTLE_RETRY_S = 5.0  # how long a store without leases retries saving a result before it gives the job up


class LeaseLost(RuntimeError):
    """This worker no longer owns the job (a shared store gave it to another worker after its lease ran out, or it
    finished elsewhere): whatever this worker computed for it is discarded."""


@dataclass
class Job:
    """One request as the store holds it: ``request`` is the validated request as submitted (stored with the fields
    its caller set, ``request.stored_params``), parsed once at the edge and never again."""

    id: str
    slug: str
    request: GenerationRequest
    state: JobState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    step: int | None = None
    total_steps: int | None = None
    error: str | None = None
    # COMPLETED: what the worker recorded (echoed parameters, sizes, timings, media type, image count).
    result: dict[str, Any] = field(default_factory=dict)
    position: int | None = None  # QUEUED: jobs submitted before this one and still waiting (all users)
    user: str = ""  # who submitted it (the name of its API key; "" on a server without keys)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def params(self) -> dict[str, Any]:
        """The request's parameters as stored: the fields its caller set."""
        return stored_params(self.request)


@dataclass
class Recovery:
    """What ``recover`` did with the jobs a dead process left PROCESSING."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    queued: int = 0  # jobs waiting (including the requeued ones)


class JobStore(ABC):
    """The queue and the results. Every method is safe to call from any thread.

    The abstract methods are the queue itself; the others are capabilities a store may have, each with the default
    of a store without it, so that callers never ask a store what it is.
    """

    retention_s: float
    kind = "store"
    # True when ``claim`` itself waits (a while) for work to arrive: the worker then calls it again at once
    claim_blocks = False
    # True when many processes share the store (API processes, workers on other machines): ``workers()`` lists the
    # live ones and ``add_finished_listener`` hears of jobs any of them finished
    shared = False
    # Counters of what this process's worker side did that only a shared store can tell (jobs taken over from dead
    # workers, leases lost, ...); empty for a store that keeps none
    stats: Mapping[str, int] = MappingProxyType({})
    # The exceptions that mean "the store cannot be reached now, try again" (the server answers them 503 with
    # Retry-After): a network store's connection errors; StoreUnavailable on every store
    unavailable_errors: tuple[type[Exception], ...] = (StoreUnavailable,)
    # The exceptions that mean the store (not the model, not the request) failed: the worker never reports them as
    # a model error; while saving a result raises one it retries until ``settle_deadline``, then ``abandon``s the job
    store_errors: tuple[type[Exception], ...] = (StoreUnavailable, StoreWriteError)

    @abstractmethod
    def submit(
        self,
        slug: str,
        request: GenerationRequest,
        *,
        max_queue: int | None = None,
        user: str = "",
        max_queue_per_user: int | None = None,
    ) -> Job:
        """Enqueue a job of ``user`` (state QUEUED) for a request parsed at the edge (stored as
        ``request.stored_params``); raise ``QueueFull`` when ``max_queue`` jobs are already waiting,
        ``UserQueueFull`` when ``max_queue_per_user`` of this user's are."""

    @abstractmethod
    def claim(self) -> Job | None:
        """Take the next QUEUED job: it becomes PROCESSING (``attempts`` + 1). None when the queue is empty.

        Fair share: the next job is the oldest of the user served least recently (a user never served first, then
        by their oldest job), so users take turns whatever one of them queued; within a user, first in first out."""

    @abstractmethod
    def progress(self, job_id: str, step: int, total: int) -> None:
        """Record sampling progress of a PROCESSING job."""

    @abstractmethod
    def complete(self, job_id: str, images: list[bytes], result: dict[str, Any]) -> Job:
        """PROCESSING -> COMPLETED with the encoded images (``result["ext"]`` names their format) and metadata."""

    @abstractmethod
    def fail(self, job_id: str, error: str) -> Job:
        """-> FAILED with a human-readable error."""

    @abstractmethod
    def requeue(self, job_id: str) -> None:
        """PROCESSING -> QUEUED, keeping its place and not counting the attempt (a worker shutting down cleanly)."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""

    @abstractmethod
    def image(self, job_id: str, index: int) -> bytes | None:
        """The encoded image ``index`` of a COMPLETED, unexpired job, else None."""

    @abstractmethod
    def expire(self, now: float | None = None) -> int:
        """Delete the jobs (and images) finished more than ``retention_s`` ago; return how many."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Live (unexpired) jobs per state, every state present."""

    @abstractmethod
    def recover(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Recovery:
        """At start: jobs a dead process left PROCESSING run again, or FAIL after ``max_attempts`` tries."""

    def image_file(self, job_id: str, index: int) -> Path | None:
        """The file on this machine's disk that holds image ``index`` of a COMPLETED, unexpired job; None when the
        store does not keep images as local files (a shared store serves them as bytes only) or there is no such
        image. ``image`` reads the bytes on every store."""
        return None

    def workers(self) -> list[dict[str, Any]]:
        """The live workers of a shared store, each a dict with its ``name`` and what it announced; empty for an
        embedded store (its one worker is the serving process's own)."""
        return []

    def add_finished_listener(self, callback: Callable[[str], None]) -> bool:
        """Have ``callback(job_id)`` called (in a store thread) whenever any process finishes a job. False when the
        store cannot tell (an embedded store: only the local worker finishes jobs, and it has its own listeners)."""
        return False

    @abstractmethod
    def cancel(self, job_id: str, reason: str = CANCELLED_REASON) -> Job | None:
        """A QUEUED or PROCESSING job becomes FAILED with ``reason`` now (the worker running it stops at its next
        step); a finished job is returned unchanged; None for an unknown or expired one."""

    def check(self) -> None:  # noqa: B027 - optional capability
        """Raise ``StoreUnavailable`` with the reason when the store cannot be trusted to record jobs now (corrupt,
        unreadable, its disk nearly full); ``/healthz`` calls it."""

    def still_running(self, job_id: str) -> bool:
        """False once ``cancel`` (or anything else) ended a job this process is running: the worker checks it at
        every step. A store that cannot tell cheaply answers True and stops the run at its next state change."""
        return True

    def settle_deadline(self, job_id: str) -> float:
        """The ``time.monotonic()`` until which the worker may keep retrying to save ``job_id``'s result or failure
        (a shared store: while this worker's lease on it would still hold)."""
        return time.monotonic() + SETTLE_RETRY_S

    def abandon(self, job_id: str, reason: str) -> Job | None:
        """The worker could not save the end of ``job_id`` before ``settle_deadline``: give the job up. A store
        without leases records it FAILED with ``reason`` (which names the store) when it can; a shared store drops
        this worker's lease (no more heartbeats) so that another worker runs the job again. The job as recorded,
        or None when nothing could be recorded."""
        return self.fail(job_id, reason)

    def describe_store_error(self, exc: BaseException) -> str:
        """One line naming the store and what went wrong (never mistaken for a model error)."""
        text = str(exc) if isinstance(exc, (StoreUnavailable, StoreWriteError)) else f"{type(exc).__name__}: {exc}"
        return f"the job store ({self.kind}) failed: {self.redact(text)}"

    def serving_problem(self, workers: list[dict[str, Any]]) -> str | None:
        """Why none of the live ``workers`` (as ``workers()`` lists them) can run the jobs this process accepts (a
        shared store's mixed fleet: another model, LoRA or version); None when one can, or the store cannot tell."""
        return None

    def redact(self, text: str) -> str:
        """``text`` (an error message, a log line) without the store's secrets (a password)."""
        return text

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def new_job_id() -> str:
    """122 random bits: a request id is also the capability to read its result and images."""
    return uuid.uuid4().hex
