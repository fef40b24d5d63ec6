"""Redis faults never leave a job stuck or lose it silently (issue 32), against a real redis-server and a
fault-injecting TCP proxy (``tests/fault_proxy.py``) between a worker and Redis.

Timings: the outage at ``complete()`` runs at the issue's scale (a 20 s outage, a 30 s lease, redis-py's own
retries); the other outages are scaled down (leases of 3-6 s, clients without retries so that an error reaches the
worker at once) to keep the suite fast. Workers run in this process on the fake pipeline unless a test is about the
``flux-vector`` processes themselves (the CLI's refusals at start, the API process's 503 and ``/healthz``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from flux_vector.jobs import COMPLETED, FAILED, PROCESSING, QUEUED, Worker
from flux_vector.jobs import redis_scripts as lua
from flux_vector.jobs.redis_store import Fleet, RedisJobStore
from flux_vector.jobs.store import StoreUnavailable
from flux_vector.request import parse_request
from tests.fake_pipeline import FakePipeline
from tests.fault_proxy import FaultProxy, script_sha
from tests.job_data import P
from tests.redis_cluster import ApiProcess, RedisServer

pytestmark = pytest.mark.redis
DB = 5  # test_redis_store.py uses 3, test_store_contract.py 4
GPU_ADVICE = ("quantize", "smaller size", "offload", "out of memory generating")


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Logs(list):
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture
def redis_db(redis_server):
    client = redis_server.client(db=DB)
    client.flushdb()
    return client


@pytest.fixture
def open_store(redis_server, redis_db):
    """``open_store(url=..., client=..., **kwargs)``: a RedisJobStore on the test database (direct by default)."""
    made: list[RedisJobStore] = []

    def open_(*, url: str | None = None, client=None, **kwargs) -> RedisJobStore:
        kwargs.setdefault("claim_block_s", 0.05)
        if client is not None:
            port = client.connection_pool.connection_kwargs["port"]
            store = RedisJobStore(client, url=f"redis://127.0.0.1:{port}/{DB}", **kwargs)
        else:
            store = RedisJobStore.from_url(url or redis_server.url(DB), **kwargs)
        made.append(store)
        return store

    yield open_
    for store in made:
        store.close()


@pytest.fixture
def start_worker():
    """``start_worker(store, pipeline=None, logs=None)``: a Worker thread on ``store``; stopped at the end."""
    started: list[Worker] = []

    def start(store: RedisJobStore, pipeline=None, logs: Logs | None = None) -> Worker:
        worker = Worker(store, pipeline or FakePipeline(step_s=0.01), log=(logs if logs is not None else Logs()).append)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop(10)


def quick_client(port: int):
    """A redis-py client that does not retry: a cut connection reaches the store's caller at once."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=port, db=DB, retry=Retry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=1)


def job_hash(redis_db, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in redis_db.hgetall(f"flux_vector:job:{job_id}").items()}


# ----------------------------------------------------------------------------------- rule 1: outages while saving
@pytest.mark.parametrize("at", ["complete", "progress"])
def test_a_20s_outage_with_a_30s_lease_ends_the_job_and_answers_the_v1_caller(
    at, redis_server, redis_db, open_store, start_worker, tmp_path
):
    """The issue's scale: a worker through the proxy loses Redis for 20 s exactly when it sends complete() (or its
    first progress write); redis-py's retries (~10 s) run out, the worker skips progress, keeps the images and saves
    them again while its 30 s lease holds."""
    api = ApiProcess(redis_server.url(DB), tmp_path).start()
    proxy = FaultProxy(redis_server.port)
    try:
        logs = Logs()
        store = open_store(url=proxy.url(DB), lease_s=30, name="w-proxied")
        start_worker(store, FakePipeline(step_s=0.1), logs)
        proxy.trigger(script_sha(lua.COMPLETE if at == "complete" else lua.PROGRESS), 20.0)
        started = time.monotonic()
        answer = httpx.post(api.base_url + "/Simple_Vector_Flux", json={**P, "steps": 10}, timeout=120)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.content[:4] == b"\x89PNG"
        assert len(proxy.outages) == 1 and elapsed >= 20.0
        assert ("could not save its result" if at == "complete" else "progress not saved") in logs.text()
        assert "Redis at" in logs.text()
        assert "model error" not in logs.text() and "FAILED" not in logs.text()
        health = httpx.get(api.url + "/healthz", timeout=5).json()
        assert health["jobs"][PROCESSING] == 0 and health["jobs"][COMPLETED] == 1
        print(f"\n20 s outage at {at}, 30 s lease: the /v1 caller was answered after {elapsed:.1f} s")
    finally:
        proxy.close()
        assert api.stop(), api.log()


def test_an_outage_at_a_progress_write_skips_progress_and_the_run_completes(redis_db, open_store, start_worker):
    """Scaled: a 3 s outage at the first progress write, a 6 s lease. The run goes on without progress; the same
    worker completes it."""
    proxy = FaultProxy(redis_db.connection_pool.connection_kwargs["port"])
    try:
        logs = Logs()
        api = open_store()
        store = open_store(client=quick_client(proxy.port), lease_s=6, name="w")
        proxy.trigger(script_sha(lua.PROGRESS), 3.0)
        job = api.submit("s", parse_request({**P, "steps": 40}))
        start_worker(store, FakePipeline(step_s=0.1), logs)
        wait_until(lambda: api.get(job.id).finished, 30, "the job to end")
        done = api.get(job.id)
        assert done.state == COMPLETED and done.attempts == 1, done
        assert len(proxy.outages) == 1
        assert "progress not saved" in logs.text() and "Redis at" in logs.text()
        assert "model error" not in logs.text()
    finally:
        proxy.close()


def test_a_result_unsaved_past_the_lease_is_dropped_and_another_worker_runs_it(redis_db, open_store, start_worker):
    """Scaled: an 8 s outage at complete(), a 3 s lease. The worker retries while its lease holds, then drops it
    (no more heartbeats); another worker takes the job over within about one lease and completes it."""
    proxy = FaultProxy(redis_db.connection_pool.connection_kwargs["port"])
    try:
        logs = Logs()
        api = open_store()
        cut_off = open_store(client=quick_client(proxy.port), lease_s=3, name="cut-off")
        proxy.trigger(script_sha(lua.COMPLETE), 8.0)
        job = api.submit("s", parse_request(P))
        start_worker(cut_off, logs=logs)
        wait_until(lambda: proxy.outages, 20, "the outage")
        start_worker(open_store(lease_s=3, name="healthy"))
        wait_until(lambda: "given up" in logs.text(), 20, "the job to be given up")
        dropped_at = time.monotonic()
        assert not cut_off._leases  # nothing left to heartbeat
        wait_until(lambda: api.get(job.id).finished, 20, "the job to end")
        taken_over_in = time.monotonic() - dropped_at
        done = api.get(job.id)
        assert done.state == COMPLETED and done.attempts == 2, done
        assert api.worker_info(job.id)["ran_on"] == ["cut-off", "healthy"]
        assert taken_over_in < 3 + 3  # within about one lease of the drop
        assert "could not save its result" in logs.text() and "model error" not in logs.text()
        assert cut_off.stats["abandoned"] == 1
    finally:
        proxy.close()


def test_aof_redis_killed_and_restarted_with_12_jobs_in_flight_ends_all_12(tmp_path, start_worker):
    """The README's durable setup (AOF, fsync always): kill -9 of Redis mid-run, a restart 5 s later on the same
    port and folder; 3 workers with 12 jobs queued or running. Every job ends, COMPLETED."""
    folder = tmp_path / "aof"
    server = RedisServer(folder, appendonly=True).start()
    stores: list[RedisJobStore] = []
    try:
        url = server.url(0)
        api = RedisJobStore.from_url(url, lease_s=4)
        stores.append(api)
        jobs = [api.submit("s", parse_request({**P, "seed": i, "steps": 10})) for i in range(12)]
        logs = Logs()
        for i in range(3):
            store = RedisJobStore.from_url(url, lease_s=4, name=f"w{i}", claim_block_s=0.2, log=logs.append)
            stores.append(store)
            start_worker(store, FakePipeline(step_s=0.1), logs)
        wait_until(lambda: api.counts()[COMPLETED] >= 2, 30, "the first jobs")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        time.sleep(5)
        server = RedisServer(folder, port=server.port, appendonly=True).start()

        def ended() -> bool:
            try:
                return all(api.get(job.id).finished for job in jobs)
            except Exception:
                return False

        wait_until(ended, 90, "all 12 jobs to end")
        states = [api.get(job.id).state for job in jobs]
        assert states == [COMPLETED] * 12, states
        assert api.counts()[PROCESSING] == 0 and api.counts()[QUEUED] == 0
        attempts = sorted(api.get(job.id).attempts for job in jobs)
        assert "model error" not in logs.text()
        print(f"\nAOF Redis kill -9 + restart after 5 s: 12/12 COMPLETED, attempts per job {attempts}")
    finally:
        for store in stores:
            store.close()
        server.stop()


# ----------------------------------------------------------------------------------- rule 2: an evicting Redis
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, timeout=120)


def test_an_evicting_redis_is_refused_at_start_unless_overridden(tmp_path, tiny_dir):
    server = RedisServer(tmp_path / "lru", extra=("--maxmemory-policy", "allkeys-lru", "--maxmemory", "64mb")).start()
    try:
        url = server.url(0)
        for args in (
            ("worker", "--store", url, "--model", "tiny", "--metrics-port", "-1"),
            ("serve", "--store", url, "--port", "0"),
        ):
            proc = run_cli(*args)
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "maxmemory-policy allkeys-lru" in lines[0] and "noeviction" in lines[0]
            assert "--allow-redis-eviction" in lines[0]
        store = RedisJobStore.from_url(url)
        try:
            with pytest.raises(StoreUnavailable, match="evicts keys"):
                store.verify("worker")
            store.verify("worker", allow_eviction=True)  # the override: the operator knows better
            store.check()
        finally:
            store.close()
    finally:
        server.stop()


def test_healthz_is_not_ok_once_redis_starts_evicting(redis_server, redis_db, tmp_path):
    api = ApiProcess(redis_server.url(DB), tmp_path).start()
    try:
        assert httpx.get(api.url + "/healthz", timeout=5).status_code == 200
        redis_db.config_set("maxmemory-policy", "allkeys-lru")
        try:
            wait_until(lambda: httpx.get(api.url + "/healthz", timeout=5).status_code == 503, 10, "/healthz 503")
            body = httpx.get(api.url + "/healthz", timeout=5).json()
            assert "maxmemory-policy allkeys-lru" in body["error"] and body["status"] == "unavailable"
        finally:
            redis_db.config_set("maxmemory-policy", "noeviction")
        wait_until(lambda: httpx.get(api.url + "/healthz", timeout=5).status_code == 200, 10, "/healthz ok again")
    finally:
        assert api.stop(), api.log()


# ----------------------------------------------------------------------------------- rule 3: a full Redis
def test_a_full_redis_is_a_full_store_never_gpu_memory(redis_server, redis_db, open_store, start_worker, tmp_path):
    """Submits get 503 with Retry-After naming Redis's memory, /healthz says so; the running job whose result cannot
    be saved is dropped after its lease and runs again once Redis has room: COMPLETED, no GPU advice anywhere."""
    api = ApiProcess(redis_server.url(DB), tmp_path).start()
    try:
        logs = Logs()
        reader = open_store()
        job = reader.submit("s", parse_request({**P, "steps": 20}))
        start_worker(open_store(lease_s=3, name="w"), FakePipeline(step_s=0.1), logs)
        wait_until(lambda: reader.get(job.id).state == PROCESSING, 20, "the job to run")
        redis_db.config_set("maxmemory", 1)  # below what Redis holds: every write is refused (noeviction)
        try:
            answer = httpx.post(api.url + "/v2/Simple_Vector_Flux", json=P, timeout=30)
            assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
            error = answer.json()["error"]
            assert "Redis" in error and "out of memory" in error and "maxmemory" in error
            assert not any(advice in error for advice in GPU_ADVICE)
            health = httpx.get(api.url + "/healthz", timeout=5)
            assert health.status_code == 503 and "job store is full" in health.json()["error"]
            wait_until(lambda: "could not save its result" in logs.text(), 20, "the worker to hit the full store")
            # past the 3 s lease: the result could not be saved, the lease is dropped
            wait_until(lambda: "given up" in logs.text(), 20, "the worker to give the job up")
        finally:
            redis_db.config_set("maxmemory", 0)
        wait_until(lambda: reader.get(job.id).finished, 30, "the job to end")
        done = reader.get(job.id)
        assert done.state == COMPLETED and done.attempts == 2, done
        assert not any(advice in logs.text() for advice in GPU_ADVICE), logs.text()
        assert "out of memory" in logs.text() and "Redis at" in logs.text()
    finally:
        assert api.stop(), api.log()


# ----------------------------------------------------------------------------------- rule 4: self-healing
def test_deleting_the_stream_loses_no_queued_job(redis_db, open_store, start_worker):
    api = open_store()
    early = [api.submit("s", parse_request({**P, "seed": i})) for i in range(4)]
    redis_db.delete("flux_vector:queue")  # no worker yet: the jobs exist only in the queued index
    worker_store = open_store(name="w")
    start_worker(worker_store, FakePipeline(step_s=0.05))
    later = [api.submit("s", parse_request({**P, "seed": 10 + i, "steps": 10})) for i in range(6)]
    wait_until(lambda: api.get(later[0].id).state != QUEUED, 20, "a later job to start")
    redis_db.delete("flux_vector:queue")  # again, with a job running and five waiting
    wait_until(lambda: all(api.get(j.id).finished for j in (*early, *later)), 60, "every queued job to end")
    assert [api.get(j.id).state for j in (*early, *later)] == [COMPLETED] * 10
    assert worker_store.stats["healed"] >= 4
    assert api.counts() == {QUEUED: 0, PROCESSING: 0, COMPLETED: 10, FAILED: 0}


def test_a_destroyed_group_is_made_again(redis_db, open_store, start_worker):
    api = open_store()
    jobs = [api.submit("s", parse_request({**P, "seed": i})) for i in range(3)]
    redis_db.xgroup_destroy("flux_vector:queue", "workers")
    start_worker(open_store(name="w"))
    wait_until(lambda: all(api.get(j.id).finished for j in jobs), 30, "the jobs to end")
    assert [api.get(j.id).state for j in jobs] == [COMPLETED] * 3


def test_a_vanished_job_hash_leaves_the_counters(redis_db, open_store):
    api, worker = open_store(), open_store(name="w", lease_s=5)
    running, waiting = api.submit("s", parse_request(P)), api.submit("s", parse_request(P))
    assert worker.claim().id == running.id
    redis_db.delete(f"flux_vector:job:{running.id}", f"flux_vector:job:{waiting.id}")
    assert api.counts() == {QUEUED: 0, PROCESSING: 0, COMPLETED: 0, FAILED: 0}  # at once
    assert worker.heal() == (0, 2)  # and the indexes are cleaned
    assert redis_db.zcard("flux_vector:processing") == 0 and redis_db.zcard("flux_vector:queued") == 0


def test_a_worker_lacking_a_command_is_refused_at_start_naming_it(redis_server, redis_db, open_store, tiny_dir):
    user = "i32-no-xreadgroup"
    redis_db.execute_command("ACL", "SETUSER", user, "on", ">pw-32", "~*", "&*", "+@all", "-xreadgroup")
    try:
        url = f"redis://{user}:@127.0.0.1:{redis_server.port}/{DB}"  # the password from the environment
        limited = RedisJobStore.from_url(url, password="pw-32")
        try:
            with pytest.raises(StoreUnavailable) as refused:
                limited.verify("worker")
            assert "may not run XREADGROUP" in str(refused.value) and f"ACL SETUSER {user} +xreadgroup" in str(
                refused.value
            )
            limited.verify("api")  # an API process needs no XREADGROUP
        finally:
            limited.close()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "flux_vector.cli",
                "worker",
                "--store",
                url,
                "--model",
                "tiny",
                "--metrics-port",
                "-1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "FLUX_VECTOR_REDIS_PASSWORD": "pw-32"},
        )
        assert proc.returncode == 2 and "may not run XREADGROUP" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "pw-32" not in proc.stderr
    finally:
        redis_db.execute_command("ACL", "DELUSER", user)


# ----------------------------------------------------------------------------------- rule 5: mixed fleets
def test_a_worker_with_another_model_leaves_the_job_for_one_that_matches(open_store, start_worker):
    api = open_store(fleet=Fleet(model="flux-dev", lora="simple-vector"))
    job = api.submit("s", parse_request(P))
    other_logs = Logs()
    other = open_store(name="tiny-worker", fleet=Fleet(model="tiny"), log=other_logs.append)
    start_worker(other, logs=other_logs)
    other.announce(lambda: {"state": "idle", "serves": {"model": "tiny", "lora": "", "version": Fleet().version}})
    other.beat()  # its entry now, not a heartbeat later
    wait_until(lambda: other.stats["left_for_others"] >= 1, 10, "the mismatched worker to see the job")
    time.sleep(0.5)
    assert api.get(job.id).state == QUEUED
    problem = api.serving_problem(api.workers())
    assert problem and "no live worker serves model flux-dev, LoRA simple-vector" in problem and "tiny" in problem
    assert "left queued for a worker that serves it" in other_logs.text()
    matching = open_store(name="dev-worker", fleet=Fleet(model="flux-dev", lora="simple-vector"))
    start_worker(matching)
    wait_until(lambda: api.get(job.id).finished, 20, "the matching worker to run it")
    assert api.get(job.id).state == COMPLETED and api.worker_info(job.id)["ran_on"] == ["dev-worker"]
    # a job from an API of another flux_vector version waits for a worker of that version
    newer = open_store(fleet=Fleet(version="99.0.0")).submit("s", parse_request(P))
    time.sleep(1.0)
    assert api.get(newer.id).state == QUEUED
    start_worker(open_store(name="newer-worker", fleet=Fleet(version="99.0.0")))
    wait_until(lambda: api.get(newer.id).finished, 20, "the worker of that version to run it")
    assert api.worker_info(newer.id)["ran_on"] == ["newer-worker"]


def test_jobs_record_what_the_api_serves(redis_db, open_store):
    job = open_store(fleet=Fleet(model="flux-dev", lora="simple-vector")).submit("s", parse_request(P))
    recorded = job_hash(redis_db, job.id)
    assert (recorded["model"], recorded["lora"], recorded["version"]) == ("flux-dev", "simple-vector", Fleet().version)
    anyone = open_store().submit("s", parse_request(P))
    assert job_hash(redis_db, anyone.id)["model"] == ""


def test_the_api_process_records_its_model_and_healthz_says_when_no_worker_serves_it(
    redis_server, open_store, start_worker, tmp_path
):
    api = ApiProcess(
        redis_server.url(DB), tmp_path, args=("--model", "/models/flux-dev", "--lora", "vector.safetensors")
    )
    api.start()
    try:
        submitted = httpx.post(api.url + "/v2/Simple_Vector_Flux", json=P, timeout=30)
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        reader = open_store()
        recorded = reader.r.hmget(reader.key(f"job:{request_id}"), "model", "lora", "version")
        assert [v.decode() for v in recorded] == ["flux-dev", "vector.safetensors", Fleet().version]
        other = open_store(name="tiny-worker", fleet=Fleet(model="tiny"))
        start_worker(other)
        other.announce(lambda: {"state": "idle", "serves": {"model": "tiny", "lora": "", "version": Fleet().version}})
        other.beat()
        health = httpx.get(api.url + "/healthz", timeout=5).json()
        assert "no live worker serves model flux-dev, LoRA vector.safetensors" in health["serving"], health
        assert httpx.get(f"{api.url}/v2/requests/{request_id}/status", timeout=5).json()["status"] == QUEUED
    finally:
        assert api.stop(), api.log()
