"""Ctrl-C in a batch: the first asks it to stop after the image in progress (its files and manifest line written),
the second abandons that image at once (``KeyboardInterrupt``); SIGTERM (a shutdown, ``kill``) asks like the first."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM; the batch checks it between images."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""


@contextlib.contextmanager
def stop_on_signals(message: str) -> Iterator[StopRequest]:
    """Handlers for SIGINT and SIGTERM while the batch runs (the main thread only: elsewhere signals are not ours to
    take, and the request is never set); ``message`` is printed on the first."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop.requested:
            stop.requested, stop.signal_name = True, signal.Signals(signum).name
            print(message, file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
