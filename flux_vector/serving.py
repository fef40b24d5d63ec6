"""What every long-running process that serves jobs shares: the pipeline prepared once (LoRA fused, warmed up),
the startup banner and the HTTP runner. Used by ``flux-vector serve`` (embedded worker or API-only on Redis) and by
``flux-vector worker``, so the two deployment modes prepare and announce themselves the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "FLUX_VECTOR_API_KEY"
GRACEFUL_SHUTDOWN_S = 10


def prepare_for_serving(pipe, *, fuse: bool = True, warmup: bool = True, log=print) -> None:
    """Fuse the LoRA into the weights once where that is possible (a strength switch then recomputes them from the
    kept originals), and run one short generation so the first job pays no first-call costs."""
    if fuse:
        fuse_lora(pipe, log)
    if warmup:
        warm_up(pipe, log)


def fuse_lora(pipe, log) -> bool:
    """Fuse the pipeline's LoRA into its weights once when that is possible; True when fused."""
    lora = getattr(pipe, "lora", None)
    if lora is None:
        log("lora: none loaded (lora_strength 0 only)")
        return False
    if lora.fused:
        return True
    from .lora import LoraError
    from .quantize import is_quantized

    offload = getattr(getattr(pipe, "offload", None), "mode", "none")
    reason = None
    if is_quantized(pipe.transformer):
        reason = "the transformer is 8-bit quantized"
    elif offload in ("sequential", "group"):
        reason = f"offload {offload} keeps the weights off the device"
    if reason is None:
        started = time.perf_counter()
        try:
            lora.fuse()
        except LoraError as exc:
            reason = str(exc).splitlines()[0]
        else:
            log(
                f"lora: fused into the weights in {time.perf_counter() - started:.3f} s at strength {lora.strength:g} "
                "(another lora_strength recomputes them from the kept originals: no reload)"
            )
            return True
    log(f"lora: kept as a runtime adapter ({reason}); switching strength is one assignment")
    return False


def warm_up(pipe, log, size: int = 256) -> float:
    """One short generation so the first job pays no first-call costs; the seconds it took."""
    from .request import parse_request

    strength = getattr(getattr(pipe, "lora", None), "strength", None)
    params = {
        "prompt": "warm-up",
        "width": size,
        "height": size,
        "steps": 1,
        "seed": 0,
        "lora_strength": 0 if strength is None else strength,
    }
    started = time.perf_counter()
    pipe.generate(parse_request(params), progress=False)
    elapsed = time.perf_counter() - started
    log(f"warm-up: {size}x{size}, 1 step in {elapsed:.2f} s")
    return elapsed


def describe_api_key(api_key: str | None) -> str:
    return "required (x-api-key)" if api_key else f"not required (set {API_KEY_ENV} to require one)"


def describe_urls(host: str, port: int, slug: str) -> str:
    """The addresses a user opens: the API, the playground and the API docs."""
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return f"API {base}/v1/{slug} · playground {base}/ · API docs {base}/docs"


def warn_if_demo_model(model: str, log) -> None:
    if model == "demo":
        from .models import DEMO_NOTICE

        log(f"model demo is {DEMO_NOTICE}; `flux-vector doctor` says how to get FLUX.1-dev")
    if model == "tiny":
        log(
            "model tiny is the random-weight demo: every image is noise by design (the playground says so); "
            "`flux-vector doctor` says how to get FLUX.1-dev"
        )


def warn_if_open(host: str, api_key: str | bool | None, log) -> None:
    if not api_key and host not in LOOPBACK_HOSTS:
        log(
            f"warning: listening on {host} without an API key: anyone who can reach the port can queue jobs "
            f"(set {API_KEY_ENV})"
        )


def run_http(app, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` with uvicorn until SIGTERM/SIGINT (running requests get a few seconds to finish)."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    _uvicorn_server(config, getattr(app.state, "on_exit_signal", None)).run()


def _uvicorn_server(config, on_exit_signal: Callable[[], None] | None):
    """uvicorn's server, also telling the app the moment SIGTERM/SIGINT arrives (``app.state.on_exit_signal``): the
    requests waiting for a job are answered then, not cancelled when the graceful-shutdown timeout runs out."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if on_exit_signal is not None and not self.should_exit:
                on_exit_signal()
            super().handle_exit(sig, frame)

    return Server(config)


def device_memory_bytes(pipe) -> int:
    """The memory of the device ``pipe`` runs on: the GPU's, else this machine's RAM (the work budget's base)."""
    import torch

    device = torch.device("cpu")
    with contextlib.suppress(Exception):
        device = torch.device(pipe._execution_device())
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def work_budget(base, **overrides: int | None):
    """``base`` (a ``WorkBudget``) with the settings given on the command line."""
    import dataclasses

    for name, value in overrides.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} is not allowed; it must be a positive integer")
    return dataclasses.replace(base, **{name: value for name, value in overrides.items() if value is not None})
