"""Run ``flux-vector serve`` as a real subprocess for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m flux_vector.cli serve --model tiny ...`` on a loopback port, its output in ``log_path``."""

    def __init__(self, store: Path, *, port: int | None = None, args: tuple[str, ...] = (), env: dict | None = None,
                 log_path: Path | None = None):  # fmt: skip
        self.store, self.port, self.args = Path(store), port or free_port(), tuple(args)
        self.env = {**os.environ, **(env or {})}
        self.env.pop("FLUX_VECTOR_MODEL", None)
        self.log_path = log_path or self.store.with_name(self.store.stem + f"-server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "flux_vector.cli", "serve", "--model", "tiny", "--port", str(self.port),
               "--store", str(self.store), "--log-level", "warning", *self.args]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> bool:
        """SIGTERM (uvicorn's clean shutdown), SIGKILL if that takes over 30 s. True when it shut down cleanly
        (uvicorn re-raises the signal after its graceful shutdown, so the exit status is -SIGTERM)."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode in (0, -signal.SIGTERM) and "shut down cleanly" in self.log()
