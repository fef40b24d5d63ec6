"""Scale-out on Redis end to end: a real ``redis-server`` on a loopback port, 2 API processes (``flux-vector serve
--store redis://...``) and 3 workers (``flux-vector worker``, on the fake pipeline with a LoRA: the queue is the
point here; the no-network and fault tests run workers on the tiny model) as subprocesses, driven by the real
``segmind`` SDK (1.3.0): the user's script behaves as on the embedded store, so do the API key and the queue bound;
300 jobs from 8 client threads survive a worker SIGKILLed mid-job (its job re-runs on another worker; every job
COMPLETED exactly once); results vanish after the (shortened) retention."""

import io
import signal
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import segmind
from PIL import Image

from tests.fake_pipeline import FAKE_LORA_ENV
from tests.redis_cluster import ApiProcess, RedisServer, WorkerProcess, metric, require_redis
from tests.segmind_script import SLUG, SMALL, run_script

pytestmark = [pytest.mark.redis, pytest.mark.slow]  # processes: an API server and three workers
KEY = "redis-test-key-42"
KEYED = {"x-api-key": KEY}  # issue 27: with a key configured, /healthz says more and /metrics answers only with it
LEASE_S = 4.0  # a SIGKILLed worker's job runs again this long after its last heartbeat
RETENTION_S = 25.0  # longer than the 300-job run, so every result can still be checked at its end
JOBS, CLIENTS = 300, 8
TINY = {"width": 64, "height": 64, "steps": 1}
COMPLETED_METRIC = 'flux_vector_jobs_finished_total{state="COMPLETED"}'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_dir):
    require_redis()
    folder = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(folder).start()
    url = redis.url(0)
    workers = [
        WorkerProcess(url, folder, f"w{i}", args=("--lease", str(LEASE_S)), env=FAKE_LORA_ENV).start() for i in range(3)
    ]
    apis = [
        ApiProcess(
            url, folder, args=("--max-queue", "400", "--retention", str(RETENTION_S)), env={"FLUX_VECTOR_API_KEY": KEY}
        )
        for _ in range(2)
    ]
    try:
        for api in apis:
            api.start()
        for worker in workers:
            worker.wait_ready()
        yield SimpleNamespace(redis=redis, url=url, workers=workers, apis=apis, folder=folder)
    finally:
        stopped = {p.args[0] + " " + str(getattr(p, "name", p.port)): p.stop() for p in (*apis, *workers)}
        redis.stop()
    killed = {f"worker {w.name}" for w in workers if w.proc.returncode == -signal.SIGKILL}
    assert all(ok for name, ok in stopped.items() if name not in killed), (stopped, *(p.log() for p in workers))


def test_the_segmind_script_on_the_redis_store(cluster, monkeypatch):
    """The same user script as tests/test_server.py, against an API process whose jobs run on remote workers."""
    kwargs = {"api_key": KEY, "base_url": cluster.apis[0].base_url}
    monkeypatch.setattr(segmind, "_default_client", segmind.SegmindClient(**kwargs))
    run_script(segmind, kwargs, output_scheme="http://127.0.0.1")


def test_api_key_and_queue_bound_as_with_the_embedded_store(cluster, monkeypatch):
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    for api in cluster.apis:
        for key, detail in (
            (None, "missing API key: send it in the x-api-key header"),
            ("wrong-key", "invalid API key"),
        ):
            with pytest.raises(segmind.SegmindError) as denied:
                segmind.SegmindClient(api_key=key, base_url=api.base_url).submit_async(SLUG, prompt="a cat", **SMALL)
            assert (denied.value.status, denied.value.detail) == (401, detail)
    # a third API process with a queue bound of 2; the 3 workers held busy
    small = ApiProcess(
        cluster.url,
        cluster.folder,
        args=("--max-queue", "2", "--retention", str(RETENTION_S)),
        env={"FLUX_VECTOR_API_KEY": KEY},
    )
    small.start()
    try:
        client = segmind.SegmindClient(api_key=KEY, base_url=small.base_url)
        busy = [client.submit_async(SLUG, prompt=f"[[fault:sleep=3]] hold worker {i}", **SMALL) for i in range(3)]
        deadline = time.monotonic() + 30
        while any(job.status()["status"] != "PROCESSING" for job in busy):
            assert time.monotonic() < deadline, [job.status() for job in busy]
            time.sleep(0.05)
        waiting = [client.submit_async(SLUG, prompt=f"queued {i}", **SMALL) for i in range(2)]
        assert [job.status()["position"] for job in waiting] == [0, 1]
        with pytest.raises(segmind.SegmindError) as full:
            client.submit_async(SLUG, prompt="one too many", **SMALL)
        assert full.value.status == 429 and "queue is full (2 jobs waiting)" in full.value.detail
        with pytest.raises(segmind.SegmindError) as full_sync:
            client.run_sync(SLUG, prompt="one too many", **SMALL)
        assert full_sync.value.status == 429
        health = httpx.get(small.url + "/healthz", headers=KEYED).json()
        assert health["role"] == "api" and health["store"] == "redis" and health["jobs"]["QUEUED"] == 2
        assert sorted(w["name"] for w in health["workers"]) == ["w0", "w1", "w2"]
        while not all(w["state"] == "busy" for w in health["workers"]):  # entries refresh every lease/3
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
            health = httpx.get(small.url + "/healthz", headers=KEYED).json()
        assert all(w["fused"] and w["lora_strength"] == 1 and w["model"] == "tiny" for w in health["workers"])
        assert all(w["serves"]["model"] == "tiny" and w["serves"]["version"] for w in health["workers"])  # issue 32
        assert "serving" not in health  # the API process asks for no model: every worker serves its jobs
        metrics = httpx.get(small.url + "/metrics", headers=KEYED).text
        assert metric(metrics, "flux_vector_queue_depth") == 2 and metric(metrics, "flux_vector_workers") == 3
        assert metric(metrics, 'flux_vector_jobs_rejected_total{reason="queue_full"}') == 2
        assert metric(metrics, 'flux_vector_jobs{state="PROCESSING"}') == 3
        assert metric(cluster.workers[0].metrics(), "flux_vector_worker_busy") == 1
        for job in (*busy, *waiting):
            assert job.wait(timeout=60, interval=0.05)["status"] == "COMPLETED"
    finally:
        assert small.stop(), small.log()
    worker_metrics = cluster.workers[0].metrics()
    assert metric(worker_metrics, "flux_vector_lora_fused") == 1 and metric(worker_metrics, "flux_vector_workers") == 3
    assert metric(worker_metrics, "flux_vector_inference_seconds_count") >= 1


def test_300_jobs_from_8_clients_survive_a_sigkilled_worker_then_expire(cluster):
    rc = cluster.redis.client()
    victim, survivors = cluster.workers[0], cluster.workers[1:]
    before = {w.name: metric(w.metrics(), COMPLETED_METRIC) for w in cluster.workers}
    lock = threading.Lock()
    results: dict[str, list] = {}
    sleepers: set[str] = set()
    errors: list[str] = []
    finished = [0]
    handles: dict[str, segmind.AsyncJob] = {}

    def client_loop(index: int) -> None:
        api = cluster.apis[index % 2]
        client = segmind.SegmindClient(api_key=KEY, base_url=api.base_url)
        try:
            jobs = []
            for n in range(index, JOBS, CLIENTS):
                slow = n % 10 == 5  # 30 jobs hold their worker 0.5 s: a window to SIGKILL one mid-job
                prompt = ("[[fault:sleep=0.5]] " if slow else "") + f"v3ct0r style, job {n}"
                job = client.submit_async(SLUG, prompt=prompt, seed=n, **TINY)
                if slow:
                    with lock:
                        sleepers.add(job.request_id)
                jobs.append((n, job))
            for n, job in jobs:
                final = job.wait(timeout=180, interval=0.1)
                with lock:
                    results.setdefault(job.request_id, []).append((n, final))
                    handles[job.request_id] = job
                    finished[0] += 1
        except Exception as exc:
            errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    # mid-run: once a third of the jobs are done, SIGKILL w0 while it is inside one of the slow jobs
    deadline = time.monotonic() + 120
    while finished[0] < JOBS // 3 and not errors:
        assert time.monotonic() < deadline, (finished, errors)
        time.sleep(0.02)
    killed_job, victim_completed = None, None
    while killed_job is None:
        assert time.monotonic() < deadline and not errors, ("w0 never ran a slow job", errors)
        first = victim.health()["current_job"]
        if first in sleepers:
            count = metric(victim.metrics(), COMPLETED_METRIC)
            if victim.health()["current_job"] == first:  # still inside it: the count is the one at the kill
                victim.kill(signal.SIGKILL)
                killed_job, victim_completed = first, count
        time.sleep(0.01)
    killed_at = finished[0]
    for thread in threads:
        thread.join(240)
    elapsed = time.monotonic() - started
    all_done = time.time()
    assert not errors, errors[:5]
    assert victim.proc.returncode == -signal.SIGKILL and killed_at < JOBS

    # all 300 COMPLETED, each exactly once in the results, none lost
    assert len(results) == JOBS and all(len(entries) == 1 for entries in results.values())
    finals = {request_id: entries[0] for request_id, entries in results.items()}
    assert sorted(n for n, _ in finals.values()) == list(range(JOBS))
    assert all(final["status"] == "COMPLETED" and final["seed"] == n for n, final in finals.values())
    # the killed worker's job ran again on another worker, after the lease
    job = rc.hgetall(f"flux_vector:job:{killed_job}")
    ran_on = job[b"ran_on"].decode().split()
    assert job[b"state"] == b"COMPLETED" and int(job[b"attempts"]) == 2, job
    assert ran_on[0] == "w0" and ran_on[1] in ("w1", "w2") and job[b"worker"].decode() == ran_on[1]
    # no job completed twice: the workers' completions of this test add up to exactly 300
    done = sum(metric(w.metrics(), COMPLETED_METRIC) - before[w.name] for w in survivors)
    assert done + (victim_completed - before["w0"]) == JOBS
    reclaimed = sum(metric(w.metrics(), "flux_vector_reclaimed_total") for w in survivors)
    assert reclaimed >= 1
    # nothing left in flight: the stream is empty, nothing pending, the indexes agree
    assert rc.xlen("flux_vector:queue") == 0 and rc.xpending("flux_vector:queue", "workers")["pending"] == 0
    assert rc.zcard("flux_vector:queued") == 0 and rc.zcard("flux_vector:processing") == 0
    # any API process serves any result's image
    for _, final in list(finals.values())[:: JOBS // 10]:
        own = httpx.get(final["output"])
        other_port = cluster.apis[1].port if f":{cluster.apis[0].port}/" in final["output"] else cluster.apis[0].port
        other = httpx.get(final["output"].replace(final["output"].split("/")[2], f"127.0.0.1:{other_port}"))
        assert own.status_code == other.status_code == 200 and own.content == other.content
        assert Image.open(io.BytesIO(own.content)).size == (64, 64)
    submitted = sum(
        metric(httpx.get(api.url + "/metrics", headers=KEYED).text, "flux_vector_jobs_submitted_total")
        for api in cluster.apis
    )
    assert submitted >= JOBS
    # the dead worker drops out of /healthz once its entry's lease runs out
    deadline = time.monotonic() + 3 * LEASE_S
    while len(httpx.get(cluster.apis[0].url + "/healthz", headers=KEYED).json()["workers"]) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    print(
        f"\n300 jobs, 8 clients, 2 API processes, 3 workers (one SIGKILLed after {killed_at} finished): "
        f"{elapsed:.1f} s, {JOBS / elapsed:.1f} jobs/s"
    )

    # results vanish after the retention: bodies, images and the Redis keys themselves
    time.sleep(max(0.0, all_done + RETENTION_S + 0.2 - time.time()))
    for _, final in list(finals.values())[:: JOBS // 10]:
        for call in (handles[final["request_id"]].status, handles[final["request_id"]].result):
            with pytest.raises(segmind.SegmindError) as gone:
                call()
            assert gone.value.status == 404 and "expired" in gone.value.detail
        assert httpx.get(final["output"]).status_code == 404
    deadline = time.monotonic() + 10  # Redis's active expiry cycle deletes the keys nobody reads
    while list(rc.scan_iter("flux_vector:job:*", count=1000)) or list(rc.scan_iter("flux_vector:img:*", count=1000)):
        assert time.monotonic() < deadline, [(key, rc.pttl(key)) for key in rc.scan_iter("flux_vector:*")]
        time.sleep(0.1)
    health = httpx.get(cluster.apis[0].url + "/healthz", headers=KEYED).json()
    assert health["jobs"] == {"QUEUED": 0, "PROCESSING": 0, "COMPLETED": 0, "FAILED": 0}
