"""``flux-vector`` command line: ``generate`` one image with the hosted API's parameters, ``serve`` the API, run a
GPU ``worker`` for API processes sharing a Redis job store, or ``vectorize`` an existing image to SVG.

The request flags of ``generate`` are built from the one contract (``request.GenerationRequest``): their names, help
and defaults come from its fields. The options every model-loading command shares come from one parent parser, and
every default is the constant its module defines.
"""

from __future__ import annotations

import sys

from ..jobs.store import StoreLocked, StoreUnavailable
from ..request import RequestError
from .commands import COMMANDS
from .parser import build_parser
from .terminal import printable

__all__ = ["COMMANDS", "build_parser", "main"]

# errors a user causes (a value, a path, missing weights, a store in use): exit 2 with one line saying what to do
USER_ERRORS = (RequestError, ValueError, OSError, StoreLocked, StoreUnavailable)


def error_line(exc: BaseException) -> str:
    """One line for the terminal: what went wrong and what to do."""
    torch = sys.modules.get("torch")  # an out-of-memory error can only come from an imported torch
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        text = (
            "out of GPU memory: try --quantize fp8 or nf4, --offload group (or sequential), or a smaller size; "
            "`flux-vector doctor` shows the free memory"
        )
    elif isinstance(exc, USER_ERRORS):
        text = getattr(exc, "cli_message", None) or str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc} (unexpected: run again with --debug for the traceback)"
    return printable(" ".join(text.split()))


def main(argv: list[str] | None = None) -> int:
    from ..quiet import offline_hub, quiet_third_party, show_third_party_output

    args = build_parser().parse_args(argv)
    offline_hub()  # flux_vector reads local files only: a Hub request fails at once rather than waiting on the network
    if args.verbose:
        show_third_party_output()
    else:
        quiet_third_party()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, USER_ERRORS) else 1
