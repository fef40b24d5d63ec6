"""The behaviour every ``JobStore`` promises, run on each store: ``SQLiteJobStore`` on a file in a tmp folder and
``RedisJobStore`` on a real redis-server (marked ``redis``).

FIFO order and queue positions, the queue bound, progress, completion with images, failure, requeue, retention,
thread safety, the optional capabilities' answers, and the ``Worker`` on the store. What only one store does is
tested beside it: SQLite's crash recovery, reopening and file lock in ``test_jobs.py``; Redis's leases, takeovers,
owner tokens, key expiry and notifications in ``test_redis_store.py`` (and the processes in ``test_redis_cluster.py``).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from flux_vector.jobs import COMPLETED, FAILED, PROCESSING, QUEUED, JobStore, QueueFull, SQLiteJobStore, Worker
from flux_vector.jobs.store import LeaseLost
from flux_vector.request import parse_request
from tests.fake_pipeline import FakePipeline
from tests.job_data import META, FakeClock, P, png

REDIS_DB = 4  # test_redis_store.py uses 3


@dataclass
class Backend:
    """Opens stores of one kind on one queue. ``peer`` is another process's handle on the same queue: a new
    connection for a shared store; the same handle for SQLite (one process owns a SQLite store)."""

    open_store: Callable[..., JobStore]
    shared: bool
    opened: list[JobStore] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)  # every store's clock: tests move it, nothing sleeps

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of wall time pass for the stores (retention, and on Redis leases)."""
        self.clock.advance(seconds)

    def open(self, **kwargs) -> JobStore:
        store = self.open_store(**kwargs)
        self.opened.append(store)
        return store

    def peer(self, store: JobStore, **kwargs) -> JobStore:
        return self.open(**kwargs) if self.shared else store

    def close(self) -> None:
        for store in self.opened:
            store.close()


def sqlite_backend(tmp_path: Path) -> Backend:
    clock = FakeClock()
    return Backend(
        lambda **kwargs: SQLiteJobStore(tmp_path / "jobs.sqlite3", clock=clock, **kwargs), shared=False, clock=clock
    )


def redis_backend(request) -> Backend:
    from flux_vector.jobs.redis_store import RedisJobStore

    server = request.getfixturevalue("redis_server")
    server.client(db=REDIS_DB).flushdb()
    clock = FakeClock()  # Redis's own clock in production; test_redis_store.py runs that on real time

    def open_store(**kwargs):
        kwargs.setdefault("claim_block_s", 0.05)
        return RedisJobStore.from_url(server.url(REDIS_DB), clock=clock, **kwargs)

    return Backend(open_store, shared=True, clock=clock)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, tmp_path):
    made = sqlite_backend(tmp_path) if request.param == "sqlite" else redis_backend(request)
    yield made
    made.close()


@pytest.fixture
def store(backend):
    return backend.open()


# ----------------------------------------------------------------------------------------------- the queue
def test_lifecycle_fifo_positions_counts_and_images(store):
    a, b, c = (store.submit("Simple_Vector_Flux", parse_request({**P, "seed": i})) for i in range(3))
    assert [j.position for j in (a, b, c)] == [0, 1, 2]
    assert store.get(c.id).state == QUEUED and store.get(c.id).position == 2
    assert store.get(a.id).params == {**P, "seed": 0} and store.get(a.id).created_at > 1e9
    claimed = store.claim()
    assert claimed.id == a.id and claimed.state == PROCESSING and claimed.attempts == 1
    assert claimed.started_at >= claimed.created_at and store.get(c.id).position == 1
    store.progress(a.id, 1, 2)
    assert (store.get(a.id).step, store.get(a.id).total_steps) == (1, 2)
    done = store.complete(a.id, [png(), png((9, 9, 9))], META)
    assert done.state == COMPLETED and done.result["count"] == 2 and done.finished_at >= done.started_at
    assert store.image(a.id, 0) == png() and store.image(a.id, 1) == png((9, 9, 9))
    assert store.image(a.id, 2) is None and store.image(b.id, 0) is None and store.image(a.id, -1) is None
    assert store.claim().id == b.id
    failed = store.fail(b.id, "boom")
    assert failed.state == FAILED and failed.error == "boom"
    for settled in (a.id, b.id):  # a settled job never changes again: no second end, whichever it would be
        with pytest.raises(LeaseLost):
            store.fail(settled, "too late")
        with pytest.raises(LeaseLost):
            store.complete(settled, [png()], META)
    assert store.get(a.id).state == COMPLETED and store.get(b.id).error == "boom"
    assert store.counts() == {QUEUED: 1, PROCESSING: 0, COMPLETED: 1, FAILED: 1}
    assert store.get("nope") is None


def test_cancel_fails_queued_and_running_jobs_and_a_cancelled_run_never_completes(store):
    from flux_vector.jobs.store import CANCELLED_REASON

    running, queued = store.submit("s", parse_request(P)), store.submit("s", parse_request(P))
    assert store.claim().id == running.id
    cancelled = store.cancel(queued.id)
    assert (cancelled.state, cancelled.error) == (FAILED, CANCELLED_REASON)
    assert store.cancel(running.id).state == FAILED
    with pytest.raises(LeaseLost):
        store.complete(running.id, [png()], META)
    assert store.get(running.id).state == FAILED and store.image(running.id, 0) is None
    assert store.claim() is None  # the cancelled queued job is not handed out
    assert store.cancel("nope") is None
    done = store.submit("s", parse_request(P))
    store.claim()
    store.complete(done.id, [png()], META)
    assert store.cancel(done.id).state == COMPLETED  # a finished job is returned unchanged


def test_queue_bound_counts_waiting_jobs_across_processes(backend, store):
    api_a, api_b, worker = store, backend.peer(store), backend.peer(store)
    api_a.submit("s", parse_request(P), max_queue=2)
    api_b.submit("s", parse_request(P), max_queue=2)
    for api in (api_a, api_b):
        with pytest.raises(QueueFull) as info:
            api.submit("s", parse_request(P), max_queue=2)
        assert info.value.max_queue == 2 and "2 jobs waiting" in str(info.value)
    worker.claim()  # PROCESSING is not waiting
    api_b.submit("s", parse_request(P), max_queue=2)


# ----------------------------------------------------------------------------------------------- users
def test_a_job_belongs_to_the_user_who_submitted_it(backend, store):
    job = store.submit("s", parse_request(P), user="alice")
    other = backend.peer(store)
    assert job.user == "alice" and store.get(job.id).user == "alice" and other.get(job.id).user == "alice"
    assert store.submit("s", parse_request(P)).user == "" and other.claim().user == "alice"


def test_claim_takes_users_in_turns_first_in_first_out_within_each(backend, store):
    """Fair share: the user served least recently goes next (never served: by their first job), a user's own jobs in
    the order submitted; whichever process submitted them."""
    api, worker = store, backend.peer(store)
    a = [api.submit("s", parse_request({**P, "seed": i}), user="alice") for i in range(4)]
    b = [api.submit("s", parse_request({**P, "seed": 10 + i}), user="bob") for i in range(2)]
    first = worker.claim()
    c = api.submit("s", parse_request(P), user="carol")  # never served: before alice and bob, who have been
    order = [first.id] + [worker.claim().id for _ in range(6)]
    assert order == [a[0].id, b[0].id, c.id, a[1].id, b[1].id, a[2].id, a[3].id]
    assert worker.claim() is None


def test_a_requeued_or_cancelled_job_keeps_the_turns_right(backend, store):
    api, worker = store, backend.peer(store)
    a1, a2 = api.submit("s", parse_request(P), user="alice"), api.submit("s", parse_request(P), user="alice")
    b1 = api.submit("s", parse_request(P), user="bob")
    assert worker.claim().id == a1.id
    worker.requeue(a1.id)  # back in the queue: it keeps its place in alice's line
    api.cancel(b1.id)
    assert worker.claim().id == a1.id and worker.claim().id == a2.id and worker.claim() is None


def test_per_user_queue_cap(backend, store):
    from flux_vector.jobs.store import UserQueueFull

    api, other = store, backend.peer(store)
    jobs = [api.submit("s", parse_request(P), user="alice", max_queue_per_user=2) for _ in range(2)]
    with pytest.raises(UserQueueFull) as info:
        other.submit("s", parse_request(P), user="alice", max_queue_per_user=2)
    assert info.value.max_queue == 2 and info.value.user == "alice" and "2 jobs waiting" in str(info.value)
    assert isinstance(info.value, QueueFull)  # a full queue either way for a caller that only knows QueueFull
    other.submit("s", parse_request(P), user="bob", max_queue_per_user=2)  # another user's share is their own
    api.cancel(jobs[0].id)  # a cancelled job waits no more
    api.submit("s", parse_request(P), user="alice", max_queue_per_user=2)
    with pytest.raises(UserQueueFull):
        api.submit("s", parse_request(P), user="alice", max_queue_per_user=2)


def test_requeue_keeps_place_and_attempts(backend, store):
    first, second = store.submit("s", parse_request(P)), store.submit("s", parse_request(P))
    store.claim()
    store.requeue(first.id)
    back = store.get(first.id)
    assert back.state == QUEUED and back.attempts == 0 and back.position == 0
    other = backend.peer(store)
    assert other.claim().id == first.id  # at once (a shared store: not after the lease)
    assert store.get(second.id).position == 0
    assert other.claim().id == second.id


def test_finished_jobs_vanish_after_retention_and_waiting_jobs_stay(backend):
    store = backend.open(retention_s=0.4)
    job = store.submit("s", parse_request(P))
    store.claim()
    store.complete(job.id, [png()], META)
    waiting = store.submit("s", parse_request(P))
    assert store.get(job.id).state == COMPLETED and store.counts()[COMPLETED] == 1
    backend.advance(0.5)
    assert store.get(job.id) is None and store.image(job.id, 0) is None  # gone the moment retention passed
    assert store.counts()[COMPLETED] == 0
    assert store.expire() == 1
    assert store.get(waiting.id).state == QUEUED  # waiting jobs never expire
    with pytest.raises(ValueError, match="retention_s"):
        backend.open(retention_s=0)


def test_store_is_thread_safe(store):
    ids, errors = [], []

    def submit():
        try:
            for _ in range(20):
                ids.append(store.submit("s", parse_request(P)).id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 80 and store.counts()[QUEUED] == 80


def test_capabilities_answer_on_every_store(backend, store):
    """The base class's optional capabilities: each store answers, shared or not."""
    assert store.shared is backend.shared and store.claim_blocks is backend.shared
    assert store.workers() == []  # no worker announced itself
    assert isinstance(store.stats, Mapping) and all(n == 0 for n in store.stats.values())
    job = store.submit("s", parse_request(P))
    assert store.image_file(job.id, 0) is None  # not finished
    store.claim()
    store.complete(job.id, [png()], META)
    path = store.image_file(job.id, 0)
    assert (path is not None) is (not backend.shared)  # SQLite keeps image files; Redis keeps bytes only
    assert path is None or path.read_bytes() == store.image(job.id, 0)
    assert store.image_file(job.id, 1) is None
    assert store.add_finished_listener(lambda job_id: None) is backend.shared


# ----------------------------------------------------------------------------------------------- the worker
def test_worker_runs_jobs_in_order_notifies_and_stop_requeues(store):
    finished = []
    worker = Worker(store, FakePipeline(step_s=0.02), log=lambda m: None, idle_poll=0.05)
    worker.add_listener(finished.append)
    worker.start()
    try:
        jobs = [store.submit("s", parse_request({**P, "seed": i})) for i in range(3)]
        jobs.append(store.submit("s", parse_request({**P, "output_format": "jpeg", "batch_size": 2, "seed": 7})))
        worker.notify()
        for job in jobs:
            done = worker.wait(job.id, timeout=20)
            assert done.state == COMPLETED, done.error
        assert [j.id for j in finished] == [j.id for j in jobs]
        assert store.image(jobs[0].id, 0)[:4] == b"\x89PNG"
        assert done.result["media_type"] == "image/jpeg" and done.result["count"] == 2
        assert done.result["echo"]["seed"] == 7 and done.result["echo"]["sampler_name"] == "euler"
        assert Image.open(io.BytesIO(store.image(done.id, 1))).format == "JPEG"
        slow = store.submit("s", parse_request({**P, "steps": 100}))
        worker.notify()
        deadline = time.monotonic() + 10
        while store.get(slow.id).state != PROCESSING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.stop(10)
        back = store.get(slow.id)
        assert back.state == QUEUED and back.attempts == 0
    finally:
        worker.stop(10)


# ------------------------------------------------------------------------------ a store error is never a model error
def injected_store_error(store: JobStore) -> Exception:
    """An error of the store's own kind, as a network outage or a locked database raises it."""
    if store.kind == "redis":
        from redis.exceptions import ConnectionError

        return ConnectionError("Error 111 connecting to 127.0.0.1: Connection refused (injected)")
    import sqlite3

    return sqlite3.OperationalError("database is locked (injected)")


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_result_the_store_cannot_save_is_kept_and_saved_again(store, monkeypatch):
    """complete() and a progress write fail twice with the store's own error: the run goes on, the worker keeps the
    images and saves them again; COMPLETED after one run, and nothing calls it a model error."""
    logs: list[str] = []
    real_complete, real_progress = store.complete, store.progress
    calls = {"complete": 0, "progress": 0}

    def flaky_complete(job_id, images, result):
        calls["complete"] += 1
        if calls["complete"] <= 2:
            raise injected_store_error(store)
        return real_complete(job_id, images, result)

    def flaky_progress(job_id, step, total):
        calls["progress"] += 1
        if calls["progress"] <= 2:
            raise injected_store_error(store)
        real_progress(job_id, step, total)

    monkeypatch.setattr(store, "complete", flaky_complete)
    monkeypatch.setattr(store, "progress", flaky_progress)
    worker = Worker(store, FakePipeline(step_s=0.01), log=logs.append, idle_poll=0.05, save_retry_s=0.05).start()
    try:
        job = store.submit("s", parse_request(P))
        worker.notify()
        done = worker.wait(job.id, timeout=20)
    finally:
        worker.stop(10)
    assert done.state == COMPLETED and done.attempts == 1, done
    assert calls["complete"] == 3 and store.image(job.id, 0) is not None
    text = "\n".join(logs)
    assert "could not save its result" in text and "progress not saved" in text and "saved after" in text
    assert "model error" not in text and "FAILED" not in text
    assert ("Redis at" if store.kind == "redis" else "the job store (sqlite)") in text


def test_a_job_whose_end_cannot_be_saved_is_given_up_and_never_stuck(backend, monkeypatch):
    """complete() never succeeds for this worker: it retries until the store's settle deadline, then gives the job
    up. SQLite (no other worker): FAILED with the store's reason. Redis: the lease is dropped (no more heartbeats)
    and another worker runs the job again after the lease: COMPLETED on its second run."""
    monkeypatch.setattr("flux_vector.jobs.store.SETTLE_RETRY_S", 0.5)
    store = backend.open(lease_s=1.0) if backend.shared else backend.open()
    logs: list[str] = []

    def broken_complete(job_id, images, result):
        raise injected_store_error(store)

    monkeypatch.setattr(store, "complete", broken_complete)
    stuck = Worker(store, FakePipeline(), log=logs.append, idle_poll=0.05, save_retry_s=0.05).start()
    try:
        job = store.submit("s", parse_request(P))
        stuck.notify()
        wait_for(lambda: any("given up" in line for line in logs), 20, "the job to be given up")
    finally:
        stuck.stop(10)
    text = "\n".join(logs)
    assert "could not save its result" in text and "model error" not in text
    if not backend.shared:
        failed = store.get(job.id)
        assert failed.state == FAILED and "the job store (sqlite) failed" in failed.error, failed
        assert "database is locked" in failed.error
        return
    assert store.get(job.id).state == PROCESSING and not store._leases  # given up: nothing left to heartbeat
    backend.advance(1.0)  # the dropped lease runs out
    other = backend.peer(store, lease_s=1.0, name="other")
    rescuer = Worker(other, FakePipeline(), log=lambda m: None).start()
    try:
        done = rescuer.wait(job.id, timeout=20)
    finally:
        rescuer.stop(10)
    assert done.state == COMPLETED and done.attempts == 2, done
    assert other.stats["reclaimed"] == 1 and store.stats["abandoned"] == 1
