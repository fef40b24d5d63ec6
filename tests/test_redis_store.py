"""RedisJobStore's own behaviour against a real redis-server (the session's ``redis_server``, conftest.py): leases (a
dead worker's job runs again, at most max_attempts runs, then FAILED), owner-checked idempotent completion, key-expiry
retention, notifications, who ran a job, and the Worker on it (LoRA fused once, strength switched in place; SVG
tracing). Leases are tested on an injected ``FakeClock`` (no sleeping); native key expiry, which only Redis's own
clock drives, on real time. What every store does (FIFO, positions, the queue bound, requeue, ...):
``test_store_contract.py``."""

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from flux_vector.jobs import COMPLETED, FAILED, QUEUED, Worker
from flux_vector.jobs.redis_store import RedisJobStore
from flux_vector.jobs.store import LeaseLost, StoreUnavailable
from flux_vector.request import parse_request
from tests.job_data import META, FakeClock, P, png
from tests.redis_cluster import require_redis
from tests.server_process import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def make_store(redis_server):
    """Stores on one clean database: ``make_store(name=..., lease_s=..., ...)``; all closed at the end."""
    redis_server.client(db=3).flushdb()
    made = []

    def make(**kwargs):
        kwargs.setdefault("claim_block_s", 0.05)
        store = RedisJobStore.from_url(redis_server.url(3), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_a_run_records_its_worker_and_finished_entries_leave_the_stream(make_store):
    store = make_store(name="w1")
    a, b, c = (store.submit("Simple_Vector_Flux", parse_request({**P, "seed": i})) for i in range(3))
    assert store.claim().id == a.id
    store.complete(a.id, [png()], META)
    assert store.claim().id == b.id
    store.fail(b.id, "boom")
    assert store.worker_info(a.id) == {"worker": "w1", "ran_on": ["w1"]}
    # finished entries left the stream; c is the only one waiting
    assert store.r.xlen(store.key("queue")) == 1 and store.get(c.id).state == QUEUED


def test_unreachable_redis_is_a_clear_error():
    require_redis()
    with pytest.raises(StoreUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        RedisJobStore.from_url(f"redis://127.0.0.1:{free_port()}/0")


def test_results_vanish_by_key_expiry(make_store):
    """Production retention, on Redis's clock: native key expiry deletes the job and its images, no sweep needed."""
    api = make_store(retention_s=0.4)
    worker = make_store(retention_s=3600)  # the retention is the accepting API process's
    job = api.submit("s", parse_request(P))
    worker.claim()
    worker.complete(job.id, [png()], META)
    assert api.get(job.id).state == COMPLETED and api.counts()[COMPLETED] == 1
    ttl = api.r.pttl(api.key(f"job:{job.id}"))
    assert 0 < ttl <= 400 and 0 < api.r.pttl(api.key(f"img:{job.id}:0")) <= 400
    time.sleep(0.5)
    assert api.get(job.id) is None and api.image(job.id, 0) is None
    assert api.counts()[COMPLETED] == 0
    assert not api.r.exists(api.key(f"job:{job.id}"), api.key(f"img:{job.id}:0"))
    assert api.expire() == 1 and api.r.zcard(api.key("completed")) == 0


def test_results_vanish_by_timestamp_on_an_injected_clock(make_store):
    """On an injected clock no native expiry is set (it would run on the real clock): the job is gone for readers
    once the clock passes its retention, and ``expire`` deletes its keys."""
    clock = FakeClock()
    api, worker = make_store(retention_s=60, clock=clock), make_store(retention_s=3600, clock=clock)
    job = api.submit("s", parse_request(P))
    assert api.get(job.id).created_at == clock.now
    worker.claim()
    worker.complete(job.id, [png()], META)
    keys = (api.key(f"job:{job.id}"), api.key(f"img:{job.id}:0"))
    assert api.r.pttl(keys[0]) == -1 and api.r.pttl(keys[1]) == -1  # no native TTL
    clock.advance(59.9)
    assert api.get(job.id).state == COMPLETED and api.image(job.id, 0) == png() and api.counts()[COMPLETED] == 1
    assert api.expire() == 0
    clock.advance(0.2)
    assert api.get(job.id) is None and api.image(job.id, 0) is None and api.counts()[COMPLETED] == 0
    assert api.r.exists(*keys) == 2  # until the sweep
    assert api.expire() == 1 and api.r.exists(*keys) == 0 and api.r.zcard(api.key("completed")) == 0


def test_a_dead_workers_job_runs_again_then_fails_after_max_attempts(make_store):
    clock = FakeClock()
    a = make_store(name="a", lease_s=30, max_attempts=2, clock=clock)
    job = a.submit("s", parse_request(P))
    later = a.submit("s", parse_request(P))
    assert a.claim().id == job.id
    a.close()  # "SIGKILL": no more heartbeats, no requeue

    b = make_store(name="b", lease_s=30, max_attempts=2, clock=clock)
    clock.advance(29.9)
    assert b.claim().id == later.id  # the lease has not run out yet: the dead worker's job is not taken
    clock.advance(0.2)
    again = b.claim()
    assert again.id == job.id and again.attempts == 2 and b.stats["reclaimed"] == 1
    assert b.worker_info(job.id)["ran_on"] == ["a", "b"]
    b.close()  # dies too

    c = make_store(name="c", lease_s=30, max_attempts=2, clock=clock)
    clock.advance(30.1)
    taken = c.claim()  # job: its 2 runs died, FAILED; later (b's, dead too): its second run
    assert taken.id == later.id and taken.attempts == 2
    failed = c.get(job.id)
    assert failed.state == FAILED and "killed" in failed.error and "2 times" in failed.error
    assert "not retried" in failed.error and c.stats["failed_after_attempts"] == 1
    assert c.r.xlen(c.key("queue")) == 1  # job's entry is gone; later's is pending on c


def test_a_job_read_but_not_started_waits_one_lease_on_an_injected_clock(make_store):
    """A worker that dies between reading an entry and starting its job: on Redis's clock the entry's idle time
    keeps it from others for a lease (test_redis_fair_share.py); on an injected clock the job's ``picked_at`` does."""
    clock = FakeClock()
    dead = make_store(name="dead", lease_s=30, clock=clock)
    job = dead.submit("s", parse_request(P))
    entry, _ = dead._next_entry(0.1)
    dead._pick(  # read and bound to its job, then the process "dies" before START
        keys=[dead._tickets, dead._fair_users, dead._fair_served, dead._fair_tick, dead._queued, dead._stream],
        args=[entry, dead.key("job:"), dead._fair_queue_prefix, "workers", dead._now()],
    )
    other = make_store(name="other", lease_s=30, clock=clock)
    clock.advance(29.9)
    assert other.claim() is None and other.get(job.id).state == QUEUED
    clock.advance(0.2)
    taken = other.claim()
    assert taken.id == job.id and taken.attempts == 1


def test_a_live_worker_keeps_its_job_past_the_lease(make_store):
    clock = FakeClock()
    a = make_store(name="a", lease_s=30, clock=clock)
    b = make_store(name="b", lease_s=30, clock=clock)
    job = a.submit("s", parse_request(P))
    a.claim()
    for _ in range(4):  # two leases in all: a renews it every 15 s
        clock.advance(15)
        a.beat()
    clock.advance(29.9)
    assert b.claim() is None
    a.progress(job.id, 1, 2)
    assert a.complete(job.id, [png()], META).state == COMPLETED
    assert a.get(job.id).attempts == 1


def test_completion_is_owner_checked_and_idempotent(make_store, monkeypatch):
    """A worker whose lease ran out cannot complete the job the next run owns: one COMPLETED, one set of images."""
    clock = FakeClock()
    a = make_store(name="a", lease_s=30, clock=clock)
    b = make_store(name="b", lease_s=30, clock=clock)
    job = a.submit("s", parse_request(P))
    a.claim()
    monkeypatch.setattr(a, "beat", lambda: None)  # a stalls (no heartbeats) but is not dead
    clock.advance(30)
    assert b.claim().id == job.id
    with pytest.raises(LeaseLost, match="another worker took the job over"):
        a.progress(job.id, 1, 2)
    b_lease = b._leases[job.id]
    assert b.complete(job.id, [png((7, 7, 7))], META).state == COMPLETED
    with pytest.raises(LeaseLost):
        a.complete(job.id, [png((1, 1, 1))], META)
    assert b.image(job.id, 0) == png((7, 7, 7)) and a.stats["leases_lost"] >= 1
    # the same run completing again (a client retry of the script) changes nothing
    keys = [b.key(f"job:{job.id}"), b.key("processing"), b.key("completed"), b.key("queue"), b.key(f"img:{job.id}:0")]
    reply = b._complete(
        keys=keys, args=[job.id, b_lease.token, b_lease.entry, "workers", "{}", b.channel, b._now(), png((8, 8, 8))]
    )
    assert reply == [2] and b.image(job.id, 0) == png((7, 7, 7)) and b.get(job.id).result["count"] == 1
    with pytest.raises(LeaseLost, match="is COMPLETED, not PROCESSING"):  # as on SQLite (the store contract)
        b.fail(job.id, "too late")
    assert b.get(job.id).state == COMPLETED


def test_notifications_reach_every_listener(make_store):
    api, worker = make_store(), make_store()
    seen = []
    arrived = threading.Event()

    def on_finished(job_id):
        seen.append(job_id)
        arrived.set()

    assert api.add_finished_listener(on_finished)
    time.sleep(0.2)  # the subscription is up
    job = api.submit("s", parse_request(P))
    worker.claim()
    worker.complete(job.id, [png()], META)
    assert arrived.wait(5) and seen == [job.id]


def test_worker_fuses_once_and_switches_strength_in_place(make_store, tiny_dir, tiny_pipe):
    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
    assert pipe.fuse_lora(log=lambda m: None) and pipe.lora.fused
    pipe.warmup([(64, 64)])
    weights = {id(p) for p in pipe.transformer.parameters()}
    store = make_store(name="w", lease_s=5)
    worker = Worker(store, pipe, log=lambda m: None).start()
    try:
        strengths = [1.0, 0.5, 0.5, 1.0]
        jobs = [store.submit("s", parse_request({**P, "seed": 3, "lora_strength": s})) for s in strengths]
        done = [worker.wait(job.id, timeout=60) for job in jobs]
    finally:
        worker.stop(10)
    assert all(j.state == COMPLETED for j in done)
    switched = ["lora_switch_s" in j.result["timings"] for j in done]
    assert switched == [False, True, False, True]
    assert pipe.lora.fused and {id(p) for p in pipe.transformer.parameters()} == weights  # nothing reloaded
    # the fused model at 0.5 draws what the runtime adapter draws at 0.5
    reference = tiny_pipe(P["prompt"], width=64, height=64, steps=2, seed=3, lora_strength=0.5, progress=False)
    tiny_pipe.set_lora_strength(1.0)
    fused = np.asarray(Image.open(io.BytesIO(store.image(jobs[1].id, 0))), dtype=np.int16)
    assert np.abs(fused - np.asarray(reference.image, dtype=np.int16)).max() <= 2


def test_cli_errors_are_clear(tmp_path):
    """A worker needs a Redis URL; an unreachable Redis is exit status 2 with a readable message, not a traceback."""
    import subprocess
    import sys

    require_redis()

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, timeout=120
        )

    url = f"redis://127.0.0.1:{free_port()}/0"
    worker = run("worker", "--store", str(tmp_path / "jobs.sqlite3"), "--model", "tiny")
    assert worker.returncode == 2 and "a worker needs a shared store, redis://HOST:PORT/DB" in worker.stderr
    for args in (("serve", "--store", url), ("worker", "--store", url, "--model", "tiny", "--metrics-port", "-1")):
        proc = run(*args)
        assert proc.returncode == 2, proc.stderr
        assert f"error: cannot reach Redis at {url}" in proc.stderr and "Traceback" not in proc.stderr


def test_svg_jobs_traced_off_the_gpu_thread_complete_on_redis(make_store):
    from tests.test_vectorize import SMALL_SVG, FlatArtPipeline, assert_only_shapes

    api, store = make_store(name="api"), make_store(name="w1")
    worker = Worker(store, FlatArtPipeline(), log=lambda m: None, encode_threads=2).start()
    try:
        jobs = [api.submit("Simple_Vector_Flux", parse_request({**SMALL_SVG, "seed": i})) for i in range(3)]
        for job in jobs:
            deadline = time.monotonic() + 30
            while not (done := api.get(job.id)).finished and time.monotonic() < deadline:
                time.sleep(0.02)
            assert done.state == COMPLETED and done.result["ext"] == "svg", done
            assert_only_shapes(api.image(job.id, 0), 192, 128)
    finally:
        assert worker.stop()
