#!/usr/bin/env python
"""Load test of ``flux-vector serve`` on loopback, driven by the real ``segmind`` SDK.

1. Load: N concurrent clients (threads, one SegmindClient each) each submit J jobs one after another and poll each
   until it completes, while the worker is busy computing; every submit (``POST /v2``) and status call
   (``GET /v2/requests/{id}/status``) is timed: p50/p99/max. A monitor samples /healthz to report how much of the
   phase the worker was busy.
2. Overhead: K identical jobs run one at a time on the idle server over HTTP (v2 submit + 10 ms polls, and v1
   ``run_sync``) and in this process through the facade (``flux_vector.run``, same model), interleaved;
   the HTTP overhead per job is the median wall time over the in-process median (a ratio) and their difference.

    python benchmarks/bench_server.py [--clients 16] [--jobs-per-client 4] [--load-size 128] [--load-steps 8]
        [--repeats 30] [--size 64] [--steps 2] [--model tiny] [--json out.json]

The server runs the tiny model by default (random weights, real architecture), so the worker's load is real torch
compute on the same CPU cores as the HTTP server: a worst case for HTTP latency on a CPU-only box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import segmind  # the real SDK (a test dependency)

from tests.server_process import ServerProcess

SLUG = "Simple_Vector_Flux"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50) * 1e3,
        "p99_ms": pct(values, 99) * 1e3,
        "max_ms": max(values) * 1e3 if values else float("nan"),
    }


def load_phase(server: ServerProcess, clients: int, jobs_per_client: int, params: dict, poll: float) -> dict:
    submits: list[float] = []
    statuses: list[float] = []
    errors: list[str] = []
    busy_samples: list[bool] = []
    stop = threading.Event()

    def monitor():
        with httpx.Client() as http:
            while not stop.is_set():
                busy_samples.append(http.get(server.url + "/healthz").json()["worker"] == "busy")
                stop.wait(0.1)

    def client_loop(index: int):
        client = segmind.SegmindClient(base_url=server.base_url)
        for j in range(jobs_per_client):
            try:
                t = time.perf_counter()
                job = client.submit_async(SLUG, seed=index * 1000 + j, **params)
                submits.append(time.perf_counter() - t)
                while True:
                    t = time.perf_counter()
                    state = job.status()["status"]
                    statuses.append(time.perf_counter() - t)
                    if state in ("COMPLETED", "FAILED"):
                        if state == "FAILED":
                            errors.append(job.status().get("error", "?"))
                        break
                    time.sleep(poll)
            except Exception as exc:  # reported, not fatal
                errors.append(f"{type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()
    return {
        "clients": clients,
        "jobs": clients * jobs_per_client,
        "seconds": elapsed,
        "jobs_per_s": clients * jobs_per_client / elapsed,
        "submit": summary(submits),
        "status": summary(statuses),
        "worker_busy_fraction": sum(busy_samples) / max(1, len(busy_samples)),
        "errors": errors,
    }


def overhead_phase(server: ServerProcess, repeats: int, params: dict, model: str) -> dict:
    import flux_vector
    from flux_vector.pipeline import FluxVectorPipeline

    flux_vector.configure(pipeline=FluxVectorPipeline.from_pretrained(model, log=lambda *_: None))
    client = segmind.SegmindClient(base_url=server.base_url)
    walls = {"http_v2": [], "http_v1": [], "in_process": []}
    compute = {"http_v2": [], "in_process": []}
    flux_vector.run(SLUG, **params)  # warm-up (prompt cache, connections)
    client.submit_async(SLUG, **params).wait(interval=0.01)
    for _ in range(repeats):
        t = time.perf_counter()
        result = client.submit_async(SLUG, **params).wait(interval=0.01)
        walls["http_v2"].append(time.perf_counter() - t)
        compute["http_v2"].append(result["metrics"]["inference_time"])
        t = time.perf_counter()
        client.run_sync(SLUG, **params)
        walls["http_v1"].append(time.perf_counter() - t)
        t = time.perf_counter()
        result = flux_vector.run(SLUG, **params)
        walls["in_process"].append(time.perf_counter() - t)
        compute["in_process"].append(result["metrics"]["inference_time"])
    flux_vector.configure()
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "repeats": repeats,
        "median_wall_s": med,
        "median_inference_s": {k: statistics.median(v) for k, v in compute.items()},
        "ratio_v2_to_in_process": med["http_v2"] / med["in_process"],
        "ratio_v1_to_in_process": med["http_v1"] / med["in_process"],
        "overhead_v2_ms": (med["http_v2"] - med["in_process"]) * 1e3,
        "overhead_v1_ms": (med["http_v1"] - med["in_process"]) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs-per-client", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.05, help="client status poll interval in the load phase")
    parser.add_argument("--repeats", type=int, default=30, help="jobs per path in the overhead phase")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64, help="image side of the overhead phase's jobs")
    parser.add_argument("--steps", type=int, default=2, help="steps of the overhead phase's jobs")
    parser.add_argument("--load-size", type=int, default=128, help="image side of the load phase's jobs")
    parser.add_argument("--load-steps", type=int, default=8, help="steps of the load phase's jobs")
    parser.add_argument("--json")
    args = parser.parse_args()
    prompt = "v3ct0r style, simple vector art, a fox"
    params = {"prompt": prompt, "width": args.size, "height": args.size, "steps": args.steps}
    load_params = {"prompt": prompt, "width": args.load_size, "height": args.load_size, "steps": args.load_steps}

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "jobs.sqlite3", args=("--max-queue", str(args.clients * 4)))
        if args.model != "tiny":
            server.args += ("--model", args.model)  # the last --model wins
        server.start()
        try:
            segmind.SegmindClient(base_url=server.base_url).submit_async(SLUG, **params).wait(interval=0.05)  # warm
            load = load_phase(server, args.clients, args.jobs_per_client, load_params, args.poll)
            overhead = overhead_phase(server, args.repeats, params, args.model)
        finally:
            server.stop()

    s, st = load["submit"], load["status"]
    print(f"server: model {args.model}, loopback")
    print(
        f"load ({args.load_size}x{args.load_size}, {args.load_steps} steps): {load['clients']} clients x "
        f"{args.jobs_per_client} jobs = {load['jobs']} jobs in {load['seconds']:.1f} s "
        f"({load['jobs_per_s']:.2f} jobs/s), worker busy "
        f"{load['worker_busy_fraction']:.0%} of the phase, {len(load['errors'])} errors"
    )
    print(
        f"  submit  (POST /v2)          n={s['n']:4d}  p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  "
        f"max {s['max_ms']:7.1f} ms"
    )
    print(
        f"  status  (GET  .../status)   n={st['n']:4d}  p50 {st['p50_ms']:7.1f} ms  p99 {st['p99_ms']:7.1f} ms  "
        f"max {st['max_ms']:7.1f} ms"
    )
    m = overhead["median_wall_s"]
    print(
        f"overhead per job ({args.size}x{args.size}, {args.steps} steps; median of {overhead['repeats']}, "
        f"idle server; inference {overhead['median_inference_s']['http_v2'] * 1e3:.0f} ms server / "
        f"{overhead['median_inference_s']['in_process'] * 1e3:.0f} ms in-process):"
    )
    print(f"  in-process flux_vector.run  {m['in_process'] * 1e3:8.1f} ms  1.000x")
    print(
        f"  HTTP v2 submit+poll(10 ms)  {m['http_v2'] * 1e3:8.1f} ms  {overhead['ratio_v2_to_in_process']:.3f}x  "
        f"({overhead['overhead_v2_ms']:+.1f} ms)"
    )
    print(
        f"  HTTP v1 run_sync            {m['http_v1'] * 1e3:8.1f} ms  {overhead['ratio_v1_to_in_process']:.3f}x  "
        f"({overhead['overhead_v1_ms']:+.1f} ms)"
    )
    if load["errors"]:
        print("errors:", *load["errors"][:5], sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load": load, "overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
