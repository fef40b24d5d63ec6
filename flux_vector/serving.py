"""What every long-running process that serves jobs shares: the pipeline prepared once (LoRA fused, warmed up),
the startup banner and the HTTP runner. Used by ``flux-vector serve`` (embedded worker or API-only on Redis) and by
``flux-vector worker``, so the two deployment modes prepare and announce themselves the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jobs.worker import GeneratingPipeline

DEFAULT_HOST = "127.0.0.1"  # loopback only
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 100  # jobs waiting before a submit is refused (429)
LOOPBACK_HOSTS = (DEFAULT_HOST, "localhost", "::1")
API_KEY_ENV = "FLUX_VECTOR_API_KEY"
GRACEFUL_SHUTDOWN_S = 10


def prepare_for_serving(
    pipe: GeneratingPipeline,
    *,
    fuse: bool = True,
    warmup: bool = True,
    warmup_sizes: Sequence[tuple[int, int]] = (),
    log: Callable[[str], None] = print,
) -> None:
    """Fuse the LoRA into the weights once where the pipeline can (``pipe.fuse_lora``: a strength switch then
    recomputes them from the kept originals), and warm up at the sizes served: the default size and
    ``warmup_sizes`` (``--warmup-size``), so the first job at any of them pays no first-call or compile costs."""
    if fuse:
        pipe.fuse_lora(log)
    if warmup:
        pipe.warmup(served_sizes(pipe, warmup_sizes), log=log)


def served_sizes(pipe: GeneratingPipeline, extra: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The sizes a serving process warms up: the size a request naming none is drawn at (the pipeline's
    ``default_size()``, when it has one), then ``extra``; each once."""
    default = getattr(pipe, "default_size", None)
    return list(dict.fromkeys([*([default()] if callable(default) else []), *extra]))


def parse_size(text: str) -> tuple[int, int]:
    """``--warmup-size``'s value: ``WIDTHxHEIGHT`` (``1024x1024``) or an aspect ratio of the size table (``16:9``),
    checked as a request's width and height are; ``ValueError`` saying what is allowed."""
    from .request import ASPECT_RATIOS, RequestError, parse_request

    if text in ASPECT_RATIOS:
        return ASPECT_RATIOS[text]
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(
            f"--warmup-size={text!r} is not allowed; it must be WIDTHxHEIGHT (e.g. 1024x1024) or one of the aspect "
            f"ratios {', '.join(ASPECT_RATIOS)}"
        )
    try:
        request = parse_request({"prompt": "size", "width": int(width), "height": int(height)})
    except RequestError as exc:
        raise ValueError(f"--warmup-size={text!r} is not allowed: {exc}") from None
    return request.size


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
