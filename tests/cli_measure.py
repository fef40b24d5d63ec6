"""Run ``python -m flux_vector.cli`` as a real process and measure it: exit status, output, wall seconds and peak
RSS. The CLI runs under a small wrapper process whose only child it is, so the peak RSS (``RUSAGE_CHILDREN``) is
the CLI's own, not that of some other process the test run started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "started = time.monotonic()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, errors='replace')\n"
    "seconds = time.monotonic() - started\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, 'seconds': seconds, 'kb': peak}))\n"
)
GUARD_S = 300  # a guard against a hung child, never a measured figure


@dataclass(frozen=True)
class CliRun:
    rc: int
    out: str
    err: str
    seconds: float
    max_rss_mb: float

    @property
    def errors(self) -> list[str]:
        """The ``error:`` lines (third-party import warnings aside)."""
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def run_cli(*args: str, timeout: float = GUARD_S) -> CliRun:
    env = {**os.environ}
    env.pop("FLUX_VECTOR_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "flux_vector.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=True,
    )
    data = json.loads(proc.stdout)
    return CliRun(data["rc"], data["out"], data["err"], data["seconds"], data["kb"] / 1024)
