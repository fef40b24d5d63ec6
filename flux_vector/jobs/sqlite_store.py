"""``SQLiteJobStore``: the embedded default store, one SQLite file with the images as files beside it.

The rows live in one SQLite file (WAL journal, ``synchronous=FULL``: a committed transition survives a SIGKILL and a
power cut) and the encoded images as files in a folder beside it, each written to a temporary name, fsynced and
renamed before the row that points at it is committed. One server process owns a store at a time (an advisory lock
on ``<file>.lock`` enforces it), which is what makes its crash recovery sound: at start, every job still marked
PROCESSING was orphaned by the previous process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..request import GenerationRequest, from_stored, stored_params
from .store import (
    CANCELLED_REASON,
    COMPLETED,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION_S,
    FAILED,
    PROCESSING,
    QUEUED,
    STATES,
    Job,
    JobState,
    JobStore,
    LeaseLost,
    QueueFull,
    Recovery,
    StoreLocked,
    StoreUnavailable,
    StoreWriteError,
    UserQueueFull,
    new_job_id,
)

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
    result TEXT,
    user TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS users_served (
    user TEXT PRIMARY KEY,
    served INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
_COLUMNS = (
    "seq, id, slug, params, state, created_at, started_at, finished_at, attempts, step, total_steps, error, result, "
    "user"
)
_USER_INDEX = "CREATE INDEX IF NOT EXISTS jobs_state_user_seq ON jobs (state, user, seq)"
# Fair share: the users with queued jobs, the one served least recently first (never served: 0), then by their
# oldest job; that user's oldest job is next.
_NEXT_JOB = """
SELECT q.first FROM (SELECT user, MIN(seq) AS first FROM jobs WHERE state = ? GROUP BY user) AS q
LEFT JOIN users_served AS s ON s.user = q.user
ORDER BY COALESCE(s.served, 0), q.first LIMIT 1
"""


class SQLiteJobStore(JobStore):
    """The embedded store: one SQLite file plus an image folder ``<file stem>-images`` beside it.

    ``path=":memory:"`` keeps rows in memory (the images still go to ``image_dir``, which is then required); the
    in-process facade uses a private file instead so that it behaves exactly like the server. ``clock``: where the
    job times and retention come from (``time.time``; a test passes one it advances instead of sleeping).
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
        clock: Callable[[], float] = time.time,
    ):
        if retention_s <= 0:
            raise ValueError(f"retention_s={retention_s!r} is not allowed; it must be a positive number of seconds")
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r} is not allowed; one of OFF, NORMAL, FULL, EXTRA")
        self.retention_s = float(retention_s)
        self.clock = clock  # wall-clock seconds: job times and retention (tests pass a clock they advance)
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
        self._lock_files: list = []
        self._connection: sqlite3.Connection | None = None  # set once opened; close() after a failed open unlocks
        if exclusive and not memory:
            # one writer per store whatever the path: the lock file of the resolved path (symlinks, "..") and an OS
            # lock on the database file itself (hard links, bind mounts)
            real = Path(self.path).resolve()
            self._lock_files.append(_lock_exclusively(Path(str(real) + ".lock"), real))
            self._lock_files.append(_lock_exclusively(real, real))
        self._lock = threading.RLock()
        self._ended: set[str] = set()  # jobs cancelled while QUEUED or PROCESSING (still_running: False)
        self._checked_at = float("-inf")
        self._reserve = None if memory else Path(self.path + ".reserve")
        try:
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._add_user_column()
            self._quick_check()
            self._reserve_space()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreUnavailable(
                f"{self.path} is not a usable job database ({exc}); restore it from a backup, or move it (and its "
                "-wal file) away to start with an empty store"
            ) from None

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:  # only a failed open leaves it unset, and that raised
            raise StoreUnavailable(f"the job database {self.path} is not open")
        return self._connection

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

    def _add_user_column(self) -> None:
        """A store written before jobs had owners: the column added (their jobs belong to "")."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "user" not in columns:
            self._db.execute("ALTER TABLE jobs ADD COLUMN user TEXT NOT NULL DEFAULT ''")
        self._db.execute(_USER_INDEX)

    def _cutoff(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.retention_s

    def _row_to_job(self, row: sqlite3.Row, position: int | None = None) -> Job:
        return Job(
            id=row["id"],
            slug=row["slug"],
            request=from_stored(json.loads(row["params"])),
            state=JobState(row["state"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            step=row["step"],
            total_steps=row["total_steps"],
            error=row["error"],
            result=json.loads(row["result"]) if row["result"] else {},
            position=position,
            user=row["user"],
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
    def submit(
        self,
        slug: str,
        request: GenerationRequest,
        *,
        max_queue: int | None = None,
        user: str = "",
        max_queue_per_user: int | None = None,
    ) -> Job:
        job = Job(id=new_job_id(), slug=slug, request=request, state=QUEUED, created_at=self.clock(), user=user)
        encoded = json.dumps(stored_params(request), allow_nan=False)
        with self._tx() as db:
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
            if max_queue is not None and waiting >= max_queue:
                raise QueueFull(max_queue)
            if max_queue_per_user is not None:
                mine = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ? AND user = ?", (QUEUED, user)).fetchone()[
                    0
                ]
                if mine >= max_queue_per_user:
                    raise UserQueueFull(max_queue_per_user, user)
            db.execute(
                "INSERT INTO jobs (id, slug, params, state, created_at, user) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, slug, encoded, QUEUED, job.created_at, user),
            )
        job.position = waiting
        return job

    def claim(self) -> Job | None:
        with self._tx() as db:
            first = db.execute(_NEXT_JOB, (QUEUED,)).fetchone()
            if first is None:
                return None
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE seq = ?", (first[0],)).fetchone()
            db.execute(
                "INSERT INTO users_served (user, served) "
                "VALUES (?, (SELECT COALESCE(MAX(served), 0) + 1 FROM users_served)) "
                "ON CONFLICT (user) DO UPDATE SET served = excluded.served",
                (row["user"],),
            )
            db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, step = 0, total_steps = NULL "
                "WHERE seq = ?",
                (PROCESSING, self.clock(), row["seq"]),
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
        try:
            self.image_dir.mkdir(parents=True, exist_ok=True)  # deleted while running: made again
            for path, data in zip(paths, images, strict=True):
                _write_durably(path, data)
        except OSError as exc:
            for path in paths:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            raise StoreWriteError(f"storing the images in {self.image_dir} failed: {exc.strerror or exc}") from None
        _fsync_dir(self.image_dir)
        try:
            with self._tx() as db:
                row = self._fetch(db, job_id)
                if row["state"] != PROCESSING:  # cancelled, or settled already: never completed twice
                    raise LeaseLost(f"job {job_id} is {row['state']}, not PROCESSING; its result was discarded")
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = NULL WHERE id = ? AND state = ?",
                    (COMPLETED, self.clock(), json.dumps(result, allow_nan=False), job_id, PROCESSING),
                )
                return self._row_to_job(self._fetch(db, job_id))
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise

    def fail(self, job_id: str, error: str) -> Job:
        """Recorded even on a full disk: the first failure to write releases the reserve file and tries again."""
        try:
            return self._record_failure(job_id, error)
        except sqlite3.OperationalError:
            if not self._release_reserve():
                raise
            return self._record_failure(job_id, error)

    def _reserve_space(self) -> None:
        """``<db>.reserve``: RESERVE_BYTES of real blocks that ``fail`` frees when the disk is full."""
        if self._reserve is None or self._reserve.exists():
            return
        with contextlib.suppress(OSError):
            _write_durably(self._reserve, bytes(RESERVE_BYTES))

    def _release_reserve(self) -> bool:
        if self._reserve is None or not self._reserve.exists():
            return False
        self._reserve.unlink(missing_ok=True)
        return True

    def _record_failure(self, job_id: str, error: str) -> Job:
        with self._tx() as db:
            row = self._fetch(db, job_id)
            if row["state"] != PROCESSING:  # cancelled, or settled already: a settled job never changes again
                raise LeaseLost(f"job {job_id} is {row['state']}, not PROCESSING; its failure was not recorded")
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state = ?",
                (FAILED, self.clock(), str(error) or "the job failed", job_id, PROCESSING),
            )
            return self._row_to_job(self._fetch(db, job_id))

    def cancel(self, job_id: str, reason: str = CANCELLED_REASON) -> Job | None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state IN (?, ?)",
                (FAILED, self.clock(), reason, job_id, QUEUED, PROCESSING),
            )
            if db.execute("SELECT changes()").fetchone()[0]:
                self._ended.add(job_id)
        return self.get(job_id)

    def still_running(self, job_id: str) -> bool:
        return job_id not in self._ended

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
        out = {str(state): 0 for state in STATES}
        with self._lock:
            for state, n in self._db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE finished_at IS NULL OR finished_at >= ? GROUP BY state",
                (self._cutoff(),),
            ):
                out[state] = n
        return out

    def recover(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Recovery:
        self._refuse_lost_database()
        report = Recovery()
        with self._tx() as db:
            for row in db.execute("SELECT id, attempts FROM jobs WHERE state = ? ORDER BY seq", (PROCESSING,)):
                if row["attempts"] >= max_attempts:
                    report.failed.append(row["id"])
                else:
                    report.requeued.append(row["id"])
            now = self.clock()
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

    unavailable_errors = (StoreUnavailable, sqlite3.DatabaseError)  # corrupt, locked, disk full: 503, not 500
    store_errors = (StoreUnavailable, StoreWriteError, sqlite3.Error)

    def _quick_check(self) -> None:
        with self._lock:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems))

    def check(self) -> None:
        """The database's quick_check (at most every ``CHECK_EVERY_S``) and the free space on its disk."""
        try:
            self.image_dir.mkdir(parents=True, exist_ok=True)  # deleted while running: made again
            free = shutil.disk_usage(self.image_dir).free
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StoreUnavailable(f"the images folder {self.image_dir} cannot be used: {reason}") from None
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(
                f"only {free >> 20} MiB free on the disk of {self.image_dir} (at least {MIN_FREE_BYTES >> 20} MiB "
                "are kept free so that results and failures can be recorded)"
            )
        self._reserve_space()
        if time.monotonic() - self._checked_at >= CHECK_EVERY_S:
            try:
                self._quick_check()
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(f"the job database {self.path} is damaged: {exc}") from None
            self._checked_at = time.monotonic()

    def _refuse_lost_database(self) -> None:
        """An empty database beside image files was lost or replaced (copied without its -wal file, deleted): the
        orphan sweep would delete every image, so refuse to start instead."""
        with self._lock:
            jobs = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        images = sum(1 for path in self.image_dir.iterdir() if not path.name.endswith(".tmp")) if not jobs else 0
        if images:
            raise StoreUnavailable(
                f"the database {self.path} holds no jobs but {images} image file(s) lie in {self.image_dir}: the "
                "database was lost or replaced (a copy without its -wal file?). Restore it (with its -wal file), or "
                "move the images folder away to start with an empty store; nothing was deleted"
            )

    def _remove_orphan_images(self) -> None:
        """Image files no COMPLETED row points at (a crash between writing them and committing)."""
        with self._lock:
            live = {row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state = ?", (COMPLETED,))}
        for path in self.image_dir.iterdir():
            job_id = path.name.split("-", 1)[0].split(".", 1)[0]
            if job_id not in live:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._connection is None:  # failed while opening
            self._release_locks()
            return
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # a clean stop leaves every row in the database file itself
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        self._release_locks()

    def _release_locks(self) -> None:
        for handle in self._lock_files:
            handle.close()
        self._lock_files.clear()


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


_NEVER_CLOSED: list = []
MIN_FREE_BYTES = 256 << 20  # /healthz is 503 below this much free space on the store's disk
CHECK_EVERY_S = 30.0  # how often /healthz runs the database's quick_check
RESERVE_BYTES = 4 << 20  # freed to record failures when the disk is full


def _lock_exclusively(path: Path, store: Path):
    """``path`` opened and flock-ed exclusively for the store's lifetime; StoreLocked when another holds it."""
    handle = open(path, "ab")  # noqa: SIM115 - held open for the store's lifetime
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: no advisory lock, one server per store is on the user
        return handle
    except OSError:
        if path == store:
            # closing a descriptor of the database file would drop every POSIX lock this process's SQLite holds on
            # it (another store on a hard link of it): keep the descriptor open instead
            _NEVER_CLOSED.append(handle)
        else:
            handle.close()
        raise StoreLocked(
            f"{store} is in use by another flux-vector server (or store); give this one its own --store"
        ) from None
    return handle
