"""Test hook: simulated model errors and slow jobs, for tests that must make a job fail or stay busy on purpose.

Active only when the environment variable ``FLUX_VECTOR_TEST_FAULTS=1`` is set in the process that runs the worker
(the server or the in-process facade); otherwise prompts are never inspected. With it set, markers in a prompt act
before the model runs:

- ``[[fault:nan]]``      the job fails as a model producing NaN latents would (FloatingPointError);
- ``[[fault:oom]]``      the job fails as an out-of-memory model would (MemoryError);
- ``[[fault:sleep=S]]``  the job holds the worker S extra seconds (interruptible), then runs normally.

Nothing in the parameter contract can make the tiny test model fail deterministically (every allowed value is a
valid generation), hence this hook. Never set it in production.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

ENV = "FLUX_VECTOR_TEST_FAULTS"
_MARKER = re.compile(r"\[\[fault:(nan|oom|sleep=(\d+(?:\.\d+)?))\]\]")


class SimulatedOutOfMemory(MemoryError):
    pass


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def inject(prompt: str, checkpoint: Callable[[], None]) -> None:
    """Act on the prompt's markers. ``checkpoint()`` is called while sleeping (it raises to interrupt)."""
    for match in _MARKER.finditer(prompt):
        kind = match.group(1)
        if kind == "nan":
            raise FloatingPointError(f"the sampler produced NaN/inf latents (simulated by {ENV})")
        if kind == "oom":
            raise SimulatedOutOfMemory(f"CUDA out of memory (simulated by {ENV})")
        deadline = time.monotonic() + float(match.group(2))
        while (left := deadline - time.monotonic()) > 0:
            checkpoint()
            time.sleep(min(left, 0.05))
