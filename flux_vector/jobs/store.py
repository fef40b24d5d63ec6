"""The v2 job queue's storage: a small ``JobStore`` interface and its embedded default, ``SQLiteJobStore``.

A job goes QUEUED -> PROCESSING -> COMPLETED | FAILED. The store owns ordering (first in, first out), the queue
bound, the retention of finished jobs (``retention_s`` after completion a job and its images are gone, as if they
had never existed) and recovery after a crash. ``RedisJobStore`` (``redis_store.py``: many API processes and GPU
workers on many machines) implements the same methods; nothing above this module knows which store it talks to.

``SQLiteJobStore`` keeps the rows in one SQLite file (WAL journal, ``synchronous=FULL``: a committed transition
survives a SIGKILL and a power cut) and the encoded images as files in a folder beside it, each written to a temporary
name, fsynced and renamed before the row that points at it is committed. One server process owns a store at a time
(an advisory lock on ``<file>.lock`` enforces it), which is what makes its crash recovery sound: at start, every job
still marked PROCESSING was orphaned by the previous process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

QUEUED, PROCESSING, COMPLETED, FAILED = "QUEUED", "PROCESSING", "COMPLETED", "FAILED"
STATES = (QUEUED, PROCESSING, COMPLETED, FAILED)
TERMINAL = (COMPLETED, FAILED)
DEFAULT_RETENTION_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 2  # a job caught PROCESSING by a crash runs once more, then FAILS (a job that kills the process)


class QueueFull(RuntimeError):
    """``submit`` found ``max_queue`` jobs already waiting."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        super().__init__(f"the queue is full ({max_queue} jobs waiting); retry later")


class StoreLocked(RuntimeError):
    """Another process already serves this store."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (a shared store's server is down or the URL is wrong)."""


class LeaseLost(RuntimeError):
    """This worker no longer owns the job (a shared store gave it to another worker after its lease ran out, or it
    finished elsewhere): whatever this worker computed for it is discarded."""


@dataclass
class Job:
    """One request as the store holds it. ``params`` are the request's parameters as submitted (validated)."""

    id: str
    slug: str
    params: dict[str, Any]
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    step: int | None = None
    total_steps: int | None = None
    error: str | None = None
    # COMPLETED: what the worker recorded (echoed parameters, sizes, timings, media type, image count).
    result: dict[str, Any] = field(default_factory=dict)
    position: int | None = None  # QUEUED: jobs ahead of this one

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


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

    @abstractmethod
    def submit(self, slug: str, params: dict[str, Any], *, max_queue: int | None = None) -> Job:
        """Enqueue a job (state QUEUED); raise ``QueueFull`` when ``max_queue`` jobs are already waiting."""

    @abstractmethod
    def claim(self) -> Job | None:
        """Take the oldest QUEUED job: it becomes PROCESSING (``attempts`` + 1). None when the queue is empty."""

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def new_job_id() -> str:
    """122 random bits: a request id is also the capability to read its result and images."""
    return uuid.uuid4().hex


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    slug TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    step INTEGER,
    total_steps INTEGER,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
_COLUMNS = (
    "seq, id, slug, params, state, created_at, started_at, finished_at, attempts, step, total_steps, error, result"
)


class SQLiteJobStore(JobStore):
    """The embedded store: one SQLite file plus an image folder ``<file stem>-images`` beside it.

    ``path=":memory:"`` keeps rows in memory (the images still go to ``image_dir``, which is then required); the
    in-process facade uses a private file instead so that it behaves exactly like the server.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        image_dir: str | os.PathLike | None = None,
        synchronous: str = "FULL",
        exclusive: bool = True,
    ):
        if retention_s <= 0:
            raise ValueError(f"retention_s={retention_s!r} is not allowed; it must be a positive number of seconds")
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r} is not allowed; one of OFF, NORMAL, FULL, EXTRA")
        self.retention_s = float(retention_s)
        self.path = str(path)
        memory = self.path == ":memory:"
        if memory and image_dir is None:
            raise ValueError("an in-memory store needs an image_dir")
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.image_dir = (
            Path(image_dir) if image_dir is not None else Path(self.path).with_name(Path(self.path).stem + "-images")
        )
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = None
        if exclusive and not memory:
            self._lock_file = _lock_exclusively(Path(self.path + ".lock"))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _cutoff(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.retention_s

    def _row_to_job(self, row: sqlite3.Row, position: int | None = None) -> Job:
        return Job(
            id=row["id"],
            slug=row["slug"],
            params=json.loads(row["params"]),
            state=row["state"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            step=row["step"],
            total_steps=row["total_steps"],
            error=row["error"],
            result=json.loads(row["result"]) if row["result"] else {},
            position=position,
        )

    def _fetch(self, db, job_id: str) -> sqlite3.Row:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id!r}")
        return row

    def _image_path(self, job_id: str, index: int, ext: str) -> Path:
        """Where image ``index`` of a job lives (whether or not it exists yet)."""
        return self.image_dir / f"{job_id}-{index}.{ext}"

    # ------------------------------------------------------------------------------------------- interface
    def submit(self, slug: str, params: dict[str, Any], *, max_queue: int | None = None) -> Job:
        job = Job(id=new_job_id(), slug=slug, params=dict(params), state=QUEUED, created_at=time.time())
        encoded = json.dumps(job.params, allow_nan=False)
        with self._tx() as db:
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
            if max_queue is not None and waiting >= max_queue:
                raise QueueFull(max_queue)
            db.execute(
                "INSERT INTO jobs (id, slug, params, state, created_at) VALUES (?, ?, ?, ?, ?)",
                (job.id, slug, encoded, QUEUED, job.created_at),
            )
        job.position = waiting
        return job

    def claim(self) -> Job | None:
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, step = 0, total_steps = NULL "
                "WHERE seq = ?",
                (PROCESSING, time.time(), row["seq"]),
            )
            return self._row_to_job(self._fetch(db, row["id"]))

    def progress(self, job_id: str, step: int, total: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET step = ?, total_steps = ? WHERE id = ? AND state = ?",
                (step, total, job_id, PROCESSING),
            )

    def complete(self, job_id: str, images: list[bytes], result: dict[str, Any]) -> Job:
        ext = result["ext"]
        result = {**result, "count": len(images)}
        paths = [self._image_path(job_id, i, ext) for i in range(len(images))]
        for path, data in zip(paths, images, strict=True):
            _write_durably(path, data)
        _fsync_dir(self.image_dir)
        try:
            with self._tx() as db:
                self._fetch(db, job_id)
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = NULL WHERE id = ?",
                    (COMPLETED, time.time(), json.dumps(result, allow_nan=False), job_id),
                )
                return self._row_to_job(self._fetch(db, job_id))
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise

    def fail(self, job_id: str, error: str) -> Job:
        with self._tx() as db:
            self._fetch(db, job_id)
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (FAILED, time.time(), str(error) or "the job failed", job_id),
            )
            return self._row_to_job(self._fetch(db, job_id))

    def requeue(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, started_at = NULL, attempts = MAX(attempts - 1, 0), step = NULL, "
                "total_steps = NULL WHERE id = ? AND state = ?",
                (QUEUED, job_id, PROCESSING),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND (finished_at IS NULL OR finished_at >= ?)",
                (job_id, self._cutoff()),
            ).fetchone()
            if row is None:
                return None
            position = None
            if row["state"] == QUEUED:
                position = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = ? AND seq < ?", (QUEUED, row["seq"])
                ).fetchone()[0]
            return self._row_to_job(row, position)

    def image(self, job_id: str, index: int) -> bytes | None:
        path = self.image_file(job_id, index)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # expired between the check and the read
            return None

    def image_file(self, job_id: str, index: int) -> Path | None:
        job = self.get(job_id)
        if job is None or job.state != COMPLETED or not 0 <= index < job.result.get("count", 0):
            return None
        path = self._image_path(job_id, index, job.result["ext"])
        return path if path.exists() else None

    def expire(self, now: float | None = None) -> int:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, result FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (self._cutoff(now),)
            ).fetchall()
            db.execute("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (self._cutoff(now),))
        for row in rows:
            result = json.loads(row["result"]) if row["result"] else {}
            for i in range(result.get("count", 0)):
                self._image_path(row["id"], i, result["ext"]).unlink(missing_ok=True)
        return len(rows)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        with self._lock:
            for state, n in self._db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE finished_at IS NULL OR finished_at >= ? GROUP BY state",
                (self._cutoff(),),
            ):
                out[state] = n
        return out

    def recover(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Recovery:
        report = Recovery()
        with self._tx() as db:
            for row in db.execute("SELECT id, attempts FROM jobs WHERE state = ? ORDER BY seq", (PROCESSING,)):
                if row["attempts"] >= max_attempts:
                    report.failed.append(row["id"])
                else:
                    report.requeued.append(row["id"])
            now = time.time()
            for job_id in report.failed:
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                    (
                        FAILED,
                        now,
                        f"the server stopped (crashed or was killed) while this job was running, "
                        f"{max_attempts} times; it was not retried again",
                        job_id,
                    ),
                )
            for job_id in report.requeued:
                db.execute(
                    "UPDATE jobs SET state = ?, started_at = NULL, step = NULL, total_steps = NULL WHERE id = ?",
                    (QUEUED, job_id),
                )
            report.queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
        self._remove_orphan_images()
        return report

    def _remove_orphan_images(self) -> None:
        """Image files no COMPLETED row points at (a crash between writing them and committing)."""
        with self._lock:
            live = {row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state = ?", (COMPLETED,))}
        for path in self.image_dir.iterdir():
            job_id = path.name.split("-", 1)[0].split(".", 1)[0]
            if job_id not in live:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_exclusively(path: Path):
    handle = open(path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: no advisory lock, one server per store is on the user
        return handle
    except OSError:
        handle.close()
        raise StoreLocked(
            f"{path.with_suffix('')} is in use by another flux-vector server; give this one its own --store"
        ) from None
    return handle
