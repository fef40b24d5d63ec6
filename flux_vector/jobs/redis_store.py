"""``RedisJobStore``: the job queue on Redis, for many API processes and many GPU workers on many machines.

Only Redis's own primitives, no scheduler of ours:

- **Delivery** is a Redis stream (``<prefix>queue``) read by one consumer group (``workers``): ``XREADGROUP`` hands
  each new entry to exactly one worker and keeps it in the group's pending list until that worker acknowledges it.
- **Leases**: a worker renews its entry every ``lease_s / 3`` (``XCLAIM ... JUSTID`` resets the entry's idle time,
  and the job's ``heartbeat_at``). An entry idle for ``lease_s`` belongs to a dead worker (SIGKILL, power, network):
  any worker takes it over with ``XAUTOCLAIM`` and runs the job again, up to ``max_attempts`` runs in all; then the
  job is FAILED with an error saying so. At-least-once delivery: a job may run twice, it is never *completed* twice.
- **Every state change is one Lua script** (atomic across the job hash, the indexes, the stream and the images). Each
  run of a job gets a random owner token; ``progress``/``complete``/``fail``/``requeue`` change the job only while
  it is still PROCESSING under that token. A worker whose lease ran out (its job now re-running elsewhere) gets
  ``LeaseLost`` and its result is thrown away, so a job reaches COMPLETED once, with one set of images; completing
  again with the same token is a no-op (idempotent).
- **Retention is key expiry**: at COMPLETED/FAILED the job hash and its images (stored in Redis as bytes, so any API
  process serves them) get ``PEXPIRE`` of the job's retention (fixed at submit by the API process that accepted
  it); Redis deletes them, nothing sweeps. Sorted-set indexes scored by expiry time give the per-state counts.
- **Timestamps come from Redis's clock** (``TIME`` inside the scripts), so queue and run times are consistent across
  machines whose clocks disagree.
- Finished jobs are announced on a pub/sub channel, which wakes ``POST /v1`` requests waiting in any API process.

Keys (``<prefix>`` defaults to ``flux_vector:``; give two deployments on one Redis two databases or prefixes):
``job:<id>`` hash, ``img:<id>:<n>`` image bytes, ``queue`` stream, ``seq`` counter, ``queued`` (id -> seq, the FIFO
positions), ``processing`` (id -> start), ``completed``/``failed`` (id -> expiry), ``workers`` + ``worker:<name>``
(live workers, each key expiring unless renewed), channel ``events``. Redis Cluster is not supported (the scripts
touch keys in several slots); use one Redis (with a replica/Sentinel for availability, AOF for durability).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from . import redis_fair
from . import redis_scripts as lua
from .store import (
    CANCELLED,
    COMPLETED,
    DEFAULT_RETENTION_S,
    FAILED,
    PROCESSING,
    QUEUED,
    Job,
    JobStore,
    LeaseLost,
    QueueFull,
    Recovery,
    StoreUnavailable,
    UserQueueFull,
    new_job_id,
)

DEFAULT_PREFIX = "flux_vector:"
DEFAULT_LEASE_S = 60.0
DEFAULT_REDIS_MAX_ATTEMPTS = 3  # a lease can also run out through a network partition, not only a crash: one more try
GROUP = "workers"
_REQUEUED_IDLE_MS = 365 * 24 * 3600 * 1000  # a requeued entry looks idle "for a year": the next XAUTOCLAIM takes it


def is_redis_url(value: Any) -> bool:
    return str(value).startswith(("redis://", "rediss://", "unix://"))


@dataclass
class _Lease:
    job_id: str
    entry: str
    token: str


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _float(value) -> float | None:
    value = _text(value)
    return None if value in (None, "") else float(value)


def _int(value) -> int | None:
    value = _text(value)
    return None if value in (None, "") else int(value)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class RedisJobStore(JobStore):
    """The queue and results on one Redis server, shared by any number of API processes and workers.

    ``lease_s``, ``max_attempts`` and ``name`` (the consumer name) matter to workers only: give every worker the same
    ``lease_s``. ``retention_s`` matters to API processes: each job keeps the retention of the process that accepted
    it. ``claim`` blocks up to ``claim_block_s`` waiting for work.
    """

    kind = "redis"
    claim_blocks = True
    shared = True

    def __init__(
        self,
        client,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_REDIS_MAX_ATTEMPTS,
        prefix: str = DEFAULT_PREFIX,
        name: str | None = None,
        claim_block_s: float = 1.0,
        log: Callable[[str], None] | None = None,
        url: str = "",
        secrets: tuple[str, ...] = (),
    ):
        if retention_s <= 0:
            raise ValueError(f"retention_s={retention_s!r} is not allowed; it must be a positive number of seconds")
        if lease_s <= 0:
            raise ValueError(f"lease_s={lease_s!r} is not allowed; it must be a positive number of seconds")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r} is not allowed; it must be at least 1")
        self.r = client
        self.url = url
        self._secrets = tuple(secret for secret in secrets if secret)
        self.retention_s, self.lease_s, self.max_attempts = float(retention_s), float(lease_s), int(max_attempts)
        self.prefix, self.claim_block_s = prefix, float(claim_block_s)
        self.name = name or default_worker_name()
        self.log = log or (lambda message: None)
        self.stats: dict[str, int] = {"reclaimed": 0, "leases_lost": 0, "failed_after_attempts": 0}
        k = self.key
        self._stream, self._seq, self._queued, self._processing = k("queue"), k("seq"), k("queued"), k("processing")
        self._completed, self._failed, self._workers = k("completed"), k("failed"), k("workers")
        self.channel = k("events")
        # fair share (redis_fair.py): per-user waiting jobs, users by last service, entry -> job bindings
        self._fair_users, self._fair_served, self._fair_tick = k("fair:users"), k("fair:served"), k("fair:tick")
        self._fair_queue_prefix, self._tickets = k("fair:q:"), k("fair:tickets")
        s = client.register_script
        self._submit, self._start, self._heartbeat = s(lua.SUBMIT), s(lua.START), s(lua.HEARTBEAT)
        self._progress, self._complete, self._fail = s(lua.PROGRESS), s(lua.COMPLETE), s(lua.FAIL)
        self._requeue, self._counts, self._expire = s(lua.REQUEUE), s(lua.COUNTS), s(lua.EXPIRE)
        self._pick = s(redis_fair.PICK)
        self._leases: dict[str, _Lease] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._announce: Callable[[], dict[str, Any]] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._listen_thread: threading.Thread | None = None
        try:
            client.ping()
            self._ensure_group()
        except Exception as exc:
            reason = self.redact(f"{type(exc).__name__}: {exc}")
            raise StoreUnavailable(f"cannot reach Redis at {url or 'the given client'}: {reason}") from None

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, **kwargs) -> RedisJobStore:
        """``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS, ``unix:///path.sock?db=0``). The
        password may be written unencoded (everything up to the last ``@`` is the user and password); better, it
        comes from ``password``, ``$FLUX_VECTOR_REDIS_PASSWORD`` or the file named by
        ``$FLUX_VECTOR_REDIS_PASSWORD_FILE`` (a URL on a command line is visible in ``ps``). It never appears in
        ``url``, errors or logs."""
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - redis is a dependency
            raise StoreUnavailable("the Redis store needs the redis package: pip install redis") from exc
        address, username, in_url = split_redis_url(url)
        if in_url and kwargs.get("log"):
            kwargs["log"](
                f"the Redis password is part of --store (visible in ps): set ${REDIS_PASSWORD_ENV} or "
                f"${REDIS_PASSWORD_FILE_ENV} instead"
            )
        secret = password or in_url or redis_password_from_env()
        client = redis.Redis.from_url(
            address,
            username=username,
            password=secret,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=15,
        )
        return cls(client, url=address, secrets=(secret,) if secret else (), **kwargs)

    @property
    def unavailable_errors(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

        return (StoreUnavailable, ConnectionError, TimeoutError, ReadOnlyError)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
        return text

    def key(self, name: str) -> str:
        return self.prefix + name

    def _job_key(self, job_id: str) -> str:
        return self.key(f"job:{job_id}")

    def _image_key(self, job_id: str, index: int) -> str:
        return self.key(f"img:{job_id}:{index}")

    def _ensure_group(self) -> None:
        import redis

        try:
            self.r.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def ping(self) -> bool:
        return bool(self.r.ping())

    # ------------------------------------------------------------------------------------------- reading
    def _job_from_hash(self, job_id: str, h: dict, position: int | None = None) -> Job:
        g = {_text(key): value for key, value in h.items()}
        result = _text(g.get("result"))
        return Job(
            id=job_id,
            slug=_text(g.get("slug")) or "",
            params=json.loads(_text(g.get("params")) or "{}"),
            state=_text(g.get("state")) or QUEUED,
            created_at=_float(g.get("created_at")) or 0.0,
            started_at=_float(g.get("started_at")),
            finished_at=_float(g.get("finished_at")),
            attempts=_int(g.get("attempts")) or 0,
            step=_int(g.get("step")),
            total_steps=_int(g.get("total_steps")),
            error=_text(g.get("error")),
            result=json.loads(result) if result else {},
            position=position,
            user=_text(g.get("user")) or "",
        )

    def get(self, job_id: str) -> Job | None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self._job_key(job_id))
        pipe.zrank(self._queued, job_id)
        h, rank = pipe.execute()
        if not h:
            return None
        job = self._job_from_hash(job_id, h)
        if job.state == QUEUED:
            job.position = rank if rank is not None else 0
        return job

    def worker_info(self, job_id: str) -> dict[str, Any]:
        """Who ran a job (this store's extra): ``worker`` (the last run), ``ran_on`` (every run, in order)."""
        worker, ran_on = self.r.hmget(self._job_key(job_id), "worker", "ran_on")
        return {"worker": _text(worker), "ran_on": (_text(ran_on) or "").split()}

    def image(self, job_id: str, index: int) -> bytes | None:
        if index < 0:
            return None
        return self.r.get(self._image_key(job_id, index))

    def counts(self) -> dict[str, int]:
        q, p, c, f = self._counts(keys=[self._queued, self._processing, self._completed, self._failed])
        return {QUEUED: int(q), PROCESSING: int(p), COMPLETED: int(c), FAILED: int(f)}

    # ------------------------------------------------------------------------------------------- API side
    def submit(
        self,
        slug: str,
        params: dict[str, Any],
        *,
        max_queue: int | None = None,
        user: str = "",
        max_queue_per_user: int | None = None,
    ) -> Job:
        job_id = new_job_id()
        encoded = json.dumps(dict(params), allow_nan=False)
        waiting, created = self._submit(
            keys=[
                self._seq,
                self._job_key(job_id),
                self._queued,
                self._stream,
                self._fair_users,
                self._fair_queue_prefix + user,
                self._fair_served,
            ],
            args=[
                job_id,
                slug,
                encoded,
                -1 if max_queue is None else int(max_queue),
                int(self.retention_s * 1000),
                user,
                -1 if max_queue_per_user is None else int(max_queue_per_user),
            ],
        )
        if int(waiting) == -2:
            raise UserQueueFull(int(max_queue_per_user or 0), user)
        if int(waiting) < 0:
            raise QueueFull(int(max_queue or 0))
        return Job(
            id=job_id,
            slug=slug,
            params=dict(params),
            state=QUEUED,
            created_at=float(_text(created)),
            position=int(waiting),
            user=user,
        )

    # ------------------------------------------------------------------------------------------- worker side
    def claim(self) -> Job | None:
        """Take over a job whose worker died (its lease ran out) or a requeued one, else wait up to
        ``claim_block_s`` for a new one. The job becomes PROCESSING, owned by this store until finished."""
        deadline = time.monotonic() + self.claim_block_s
        while not self._closed.is_set():
            entry = self._next_entry(max(0.0, deadline - time.monotonic()))
            if entry is None:
                return None
            job = self._begin(*entry)
            if job is not None:
                return job
            if time.monotonic() >= deadline:
                return None
        return None

    def _next_entry(self, block_s: float) -> tuple[str, str] | None:
        import redis

        try:
            stale = self.r.xautoclaim(
                self._stream, GROUP, self.name, min_idle_time=int(self.lease_s * 1000), start_id="0-0", count=1
            )
            if stale[1]:
                entry_id, fields = stale[1][0]
                return _text(entry_id), _text(fields.get(b"id"))
            block_ms = int(block_s * 1000)
            got = self.r.xreadgroup(GROUP, self.name, {self._stream: ">"}, count=1, block=block_ms or None)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHDB): start again
                self._ensure_group()
                return None
            raise
        if not got or not got[0][1]:
            return None
        entry_id, fields = got[0][1][0]
        return _text(entry_id), _text(fields.get(b"id"))

    def _begin(self, entry: str, job_id: str | None) -> Job | None:
        if job_id:  # a ticket (redis_fair.py): the job it is bound to, else the one the fair order says is next
            job_id = _text(
                self._pick(
                    keys=[
                        self._tickets,
                        self._fair_users,
                        self._fair_served,
                        self._fair_tick,
                        self._queued,
                        self._stream,
                    ],
                    args=[entry, self.key("job:"), self._fair_queue_prefix, GROUP],
                )
            )
        if not job_id:  # not one of ours, or nothing left to run for this ticket: drop it
            self.r.xack(self._stream, GROUP, entry)
            self.r.xdel(self._stream, entry)
            return None
        token = uuid.uuid4().hex
        reply = self._start(
            keys=[self._job_key(job_id), self._queued, self._processing, self._stream, self._failed],
            args=[job_id, entry, token, self.name, self.max_attempts, int(self.lease_s * 1000), GROUP, self.channel],
        )
        outcome = _text(reply[0])
        if outcome in ("failed", "gone", "done"):  # START dropped the entry: forget its binding
            self.r.hdel(self._tickets, entry)
        if outcome == "failed":
            self.stats["failed_after_attempts"] += 1
            self.log(f"job {job_id} FAILED: {_text(reply[1])}")
            return None
        if outcome != "ok":  # gone / done (a stale entry), alive (its worker still renews it)
            return None
        fields = reply[2]
        h = dict(zip(fields[::2], fields[1::2], strict=True))
        if _text(reply[1]) == PROCESSING:
            self.stats["reclaimed"] += 1
            self.log(
                f"job {job_id}: its worker stopped renewing its lease; running it again here "
                f"(attempt {_int(h.get(b'attempts'))} of {self.max_attempts})"
            )
        with self._lock:
            self._leases[job_id] = _Lease(job_id, entry, _text(h.get(b"owner")) or token)
            self._lost.discard(job_id)
        self._start_heartbeat()
        return self._job_from_hash(job_id, h)

    def _lease(self, job_id: str) -> _Lease | None:
        with self._lock:
            return self._leases.get(job_id)

    def _drop_lease(self, job_id: str) -> None:
        with self._lock:
            self._leases.pop(job_id, None)
            self._lost.discard(job_id)

    def _lease_lost(self, job_id: str, what: str) -> LeaseLost:
        self.stats["leases_lost"] += 1
        self._drop_lease(job_id)
        job = self.get(job_id)
        where = f"it is {job.state}" if job is not None else "it expired"
        return LeaseLost(
            f"job {job_id}: this worker's lease ran out and another worker took the job over ({where}); "
            f"{what} discarded"
        )

    def progress(self, job_id: str, step: int, total: int) -> None:
        lease = self._lease(job_id)
        if lease is None:
            return
        if job_id in self._lost or not self._progress(keys=[self._job_key(job_id)], args=[lease.token, step, total]):
            raise self._lease_lost(job_id, "the run in progress was")

    def complete(self, job_id: str, images: list[bytes], result: dict[str, Any]) -> Job:
        lease = self._lease(job_id)
        if lease is None:
            raise LeaseLost(f"job {job_id}: this worker holds no lease on it; its result was discarded")
        result = {**result, "count": len(images)}
        reply = self._complete(
            keys=[
                self._job_key(job_id),
                self._processing,
                self._completed,
                self._stream,
                *(self._image_key(job_id, i) for i in range(len(images))),
            ],
            args=[job_id, lease.token, lease.entry, GROUP, json.dumps(result, allow_nan=False), self.channel, *images],
        )
        if int(reply[0]) == 0:
            raise self._lease_lost(job_id, "its images were")
        self.r.hdel(self._tickets, lease.entry)  # COMPLETE removed the entry
        self._drop_lease(job_id)
        return self.get(job_id) or Job(id=job_id, slug="", params={}, state=COMPLETED, created_at=0.0, result=result)

    def fail(self, job_id: str, error: str) -> Job:
        lease = self._lease(job_id)
        reply = self._fail(
            keys=[self._job_key(job_id), self._processing, self._failed, self._stream, self._queued],
            args=[
                job_id,
                lease.token if lease else "",
                lease.entry if lease else "",
                GROUP,
                str(error) or "the job failed",
                self.channel,
                self._fair_queue_prefix,
            ],
        )
        if int(reply[0]) == 0:
            if lease is not None:
                raise self._lease_lost(job_id, "its failure was")
            state = _text(reply[1])
            if state in (COMPLETED, FAILED):  # settled already: a settled job never changes again
                raise LeaseLost(f"job {job_id} is {state}, not PROCESSING; its failure was not recorded")
            raise KeyError(f"job {job_id!r} is {state}; it cannot be failed")
        if lease is not None:
            self.r.hdel(self._tickets, lease.entry)  # FAIL removed the entry
        self._drop_lease(job_id)
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str, reason: str = CANCELLED) -> Job | None:
        """FAIL without a lease: the worker running it gets LeaseLost at its next progress write and stops."""
        self._fail(
            keys=[self._job_key(job_id), self._processing, self._failed, self._stream, self._queued],
            args=[job_id, "", "", GROUP, reason, self.channel, self._fair_queue_prefix],
        )
        return self.get(job_id)

    def requeue(self, job_id: str) -> None:
        lease = self._lease(job_id)
        if lease is None:
            return
        self._requeue(
            keys=[self._job_key(job_id), self._queued, self._processing, self._stream],
            args=[job_id, lease.token, lease.entry, GROUP, self.name, _REQUEUED_IDLE_MS],
        )
        self._drop_lease(job_id)

    def recover(self, max_attempts: int | None = None) -> Recovery:
        """Nothing to do at start: jobs of dead workers are taken over when their lease runs out (``claim``)."""
        if max_attempts is not None:
            self.max_attempts = int(max_attempts)
        self._ensure_group()
        return Recovery(queued=self.counts()[QUEUED])

    def expire(self, now: float | None = None) -> int:
        """Redis deletes expired jobs and images itself; this trims the count indexes and forgets consumers that
        left nothing pending (dead or stopped workers). Returns how many expired jobs left the indexes."""
        removed = int(self._expire(keys=[self._completed, self._failed], args=["" if now is None else repr(now)]))
        try:
            for consumer in self.r.xinfo_consumers(self._stream, GROUP):
                if consumer["pending"] == 0 and consumer["idle"] > max(600_000, self.lease_s * 10_000):
                    self.r.xgroup_delconsumer(self._stream, GROUP, consumer["name"])
        except Exception as exc:  # housekeeping only
            self.log(f"consumer cleanup: {type(exc).__name__}: {exc}")
        return removed

    # ------------------------------------------------------------------------------------------- heartbeat
    def announce(self, info: Callable[[], dict[str, Any]]) -> None:
        """Publish ``info()`` as this worker's entry in ``workers()`` with every heartbeat (until ``close``)."""
        self._announce = info
        self._start_heartbeat()

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beat_thread is not None or self._closed.is_set():
                return
            self._beat_thread = threading.Thread(target=self._beat_loop, name="flux-vector-lease", daemon=True)
            self._beat_thread.start()

    def _beat_loop(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # Redis unreachable: keep trying until the lease runs out
                self.log(f"heartbeat: {type(exc).__name__}: {exc}")

    def beat(self) -> None:
        """Renew this store's leases (and its worker entry). Runs every ``lease_s / 3`` in a thread."""
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            if not self._heartbeat(
                keys=[self._job_key(lease.job_id), self._stream], args=[lease.token, lease.entry, GROUP, self.name]
            ):
                with self._lock:
                    self._lost.add(lease.job_id)
        if self._announce is not None:
            info = {key: json.dumps(value) for key, value in self._announce().items()}
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(self.key(f"worker:{self.name}"), mapping=info)
            pipe.pexpire(self.key(f"worker:{self.name}"), int(self.lease_s * 1000))
            pipe.zadd(self._workers, {self.name: time.time()})
            pipe.execute()

    def workers(self) -> list[dict[str, Any]]:
        """The workers that renewed their entry within the lease: name plus what each announced."""
        names = [_text(n) for n in self.r.zrange(self._workers, 0, -1)]
        if not names:
            return []
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.key(f"worker:{name}"))
        out, gone = [], []
        for name, h in zip(names, pipe.execute(), strict=True):
            if not h:
                gone.append(name)
                continue
            out.append({"name": name, **{_text(k): json.loads(_text(v)) for k, v in h.items()}})
        if gone:
            self.r.zrem(self._workers, *gone)
        return out

    def leave(self) -> None:
        """Remove this worker's entry now (a clean stop)."""
        self.r.delete(self.key(f"worker:{self.name}"))
        self.r.zrem(self._workers, self.name)

    # ------------------------------------------------------------------------------------------- notifications
    def add_finished_listener(self, callback: Callable[[str], None]) -> bool:
        self._listeners.append(callback)
        with self._lock:
            if self._listen_thread is None and not self._closed.is_set():
                self._listen_thread = threading.Thread(target=self._listen_loop, name="flux-vector-events", daemon=True)
                self._listen_thread.start()
        return True

    def _listen_loop(self) -> None:
        while not self._closed.is_set():
            pubsub = None
            try:
                pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        job_id = _text(message["data"])
                        for callback in list(self._listeners):
                            try:
                                callback(job_id)
                            except Exception as exc:
                                self.log(f"finished listener: {type(exc).__name__}: {exc}")
            except Exception as exc:  # Redis went away: the waiters' periodic re-reads cover the gap
                if not self._closed.is_set():
                    self.log(f"event subscription: {type(exc).__name__}: {exc}; retrying")
                    self._closed.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def close(self) -> None:
        self._closed.set()
        for thread in (self._beat_thread, self._listen_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.r.close()


REDIS_PASSWORD_ENV = "FLUX_VECTOR_REDIS_PASSWORD"
REDIS_PASSWORD_FILE_ENV = "FLUX_VECTOR_REDIS_PASSWORD_FILE"


def split_redis_url(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without credentials, the user, the password). The credentials run to the last ``@``, so a password
    with an unencoded ``@``, ``/``, ``:`` or ``#`` stays whole (percent-encoded ones are decoded)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url, None, None
    userinfo, address = rest.rsplit("@", 1)
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis://password@host, as redis-py reads a lone userinfo
        user, password = "", user
    return scheme + sep + address, unquote(user) or None, unquote(password) or None


def redis_password_from_env() -> str | None:
    """``$FLUX_VECTOR_REDIS_PASSWORD``, else the first line of the file ``$FLUX_VECTOR_REDIS_PASSWORD_FILE`` names."""
    if os.environ.get(REDIS_PASSWORD_ENV):
        return os.environ[REDIS_PASSWORD_ENV]
    path = os.environ.get(REDIS_PASSWORD_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n") or None
    except OSError as exc:
        raise StoreUnavailable(f"${REDIS_PASSWORD_FILE_ENV}={path!r} cannot be read: {exc.strerror}") from None
