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
  it); Redis deletes them, even when no worker runs. Sorted-set indexes scored by expiry time give the per-state
  counts; ``expire`` trims them (and deletes whatever native expiry has not yet).
- **Timestamps come from Redis's clock** (``TIME`` inside the scripts), so queue and run times, heartbeats and
  expiry are consistent across machines whose clocks disagree.
- **An injected clock** (``clock=``, as ``SQLiteJobStore`` takes; for tests, with a clock they move by hand) replaces
  Redis's: every script gets ``now`` from it, and nothing may run on time Redis keeps itself. So retention becomes
  a timestamp (``expires_at`` in the hash; ``get``/``image``/``counts`` treat a job past it as gone, ``expire``
  deletes its keys: no native TTL, which would run on the real clock), and a lease is judged by the job's
  ``heartbeat_at`` (``picked_at`` between a worker's read and the run's start) against the clock instead of the
  stream entry's idle time. The worker side's own deadlines
  (``settle_deadline``, the heartbeat period) stay on the process's monotonic clock, as they are on SQLite. Not for
  a fleet: processes with different clocks would disagree about leases and expiry.
- Finished jobs are announced on a pub/sub channel, which wakes ``POST /v1`` requests waiting in any API process.
- **Faults never strand a job**: a result a worker cannot save (Redis down, full) is retried while its lease holds,
  then the lease is dropped (``abandon``) so another worker runs the job again; a missing stream or group is made
  again and every job in the queued index (the truth for what waits) gets an entry (``heal``); index entries whose
  job hash vanished are dropped; a Redis that evicts keys, or a user lacking a command, is refused at start
  (``verify``); a full Redis is ``StoreFull`` (503 at submit, ``/healthz`` says so).
- **Mixed fleets**: a job records the model and LoRA its API process was asked to serve and the flux_vector version
  (``Fleet``); a worker takes only jobs it can serve and parks the others for a worker that can.

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
from typing import Any, overload
from urllib.parse import quote, unquote

from ..request import GenerationRequest, from_stored, stored_params
from ..version import __version__
from . import redis_fair
from . import redis_scripts as lua
from .store import (
    CANCELLED_REASON,
    COMPLETED,
    DEFAULT_RETENTION_S,
    FAILED,
    PROCESSING,
    QUEUED,
    Job,
    JobState,
    JobStore,
    LeaseLost,
    QueueFull,
    Recovery,
    StoreFull,
    StoreUnavailable,
    StoreWriteError,
    UserQueueFull,
    new_job_id,
)

DEFAULT_PREFIX = "flux_vector:"
DEFAULT_LEASE_S = 60.0
DEFAULT_REDIS_MAX_ATTEMPTS = 3  # a lease can also run out through a network partition, not only a crash: one more try
GROUP = "workers"
_REQUEUED_IDLE_MS = 365 * 24 * 3600 * 1000  # a requeued entry looks idle "for a year": the next scan takes it
STALE_SCAN = 1000  # pending entries a claim looks through for one it can take over
MEMORY_CHECK_S = 2.0  # how long INFO memory's answer is reused by check()
FULL_FOR_S = 30.0  # /healthz says "full" this long after Redis last refused a write for memory
EVICTION_OVERRIDE = "--allow-redis-eviction"


@dataclass(frozen=True)
class Fleet:
    """Which jobs go with which workers. An API process records its ``model`` and ``lora`` (the names it was asked
    to serve, as ``image_metadata.public_name`` publishes them; '' for any) and its flux_vector ``version`` in every
    job it accepts; a worker's are what it loaded, and it takes only jobs whose non-empty fields equal its own."""

    model: str = ""
    lora: str = ""
    version: str = __version__

    def args(self) -> list[str]:
        return [self.model, self.lora, self.version]

    def serves(self, wanted: Fleet) -> bool:
        return all(not want or not have or want == have for want, have in zip(wanted.args(), self.args(), strict=True))

    def describe(self) -> str:
        parts = [f"model {self.model}" if self.model else "", f"LoRA {self.lora}" if self.lora else ""]
        return ", ".join(p for p in parts if p) + f" (flux_vector {self.version})"


def is_redis_url(value: Any) -> bool:
    return str(value).startswith(("redis://", "rediss://", "unix://"))


@dataclass
class _Lease:
    job_id: str
    entry: str
    token: str
    renewed: float  # time.monotonic() when it was last renewed (taken just before the renewing call)


@overload
def _text(value: bytes | str) -> str: ...
@overload
def _text(value: None) -> None: ...
@overload
def _text(value: bytes | str | None) -> str | None: ...
def _text(value: bytes | str | None) -> str | None:
    """A Redis reply (bytes) as text; None stays None (a missing field or key)."""
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
        fleet: Fleet | None = None,
        clock: Callable[[], float] | None = None,
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
        self.fleet = fleet or Fleet()
        self.clock = clock  # None: Redis's own clock (TIME), one for the fleet; else wall seconds (tests move it)
        self.stats: dict[str, int] = {
            "reclaimed": 0,
            "leases_lost": 0,
            "failed_after_attempts": 0,
            "abandoned": 0,
            "left_for_others": 0,
            "healed": 0,
        }
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
        self._claim_stale, self._heal, self._permissions = s(lua.CLAIM_STALE), s(lua.HEAL), s(lua.PERMISSIONS)
        self._memory: tuple[float, dict[str, Any]] | None = None
        self._full_at = float("-inf")  # time.monotonic() when Redis last refused a write for memory
        self._allow_eviction = False
        self._mismatched: set[str] = set()  # jobs this worker told the log it leaves to others
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
    def unavailable_errors(self) -> tuple[type[Exception], ...]:  # type: ignore[override]
        from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

        return (StoreUnavailable, ConnectionError, TimeoutError, ReadOnlyError)

    @property
    def store_errors(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        from redis.exceptions import RedisError

        return (StoreUnavailable, StoreWriteError, RedisError)

    def describe_store_error(self, exc: BaseException) -> str:
        from redis.exceptions import OutOfMemoryError

        where = f"Redis at {self.url or 'the given client'}"
        if isinstance(exc, OutOfMemoryError):
            self._full_at, self._memory = time.monotonic(), None
            return self._full_message(where)
        text = str(exc) if isinstance(exc, StoreUnavailable) else f"{type(exc).__name__}: {exc}"
        return f"the job store ({where}) failed: {self.redact(text)}"

    def _full_message(self, where: str) -> str:
        return (
            f"the job store is full: {where} is out of memory (used_memory reached maxmemory, policy noeviction) "
            "and refuses writes; free memory (shorter --retention, fewer waiting jobs) or raise Redis's maxmemory"
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
        return text

    def key(self, name: str) -> str:
        return self.prefix + name

    def _now(self) -> str:
        """The scripts' ``now`` argument: '' for Redis's clock, else the injected clock's seconds."""
        return "" if self.clock is None else repr(float(self.clock()))

    def _expired(self, expires_at: bytes | str | None) -> bool:
        """A settled job past its retention by the injected clock (on Redis's clock its keys are gone by then)."""
        at = _float(expires_at)
        return self.clock is not None and at is not None and at <= self.clock()

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

    # ------------------------------------------------------------------------------------------- fitness
    def memory(self, *, fresh: bool = False) -> dict[str, Any]:
        """Redis's ``INFO memory`` (reused for ``MEMORY_CHECK_S``): ``maxmemory_policy``, ``maxmemory``, ..."""
        now = time.monotonic()
        if fresh or self._memory is None or now - self._memory[0] > MEMORY_CHECK_S:
            self._memory = (now, dict(self.r.info("memory")))
        return self._memory[1]

    def _eviction_message(self, policy: str) -> str:
        return (
            f"Redis at {self.url or 'the given client'} evicts keys (maxmemory-policy {policy}): accepted jobs and "
            "their images would vanish without a word when it fills up. Set maxmemory-policy noeviction (redis.conf, "
            f"or CONFIG SET maxmemory-policy noeviction), or pass {EVICTION_OVERRIDE} if losing jobs is acceptable"
        )

    def verify(self, role: str, *, allow_eviction: bool = False) -> None:
        """At the start of an API process (``role="api"``) or a worker (``"worker"``): ``StoreUnavailable`` with one
        line saying what is wrong and how to fix it when this Redis user lacks a command the role needs (ACL), or
        when Redis evicts keys (any ``maxmemory-policy`` but ``noeviction``) and ``allow_eviction`` is not given."""
        self._allow_eviction = allow_eviction
        refused = self.missing_permissions(role, info=not allow_eviction)
        if refused:
            user = self.r.connection_pool.connection_kwargs.get("username") or "default"
            grants = " ".join(f"+{command.lower()}" for command in refused)
            raise StoreUnavailable(
                f"the Redis user {user!r} may not run {', '.join(refused)}, which a flux-vector {role} needs: grant "
                f"it (ACL SETUSER {user} {grants}) or give --store a user that may"
            )
        if not allow_eviction:
            policy = str(self.memory(fresh=True).get("maxmemory_policy", "noeviction"))
            if policy != "noeviction":
                raise StoreUnavailable(self._eviction_message(policy))

    def missing_permissions(self, role: str, *, info: bool = True) -> list[str]:
        """The commands (with this store's keys) the Redis user may not run, of those ``role`` needs."""
        from redis.exceptions import NoPermissionError

        job, stream, queued = self.key("job:0"), self._stream, self._queued
        needs: list[tuple[str, ...]] = [
            ("EXISTS", job),
            ("HSET", job, "f", "v"),
            ("HGET", job, "f"),
            ("HGETALL", job),
            ("HMGET", job, "f"),
            ("PEXPIRE", job, "1"),
            ("INCR", self._seq),
            ("ZADD", queued, "1", "x"),
            ("ZREM", queued, "x"),
            ("ZRANK", queued, "x"),
            ("ZCARD", queued),
            ("ZRANGE", queued, "0", "-1"),
            ("ZCOUNT", self._completed, "0", "1"),
            ("XADD", stream, "*", "id", "x"),
            ("XACK", stream, GROUP, "0-1"),
            ("XDEL", stream, "0-1"),
            ("GET", self.key("img:0:0")),
            ("PUBLISH", self.channel, "x"),
            ("SUBSCRIBE", self.channel),
            ("TIME",),
        ]
        if info:
            needs.append(("INFO", "memory"))
        if role == "worker":
            needs += [
                ("XREADGROUP", "GROUP", GROUP, self.name, "COUNT", "1", "STREAMS", stream, ">"),
                ("XPENDING", stream, GROUP, "IDLE", "0", "-", "+", "1"),
                ("XCLAIM", stream, GROUP, self.name, "0", "0-1", "JUSTID"),
                ("XRANGE", stream, "-", "+"),
                ("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM"),
                ("XINFO", "CONSUMERS", stream, GROUP),
                ("HDEL", job, "f"),
                ("SET", self.key("img:0:0"), "v"),
                ("ZREMRANGEBYSCORE", self._completed, "0", "1"),
                ("DEL", self.key(f"worker:{self.name}")),
            ]
        words: list[str] = []
        for command in needs:
            words += [str(len(command)), *command]
        try:
            refused = [_text(name) or "" for name in self._permissions(args=words)]
        except NoPermissionError as exc:  # not even the scripts: name the command Redis named
            named = str(exc).split("'")
            return [named[1].upper() if len(named) > 2 else "EVALSHA"]
        return [name.upper() for name in dict.fromkeys(refused)]

    def check(self) -> None:
        """``/healthz``: ``StoreUnavailable`` when Redis evicts keys now (its policy changed since the start) or is
        full (``StoreFull``: used_memory at maxmemory, or a write refused for memory in the last ``FULL_FOR_S``)."""
        try:
            memory = self.memory()
        except Exception as exc:
            from redis.exceptions import NoPermissionError

            if isinstance(exc, NoPermissionError) and self._allow_eviction:
                return  # INFO refused, and the operator took the risk at start
            raise StoreUnavailable(self.describe_store_error(exc)) from None
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction" and not self._allow_eviction:
            raise StoreUnavailable(self._eviction_message(policy))
        limit, used = int(memory.get("maxmemory", 0) or 0), int(memory.get("used_memory", 0) or 0)
        if (limit and used >= limit) or time.monotonic() - self._full_at < FULL_FOR_S:
            raise StoreFull(self._full_message(f"Redis at {self.url or 'the given client'}"))

    # ------------------------------------------------------------------------------------------- reading
    def _job_from_hash(self, job_id: str, h: dict, position: int | None = None) -> Job:
        g = {_text(key): value for key, value in h.items()}
        result = _text(g.get("result"))
        return Job(
            id=job_id,
            slug=_text(g.get("slug")) or "",
            request=from_stored(json.loads(_text(g.get("params")) or "{}")),
            state=JobState(_text(g.get("state")) or QUEUED),
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
        if not h or self._expired(h.get(b"expires_at")):
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
        if self.clock is None:
            return self.r.get(self._image_key(job_id, index))
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self._job_key(job_id), "expires_at")
        pipe.get(self._image_key(job_id, index))
        expires_at, data = pipe.execute()
        return None if self._expired(expires_at) else data

    def counts(self) -> dict[str, int]:
        q, p, c, f = self._counts(
            keys=[self._queued, self._processing, self._completed, self._failed], args=[self.key("job:"), self._now()]
        )
        return {QUEUED: int(q), PROCESSING: int(p), COMPLETED: int(c), FAILED: int(f)}

    # ------------------------------------------------------------------------------------------- API side
    def submit(
        self,
        slug: str,
        request: GenerationRequest,
        *,
        max_queue: int | None = None,
        user: str = "",
        max_queue_per_user: int | None = None,
    ) -> Job:
        job_id = new_job_id()
        encoded = json.dumps(stored_params(request), allow_nan=False)
        from redis.exceptions import OutOfMemoryError

        try:
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
                    *self.fleet.args(),
                    self._now(),
                ],
            )
        except OutOfMemoryError as exc:
            raise StoreFull(self.describe_store_error(exc)) from None
        if int(waiting) == -2:
            raise UserQueueFull(int(max_queue_per_user or 0), user)
        if int(waiting) < 0:
            raise QueueFull(int(max_queue or 0))
        return Job(
            id=job_id,
            slug=slug,
            request=request,
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
            stale = self._claim_stale(
                keys=[self._stream, self._tickets],
                args=[
                    GROUP,
                    self.name,
                    int(self.lease_s * 1000),
                    STALE_SCAN,
                    *self.fleet.args(),
                    self.key("job:"),
                    self._now(),
                ],
            )
            if stale:
                return _text(stale[0]), _text(stale[1])
            block_ms = int(block_s * 1000)
            got = self.r.xreadgroup(GROUP, self.name, {self._stream: ">"}, count=1, block=block_ms or None)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream or its group was deleted (DEL, FLUSHDB): made again, refilled
                self.heal()
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
                    args=[entry, self.key("job:"), self._fair_queue_prefix, GROUP, self._now()],
                )
            )
        if not job_id:  # not one of ours, or nothing left to run for this ticket: drop it
            self.r.xack(self._stream, GROUP, entry)
            self.r.xdel(self._stream, entry)
            return None
        token = uuid.uuid4().hex
        started = time.monotonic()
        reply = self._start(
            keys=[self._job_key(job_id), self._queued, self._processing, self._stream, self._failed],
            args=[
                job_id,
                entry,
                token,
                self.name,
                self.max_attempts,
                int(self.lease_s * 1000),
                GROUP,
                self.channel,
                *self.fleet.args(),
                _REQUEUED_IDLE_MS,
                self._now(),
            ],
        )
        outcome = _text(reply[0])
        if outcome == "mismatch":
            self.stats["left_for_others"] += 1
            if job_id not in self._mismatched:
                if len(self._mismatched) > 10_000:
                    self._mismatched.clear()
                self._mismatched.add(job_id)
                model, lora, version = (_text(v) or "" for v in reply[1])
                self.log(
                    f"job {job_id} asks for {Fleet(model, lora, version).describe()}; this worker serves "
                    f"{self.fleet.describe()}: left queued for a worker that serves it"
                )
            return None  # the ticket stays bound to the job: a worker that serves it takes it over
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
            self._leases[job_id] = _Lease(job_id, entry, _text(h.get(b"owner")) or token, started)
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

    def settle_deadline(self, job_id: str) -> float:
        """While this worker's lease on the job would still hold (no other worker can have taken it over)."""
        lease = self._lease(job_id)
        return time.monotonic() if lease is None else lease.renewed + self.lease_s

    def abandon(self, job_id: str, reason: str) -> Job | None:
        """Drop the lease (no more heartbeats): the job's entry goes idle and another worker (or this one) takes
        it over after ``lease_s`` and runs it again (``max_attempts`` runs at most). Nothing is written."""
        self._drop_lease(job_id)
        self.stats["abandoned"] += 1
        self.log(
            f"job {job_id}: lease dropped ({reason}); another worker runs it again after the lease ({self.lease_s:g} s)"
        )
        return None

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
            args=[
                job_id,
                lease.token,
                lease.entry,
                GROUP,
                json.dumps(result, allow_nan=False),
                self.channel,
                self._now(),
                *images,
            ],
        )
        if int(reply[0]) == 0:
            raise self._lease_lost(job_id, "its images were")
        self.r.hdel(self._tickets, lease.entry)  # COMPLETE removed the entry
        self._drop_lease(job_id)
        job = self.get(job_id)
        if job is None:  # completed, then gone at once (FLUSHDB, a retention shorter than the call)
            raise LeaseLost(f"job {job_id}: completed, but no longer in Redis; nothing to report")
        return job

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
                self._now(),
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

    def cancel(self, job_id: str, reason: str = CANCELLED_REASON) -> Job | None:
        """FAIL without a lease: the worker running it gets LeaseLost at its next progress write and stops."""
        self._fail(
            keys=[self._job_key(job_id), self._processing, self._failed, self._stream, self._queued],
            args=[job_id, "", "", GROUP, reason, self.channel, self._fair_queue_prefix, self._now()],
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
        self.heal()
        return Recovery(queued=self.counts()[QUEUED])

    def heal(self) -> tuple[int, int]:
        """Make the stream and its group again if they are missing, give every waiting or running job without a
        stream entry one, drop index entries whose job hash vanished (``redis_scripts.HEAL``). (entries added,
        index entries dropped)."""
        added, dropped = (
            int(n)
            for n in self._heal(
                keys=[self._stream, self._queued, self._processing, self._completed, self._failed, self._tickets],
                args=[GROUP, self.key("job:")],
            )
        )
        if added or dropped:
            self.stats["healed"] += added + dropped
            self.log(
                f"healed the queue: {added} job(s) without a stream entry enqueued again (the queued index is the "
                f"truth for what waits), {dropped} index entries of vanished jobs dropped"
            )
        return added, dropped

    def expire(self, now: float | None = None) -> int:
        """Finished jobs whose retention has passed (by ``now``, else the store's clock) leave the count indexes and
        their keys are deleted (on Redis's clock native expiry did that already; with an injected clock this is what
        does); consumers that left nothing pending (dead or stopped workers) are forgotten. Returns how many expired
        jobs left the indexes."""
        when = self._now() if now is None else repr(float(now))
        removed = int(
            self._expire(keys=[self._completed, self._failed], args=[when, self.key("job:"), self.key("img:")])
        )
        try:
            self.heal()
        except Exception as exc:  # housekeeping only
            self.log(f"queue healing: {self.describe_store_error(exc)}")
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
            sent = time.monotonic()
            if self._heartbeat(
                keys=[self._job_key(lease.job_id), self._stream],
                args=[lease.token, lease.entry, GROUP, self.name, self._now()],
            ):
                lease.renewed = sent
            else:
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

    def serving_problem(self, workers: list[dict[str, Any]]) -> str | None:
        ready = [w for w in workers if w.get("state") not in (None, "loading") and isinstance(w.get("serves"), dict)]
        if not ready:
            return None  # no worker yet (or none that says what it serves): nothing to compare
        fleets = [Fleet(**{k: str(w["serves"].get(k) or "") for k in ("model", "lora", "version")}) for w in ready]
        if any(fleet.serves(self.fleet) for fleet in fleets):
            return None
        others = "; ".join(sorted({f"{w['name']}: {f.describe()}" for w, f in zip(ready, fleets, strict=True)}))
        return (
            f"no live worker serves {self.fleet.describe()}, which the jobs of this API process ask for: they stay "
            f"QUEUED until one does (live workers: {others})"
        )

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
