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

# The serving processes' warm-up (a 1-step generation at the default size, 832x1216 on the tiny model) costs
# seconds per start and is what tests/test_serving_warmup.py checks; the other tests' servers start without it
# unless they pass ``warmup=True`` (or warm-up flags of their own).
WARMUP_FLAGS = ("--no-warmup", "--warmup-size")


def serving_args(args: tuple[str, ...] | list[str], warmup: bool) -> list[str]:
    """``args`` plus ``--no-warmup`` unless ``warmup`` or ``args`` already say how to warm up."""
    if warmup or any(arg.split("=")[0] in WARMUP_FLAGS for arg in args):
        return list(args)
    return [*args, "--no-warmup"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliProcess:
    """A ``python -m flux_vector.cli ...`` subprocess, its output in ``log_path``."""

    port: int  # the loopback port it serves /healthz on

    def __init__(self, args: list[str], log_path: Path, env: dict | None, address_space: int | None = None):
        """``address_space``: an ``RLIMIT_AS`` in bytes for the child only (set between fork and exec)."""
        self.args, self.log_path, self.address_space = args, Path(log_path), address_space
        self.env = {**os.environ, **(env or {})}
        self.env.pop("FLUX_VECTOR_MODEL", None)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 180.0):
        self.spawn()
        self.wait_healthy(self.url, timeout)
        return self

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flux_vector.cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.address_space is None else self._limit_address_space,
        )
        log.close()

    def _limit_address_space(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))

    def wait_healthy(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.args[0]} did not become healthy in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> bool:
        """SIGTERM, SIGKILL after 30 s; True when it logged a clean shutdown."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return "shut down cleanly" in self.log()


class ServerProcess(CliProcess):
    """``python -m flux_vector.cli serve --model tiny ...`` on a loopback port, its output in ``log_path``."""

    def __init__(
        self,
        store: Path,
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        log_path: Path | None = None,
        address_space: int | None = None,
        warmup: bool = False,
    ):
        """``warmup``: warm up at the default size as ``serve`` does by default (off unless a test is about it)."""
        self.store, self.port = Path(store), port or free_port()
        cmd = [
            "serve",
            "--model",
            "tiny",
            "--port",
            str(self.port),
            "--store",
            str(self.store),
            "--log-level",
            "warning",
            *serving_args(args, warmup),
        ]
        log_path = log_path or self.store.with_name(self.store.stem + f"-server-{self.port}.log")
        super().__init__(cmd, log_path, env, address_space)

    def stop(self) -> bool:
        """uvicorn re-raises the signal after its graceful shutdown, so a clean exit status is 0 or -SIGTERM."""
        return super().stop() and self.proc.returncode in (0, -signal.SIGTERM)
