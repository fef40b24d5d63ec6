"""A small fault-injecting TCP proxy on loopback, for Redis fault tests: ``127.0.0.1:<port>`` forwards to a target
port until told to fail.

- ``outage(seconds)``: every open connection is cut and new ones are accepted and closed at once (a Redis that is
  down, or a network cut) for that long.
- ``trigger(pattern, seconds)``: the first chunk a client sends that contains ``pattern`` (e.g. the SHA1 of one Lua
  script, which ``EVALSHA`` sends) is not forwarded: it starts an outage of ``seconds`` instead. So a test can cut
  Redis exactly at a worker's ``complete()`` or at a progress write.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time


def script_sha(source: str) -> bytes:
    """What ``EVALSHA`` sends for a Lua script (redis-py's ``register_script``)."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest().encode("ascii")


class FaultProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down_until = 0.0
        self._triggers: list[tuple[bytes, float]] = []
        self.outages: list[tuple[float, float]] = []  # (time.monotonic() it began, seconds)
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def outage(self, seconds: float) -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds
            self.outages.append((time.monotonic(), seconds))
            doomed = list(self._sockets)
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def trigger(self, pattern: bytes, seconds: float) -> None:
        with self._lock:
            self._triggers.append((pattern, seconds))

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.outage(0)

    # ------------------------------------------------------------------------------------------- plumbing
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _fired(self, data: bytes) -> float | None:
        with self._lock:
            for i, (pattern, seconds) in enumerate(self._triggers):
                if pattern in data:
                    del self._triggers[i]
                    return seconds
        return None

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.down:
                    break
                if from_client:
                    seconds = self._fired(data)
                    if seconds is not None:
                        self.outage(seconds)
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
                with self._lock:
                    self._sockets.discard(sock)
