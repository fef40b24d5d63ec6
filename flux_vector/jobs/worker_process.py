"""``flux-vector worker``: one GPU worker process on a Redis job store (run one per GPU, on any machine).

It loads the model once, fuses the LoRA into the weights once (when the base is neither 8-bit quantized nor
offloaded sequentially/by group; a job with another ``lora_strength`` then recomputes the fused weights in place from
the kept W0, no reload), warms the pipeline with one short generation, and then runs jobs from the shared queue
until SIGTERM/SIGINT, which puts the running job back at the head of the queue for another worker. A small HTTP
server answers ``/metrics`` (Prometheus) and ``/healthz`` (JSON) on ``--metrics-port``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..serving import prepare_for_serving
from .metrics import JobMetrics
from .redis_store import DEFAULT_LEASE_S, DEFAULT_REDIS_MAX_ATTEMPTS, RedisJobStore, is_redis_url
from .worker import Worker

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9400


class _Handler(BaseHTTPRequestHandler):
    server: _StatusServer

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                data, content_type = self.server.metrics.render()
                code = 200
            elif path == "/healthz":
                body = self.server.health()
                code = 200 if body["status"] == "ok" else 503
                data, content_type = json.dumps(body).encode(), "application/json"
            else:
                code, content_type = 404, "application/json"
                data = json.dumps({"error": f"not found: {path} (this worker serves /metrics and /healthz)"}).encode()
        except Exception as exc:
            code, content_type = 503, "application/json"
            data = json.dumps({"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # quiet: scrapes every few seconds
        pass


class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, metrics: JobMetrics, health):
        super().__init__(address, _Handler)
        self.metrics, self.health = metrics, health


def run_worker(
    *,
    store: str,
    model: str | None,
    lora: str | None = None,
    quantize: str | None = None,
    offload: str = "auto",
    device: str | None = None,
    name: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = DEFAULT_REDIS_MAX_ATTEMPTS,
    metrics_host: str = DEFAULT_METRICS_HOST,
    metrics_port: int = DEFAULT_METRICS_PORT,
    fuse: bool = True,
    warmup: bool = True,
) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop. Raises on a bad store URL, an unreachable Redis, missing weights."""
    from ..models import default_model
    from ..pipeline import load_pipeline

    if not is_redis_url(store):
        raise ValueError(f"--store={store!r} is not allowed: a worker needs a shared store, redis://HOST:PORT/DB "
                         "(the embedded SQLite store is served by flux-vector serve, with its own worker)")
    started = time.perf_counter()
    label = [name or "worker"]

    def log(message: str) -> None:
        print(f"flux-vector worker {label[0]}: {message}", file=sys.stderr, flush=True)

    model = model or default_model(log=log)
    jobs = RedisJobStore.from_url(store, lease_s=lease_s, max_attempts=max_attempts, name=name, log=log)
    label[0] = jobs.name
    status_server = None
    stop = threading.Event()
    try:
        # bind the status port before the (slow) model load, so a port clash fails at once
        pipe_info: dict[str, Any] = {"lora_strength": None, "fused": False}
        worker_box: list[Worker] = []

        def health() -> dict[str, Any]:
            worker = worker_box[0] if worker_box else None
            state = worker.state if worker is not None else "loading"
            alive = worker is not None and worker.running
            return {"status": "ok" if alive else state if state == "loading" else "unavailable", "role": "worker",
                    "name": jobs.name, "model": model, "worker": state,
                    "current_job": worker.current_job if worker else None, **pipe_info_now(),
                    "jobs": jobs.counts(), "lease_s": jobs.lease_s, "stats": dict(jobs.stats)}  # fmt: skip

        def pipe_info_now() -> dict[str, Any]:
            lora_handle = getattr(pipe_box[0], "lora", None) if pipe_box else None
            if lora_handle is not None:
                pipe_info.update(lora_strength=lora_handle.strength, fused=lora_handle.fused)
            return dict(pipe_info)

        pipe_box: list[Any] = []
        metrics = JobMetrics(jobs, _LazyWorker(worker_box), pipeline_info=pipe_info_now, api=False)
        if metrics_port >= 0:
            try:
                status_server = _StatusServer((metrics_host, metrics_port), metrics, health)
            except OSError as exc:
                raise ValueError(f"--metrics-port {metrics_port} on {metrics_host}: {exc} (another worker on this "
                                 "machine needs its own --metrics-port; 0 picks a free one)") from None  # fmt: skip
            threading.Thread(target=status_server.serve_forever, name="flux-vector-status", daemon=True).start()
            log(f"/metrics and /healthz on http://{metrics_host}:{status_server.server_address[1]}")

        def on_signal(signum, frame):
            log(f"{signal.Signals(signum).name}: stopping after the running job's current step")
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        jobs.announce(lambda: {"state": worker_box[0].state if worker_box else "loading", "model": model,
                               "current_job": worker_box[0].current_job if worker_box else None,
                               **pipe_info_now()})  # fmt: skip
        pipe = load_pipeline(model, lora=lora, quantize=quantize, offload=offload, device=device, log=log)
        pipe_box.append(pipe)
        prepare_for_serving(pipe, fuse=fuse, warmup=warmup, log=log)
        if stop.is_set():
            return 0
        worker = Worker(jobs, pipe, log=log)
        worker.add_listener(metrics.on_finished)
        worker_box.append(worker)
        worker.start()
        jobs.beat()  # announce "idle" now rather than a heartbeat later
        log(f"ready in {time.perf_counter() - started:.1f} s: model {model}, store {jobs.url}, "
            f"lease {jobs.lease_s:g} s, at most {jobs.max_attempts} attempt(s) per job")
        while not stop.wait(1.0):
            if not worker.running:
                log("the worker thread ended unexpectedly")
                return 1
        stopped = worker.stop()
        jobs.leave()
        log(f"shut down {'cleanly' if stopped else 'with the worker still busy'}")
        return 0
    finally:
        if status_server is not None:
            status_server.shutdown()
            status_server.server_close()
        jobs.close()


class _LazyWorker:
    """The worker, once it exists (metrics are registered before the model loads)."""

    def __init__(self, box: list):
        self._box = box

    @property
    def state(self) -> str:
        return self._box[0].state if self._box else "loading"
