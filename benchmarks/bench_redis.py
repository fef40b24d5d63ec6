#!/usr/bin/env python
"""Scale-out on Redis: throughput with 1, 2, 3 workers, the latency the Redis path adds per job, the LoRA switch.

1. Throughput: a real ``redis-server`` on loopback, one API process (``flux-vector serve --store redis://...``) and
   N tiny-model workers (``flux-vector worker``, one torch thread each: OMP_NUM_THREADS=1); C client threads of the
   real ``segmind`` SDK submit J jobs in all and wait for them; jobs/s = J / (first submit -> last result).
2. Added latency per job, idle system, one job at a time, same tiny job (median of K; wall, and wall minus the job's
   server-side compute time, which removes the compute-speed difference between the two set-ups):
   the embedded store (``flux-vector serve`` with SQLite and its in-process worker) vs the Redis path (one API
   process + one worker process), over HTTP v1 ``run_sync`` (blocks until done; woken by the worker thread resp.
   Redis pub/sub) and v2 submit + poll every 10 ms; and the bare store round trip in this process (submit, claim,
   complete with a 10 kB image, get, read the image) for ``SQLiteJobStore`` (synchronous=FULL, the server's) vs
   ``RedisJobStore``.
3. LoRA strength switch on the tiny model in this process: fused (weights recomputed from the kept W0, what the
   worker does) vs the runtime adapter (one assignment) vs reloading the pipeline.

    python benchmarks/bench_redis.py [--workers 1,2,3] [--jobs 96] [--clients 8] [--size 256] [--steps 8]
        [--repeats 30] [--json out.json]

On this 2-core machine the workers are CPU-bound: expect scaling to stop at 2 workers (the third shares the two
cores with the others, the API process and Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import segmind  # the real SDK (a test dependency)

from tests.redis_cluster import ApiProcess, RedisServer, WorkerProcess, metric
from tests.server_process import ServerProcess

SLUG = "Simple_Vector_Flux"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def compute_totals(procs: list[WorkerProcess]) -> tuple[float, float]:
    """Seconds of model compute and jobs, summed over the workers' /metrics."""
    texts = [proc.metrics() for proc in procs]
    return (
        sum(metric(t, "flux_vector_inference_seconds_sum") for t in texts),
        sum(metric(t, "flux_vector_inference_seconds_count") for t in texts),
    )


def throughput(redis: RedisServer, folder: Path, workers: int, jobs: int, clients: int, params: dict, db: int) -> dict:
    url = redis.url(db)
    procs = [WorkerProcess(url, folder, f"bench{db}-{i}", args=("--lease", "30")).start() for i in range(workers)]
    api = ApiProcess(url, folder, args=("--max-queue", str(jobs * 2)))
    try:
        api.start()
        for proc in procs:
            proc.wait_ready()
        client = segmind.SegmindClient(base_url=api.base_url)
        for _ in range(workers * 2):  # warm every worker at this size
            client.submit_async(SLUG, prompt="warm", **params).wait(interval=0.02)
        before = compute_totals(procs)
        errors: list[str] = []
        walls: list[float] = []

        def loop(index: int) -> None:
            c = segmind.SegmindClient(base_url=api.base_url)
            try:
                handles = [
                    c.submit_async(SLUG, prompt=f"v3ct0r style, job {n}", seed=n, **params)
                    for n in range(index, jobs, clients)
                ]
                for handle in handles:
                    if handle.wait(timeout=600, interval=0.02)["status"] != "COMPLETED":
                        errors.append(handle.request_id)
                walls.append(time.perf_counter())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = max(walls) - started
        after = compute_totals(procs)
        per_job = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        return {
            "workers": workers,
            "jobs": jobs,
            "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "mean_inference_s": per_job,
            "errors": errors,
        }
    finally:
        api.stop()
        for proc in procs:
            proc.stop()


def time_jobs(base_url: str, params: dict, repeats: int) -> dict[str, float]:
    client = segmind.SegmindClient(base_url=base_url)
    for _ in range(3):
        client.run_sync(SLUG, **params)
        client.submit_async(SLUG, **params).wait(interval=0.01)
    v1, v2, v1_over, v2_over = [], [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        response = client.run_sync(SLUG, **params)
        v1.append(time.perf_counter() - t)
        v1_over.append(v1[-1] - float(response.headers["X-Inference-Time"]))
        t = time.perf_counter()
        result = client.submit_async(SLUG, **params).wait(interval=0.01)
        v2.append(time.perf_counter() - t)
        v2_over.append(v2[-1] - result["metrics"]["inference_time"])
    med = statistics.median
    return {
        "v1_run_sync": med(v1),
        "v2_submit_poll": med(v2),
        "v1_run_sync_overhead": med(v1_over),
        "v2_submit_poll_overhead": med(v2_over),
    }


def http_latency(redis: RedisServer, folder: Path, params: dict, repeats: int) -> dict:
    (folder / "embedded").mkdir()
    embedded = ServerProcess(folder / "embedded" / "jobs.sqlite3", env=ONE_THREAD).start()
    try:
        sqlite = time_jobs(embedded.base_url, params, repeats)
    finally:
        embedded.stop()
    url = redis.url(14)
    worker = WorkerProcess(url, folder, "latency").start()
    api = ApiProcess(url, folder)
    try:
        api.start()
        worker.wait_ready()
        over_redis = time_jobs(api.base_url, params, repeats)
    finally:
        api.stop()
        worker.stop()
    return {"sqlite": sqlite, "redis": over_redis, "added_ms": {k: (over_redis[k] - sqlite[k]) * 1e3 for k in sqlite}}


def store_round_trip(redis: RedisServer, folder: Path, repeats: int) -> dict:
    from flux_vector.jobs import SQLiteJobStore
    from flux_vector.jobs.redis_store import RedisJobStore
    from flux_vector.request import parse_request

    image = os.urandom(10_000)
    meta = {"ext": "png", "media_type": "image/png", "echo": {}, "width": 64, "height": 64, "inference_time": 0.0}
    params = parse_request({"prompt": "v3ct0r style, a fox", "width": 64, "height": 64, "steps": 2})

    def one(store) -> float:
        t = time.perf_counter()
        job = store.submit(SLUG, params, max_queue=100)
        claimed = store.claim()
        assert claimed.id == job.id
        store.progress(job.id, 1, 2)
        store.complete(job.id, [image], meta)
        assert store.get(job.id).state == "COMPLETED" and store.image(job.id, 0) == image
        return time.perf_counter() - t

    out = {}
    for name, store in (
        ("sqlite", SQLiteJobStore(folder / "rt" / "jobs.sqlite3")),
        ("redis", RedisJobStore.from_url(redis.url(15), claim_block_s=0.0)),
    ):
        try:
            for _ in range(5):
                one(store)
            out[name] = statistics.median(one(store) for _ in range(repeats)) * 1e3
        finally:
            store.close()
    out["added_ms"] = out["redis"] - out["sqlite"]
    return out


def lora_switch(repeats: int) -> dict:
    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)

    def switches() -> float:
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            pipe.set_lora_strength(0.5 if i % 2 == 0 else 1.0)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    adapter_ms = switches()
    pipe.lora.fuse()
    fused_ms = switches()
    t = time.perf_counter()
    FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
    reload_ms = (time.perf_counter() - t) * 1e3
    return {
        "fused_ms": fused_ms,
        "runtime_adapter_ms": adapter_ms,
        "reload_ms": reload_ms,
        "layers": len(pipe.lora.modules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure (comma-separated)")
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="image side of the throughput jobs")
    parser.add_argument("--steps", type=int, default=8, help="steps of the throughput jobs")
    parser.add_argument("--repeats", type=int, default=30, help="jobs per path in the latency phases")
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = {"width": args.size, "height": args.size, "steps": args.steps}
    small = {"prompt": "v3ct0r style, a fox", "width": 64, "height": 64, "steps": 2}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = RedisServer(folder / "redis").start()
        try:
            runs = []
            for i, n in enumerate(args.workers.split(",")):
                runs.append(throughput(redis, folder, int(n), args.jobs, args.clients, params, db=i))
                print(f"  ({n} worker(s): {runs[-1]['jobs_per_s']:.2f} jobs/s)", file=sys.stderr, flush=True)
            latency = http_latency(redis, folder, small, args.repeats)
            store = store_round_trip(redis, folder, max(args.repeats, 200))
        finally:
            redis.stop()
    switch = lora_switch(max(args.repeats, 20))

    print(
        f"throughput ({args.size}x{args.size}, {args.steps} steps, tiny model, {args.jobs} jobs from {args.clients} "
        f"segmind clients, 1 API process, workers at 1 torch thread each, {os.cpu_count()} cores):"
    )
    base = runs[0]["jobs_per_s"] / runs[0]["workers"]
    for run in runs:
        print(
            f"  {run['workers']} worker(s): {run['jobs_per_s']:6.2f} jobs/s  ({run['seconds']:.1f} s; "
            f"{run['jobs_per_s'] / base:.2f}x one worker; mean compute {run['mean_inference_s'] * 1e3:.0f} ms/job; "
            f"{len(run['errors'])} errors)"
        )
    m = latency
    print(
        f"added latency per job, idle, one at a time ({small['width']}x{small['height']}, {small['steps']} steps; "
        f"median of {args.repeats}):"
    )
    for key, label in (("v1_run_sync", "v1 run_sync          "), ("v2_submit_poll", "v2 submit+poll 10 ms ")):
        over = key + "_overhead"
        print(
            f"  {label} wall: embedded {m['sqlite'][key] * 1e3:6.1f} ms, redis {m['redis'][key] * 1e3:6.1f} ms "
            f"({m['added_ms'][key]:+5.1f} ms); minus the job's compute: embedded {m['sqlite'][over] * 1e3:5.1f} ms, "
            f"redis {m['redis'][over] * 1e3:5.1f} ms ({m['added_ms'][over]:+5.1f} ms)"
        )
    print(
        f"  store round trip (submit, claim, progress, complete 10 kB, get, image; in-process): "
        f"sqlite {store['sqlite']:.2f} ms, redis {store['redis']:.2f} ms ({store['added_ms']:+.2f} ms)"
    )
    print(
        f"lora strength switch, tiny model ({switch['layers']} layers): fused {switch['fused_ms']:.2f} ms, runtime "
        f"adapter {switch['runtime_adapter_ms']:.3f} ms, full reload {switch['reload_ms']:.0f} ms"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "throughput": runs, "latency": latency, "store": store, "lora_switch": switch},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
