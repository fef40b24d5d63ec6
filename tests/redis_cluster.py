"""A real ``redis-server`` on a loopback port, ``flux-vector serve --store redis://...`` API processes and
``flux-vector worker`` processes, as subprocesses, for tests and benchmarks.

``redis-server`` is the Debian package (``apt-get install redis-server``; .ci/run installs it). Without it the Redis
tests are skipped on a developer's machine and fail in CI (``CI`` set), so CI never passes by skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import CliProcess, free_port, serving_args

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # several processes share 2 cores
REDIS_SERVER = os.environ.get("FLUX_VECTOR_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis() -> None:
    """Skip (fail under CI) when redis-server or the redis package is missing."""
    problems = []
    if not Path(REDIS_SERVER).exists():
        problems.append("redis-server not found (apt-get install -y redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        problems.append("the redis package is missing (pip install redis)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, no persistence (no RDB, no AOF) unless ``appendonly`` (AOF,
    fsynced at every write), killed by ``stop``; ``extra``: more ``redis-server`` arguments."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        password: str | None = None,
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
    ):
        self.folder, self.port, self.password = Path(folder), port or free_port(), password
        self.appendonly, self.extra = appendonly, extra
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                *(("--appendfsync", "always") if self.appendonly else ()),
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                *(("--requirepass", self.password) if self.password else ()),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def client(self, db: int = 0):
        import redis

        return redis.Redis(port=self.port, db=db, password=self.password)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ApiProcess(CliProcess):
    """``flux-vector serve --store redis://...`` (API only) on a loopback port."""

    def __init__(self, store_url: str, folder: Path, *, args: tuple[str, ...] = (), env: dict | None = None):
        self.port = free_port()
        super().__init__(
            ["serve", "--store", store_url, "--port", str(self.port), "--log-level", "warning", *args],
            Path(folder) / f"api-{self.port}.log",
            {**ONE_THREAD, **(env or {})},
        )

    def start(self, timeout: float = 60.0) -> ApiProcess:
        return super().start(timeout)


class WorkerProcess(CliProcess):
    """``flux-vector worker --store redis://... --model tiny`` with its /metrics and /healthz on a loopback port."""

    def __init__(
        self,
        store_url: str,
        folder: Path,
        name: str,
        *,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        warmup: bool = False,
    ):
        """``warmup``: warm up at the default size as ``worker`` does by default (off unless a test is about it)."""
        self.name, self.port = name, free_port()
        super().__init__(
            [
                "worker",
                "--store",
                store_url,
                "--model",
                "tiny",
                "--name",
                name,
                "--metrics-port",
                str(self.port),
                *serving_args(args, warmup),
            ],
            Path(folder) / f"worker-{name}.log",
            {**ONE_THREAD, **(env or {})},
        )

    def start(self, timeout: float = 180.0) -> WorkerProcess:
        """Spawn only: workers load in parallel; ``wait_ready`` waits for each."""
        self.spawn()
        return self

    def wait_ready(self, timeout: float = 180.0) -> WorkerProcess:
        self.wait_healthy(self.url, timeout)
        return self

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=5).json()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
