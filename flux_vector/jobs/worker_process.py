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

from ..offload import DEFAULT_OFFLOAD
from ..serving import DEFAULT_HOST, prepare_for_serving
from .metrics import JobMetrics
from .redis_store import (
    DEFAULT_LEASE_S,
    DEFAULT_REDIS_MAX_ATTEMPTS,
    EVICTION_OVERRIDE,
    Fleet,
    RedisJobStore,
    is_redis_url,
)
from .worker import Worker

DEFAULT_METRICS_HOST = DEFAULT_HOST
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


def check_worker_store(store: str) -> None:
    """A worker runs jobs from a shared store only; ValueError saying so for anything else."""
    if not is_redis_url(store):
        raise ValueError(
            f"--store {store}: a worker needs a shared store, redis://HOST:PORT/DB (the embedded SQLite store is "
            "served by flux-vector serve, with its own worker)"
        )


def run_worker(
    *,
    store: str,
    model: str | None,
    lora: str | None = None,
    quantize: str | None = None,
    offload: str = DEFAULT_OFFLOAD,
    device: str | None = None,
    name: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = DEFAULT_REDIS_MAX_ATTEMPTS,
    metrics_host: str = DEFAULT_METRICS_HOST,
    metrics_port: int = DEFAULT_METRICS_PORT,
    fuse: bool = True,
    warmup: bool = True,
    warmup_sizes: tuple[tuple[int, int], ...] = (),
    allow_eviction: bool = False,
    **model_files: Any,
) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop. Raises on a bad store URL, an unreachable Redis, missing weights,
    a Redis user lacking a command the worker needs, an evicting Redis (unless ``allow_eviction``). ``model_files``:
    a single-file model's ``from_pretrained`` keywords (``base``, ``clip_l_file``, ...)."""
    check_worker_store(store)
    process = WorkerProcess(name)
    process.jobs = RedisJobStore.from_url(store, lease_s=lease_s, max_attempts=max_attempts, name=name, log=process.log)
    process.name = process.jobs.name
    try:
        process.jobs.verify("worker", allow_eviction=allow_eviction)
        if allow_eviction:
            process.log(f"Redis eviction allowed ({EVICTION_OVERRIDE}): jobs may vanish when Redis fills up")
        process.start_status_server(metrics_host, metrics_port)
        process.handle_signals()
        return process.run(
            model,
            fuse=fuse,
            warmup=warmup,
            warmup_sizes=warmup_sizes,
            lora=lora,
            quantize=quantize,
            offload=offload,
            device=device,
            **model_files,
        )
    finally:
        process.close()


class WorkerProcess:
    """One ``flux-vector worker``: the store, the status server, the pipeline and the worker thread, each created in
    turn (``jobs``/``pipe``/``worker`` are None until then: /healthz and /metrics answer from the start)."""

    def __init__(self, name: str | None):
        self.name = name or "worker"
        self.model: str | None = None
        self.jobs: RedisJobStore | None = None
        self.pipe: Any = None
        self.worker: Worker | None = None
        self.metrics: JobMetrics | None = None
        self.status_server: _StatusServer | None = None
        self.stop = threading.Event()
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"flux-vector worker {self.name}: {message}", file=sys.stderr, flush=True)

    # what /healthz, /metrics and the store's worker entry report
    @property
    def state(self) -> str:
        return self.worker.state if self.worker is not None else "loading"

    def pipeline_info(self) -> dict[str, Any]:
        lora = getattr(self.pipe, "lora", None)
        return {
            "lora_strength": None if lora is None else lora.strength,
            "fused": bool(lora is not None and lora.fused),
        }

    def entry(self) -> dict[str, Any]:
        current = self.worker.current_job if self.worker is not None else None
        fleet = self.jobs.fleet if self.jobs is not None else Fleet()
        return {
            "state": self.state,
            "model": self.model,
            "serves": {"model": fleet.model, "lora": fleet.lora, "version": fleet.version},
            "current_job": current,
            **self.pipeline_info(),
        }

    def health(self) -> dict[str, Any]:
        alive = self.worker is not None and self.worker.running
        status = "ok" if alive else "loading" if self.state == "loading" else "unavailable"
        jobs = self.jobs
        assert jobs is not None  # the status server starts after the store is open
        problem = None
        try:
            jobs.check()  # Redis evicting keys since the start, or full
        except Exception as exc:
            status, problem = "unavailable", jobs.redact(str(exc))
        return {
            "status": status,
            **({"error": problem} if problem else {}),
            "role": "worker",
            "name": jobs.name,
            "worker": self.state,
            **self.entry(),
            "jobs": jobs.counts(),
            "lease_s": jobs.lease_s,
            "stats": dict(jobs.stats),
        }

    # the steps of a run
    def start_status_server(self, host: str, port: int) -> None:
        """/metrics and /healthz, bound before the (slow) model load so that a port clash fails at once."""
        assert self.jobs is not None  # run_worker opened it
        self.metrics = JobMetrics(self.jobs, self, pipeline_info=self.pipeline_info, api=False)
        if port < 0:
            return
        try:
            self.status_server = _StatusServer((host, port), self.metrics, self.health)
        except OSError as exc:
            raise ValueError(
                f"--metrics-port {port} on {host}: {exc} (another worker on this machine needs its own "
                "--metrics-port; 0 picks a free one)"
            ) from None
        threading.Thread(target=self.status_server.serve_forever, name="flux-vector-status", daemon=True).start()
        self.log(f"/metrics and /healthz on http://{host}:{self.status_server.server_address[1]}")

    def handle_signals(self) -> None:
        def on_signal(signum, frame):
            self.log(f"{signal.Signals(signum).name}: stopping after the running job's current step")
            self.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(
        self,
        model: str | None,
        *,
        fuse: bool,
        warmup: bool,
        warmup_sizes: tuple[tuple[int, int], ...] = (),
        **load_options: Any,
    ) -> int:
        from ..image_metadata import identity_of, public_name
        from ..models import default_model
        from ..pipeline import load_pipeline

        self.model = model or default_model(log=self.log)
        jobs = self.jobs
        assert jobs is not None  # run_worker opened it
        jobs.announce(self.entry)
        self.pipe = load_pipeline(self.model, log=self.log, **load_options)
        identity = identity_of(self.pipe)  # what it serves: it takes only jobs asking for that (or for nothing)
        jobs.fleet = Fleet(
            model=identity.get("model") or public_name(self.model) or "",
            lora=identity.get("lora") or "",
            version=identity.get("flux_vector") or Fleet().version,
        )
        prepare_for_serving(self.pipe, fuse=fuse, warmup=warmup, warmup_sizes=warmup_sizes, log=self.log)
        if self.stop.is_set():
            return 0
        self.worker = Worker(jobs, self.pipe, log=self.log)
        if self.metrics is not None:
            self.worker.add_listener(self.metrics.on_finished)
        self.worker.start()
        jobs.beat()  # announce "idle" now rather than a heartbeat later
        self.log(
            f"ready in {time.perf_counter() - self.started:.1f} s: serving {jobs.fleet.describe()}, store "
            f"{jobs.url}, "
            f"lease {jobs.lease_s:g} s, at most {jobs.max_attempts} attempt(s) per job"
        )
        while not self.stop.wait(1.0):
            if not self.worker.running:
                self.log("the worker thread ended unexpectedly")
                return 1
        stopped = self.worker.stop()
        jobs.leave()
        self.log(f"shut down {'cleanly' if stopped else 'with the worker still busy'}")
        return 0

    def close(self) -> None:
        if self.status_server is not None:
            self.status_server.shutdown()
            self.status_server.server_close()
        if self.jobs is not None:
            self.jobs.close()
