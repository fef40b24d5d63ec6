"""``DIR/manifest.jsonl``: one JSON line per finished (or failed) batch item, appended after the item's files are in
place (each written under a partial name, fsynced and renamed), so that the manifest never names a file that is not
complete. Lines are flushed at once (a killed process loses none) and fsynced at most every second and at the end
(a power cut loses at most the last second's lines, whose requests are then made again).

A line::

    {"row": 7, "key": "3f2a...", "status": "done", "files": [{"name": "0007-a-fox-s42.png", "bytes": 1234,
     "sha256": "..."}], "request": {...every field, defaults filled in}, "timings": {...}, "identity": {...},
     "finished_at": "2026-11-30T10:00:00Z"}
    {"row": 9, "key": "...", "status": "failed", "error": "MemoryError: ...", "request": {...}, ...}

An item is done when its latest line under its (row, key) (``names.item_key``) says "done" and every file it names
has the recorded size and sha256. A last line cut short by a crash is dropped when the manifest is opened; a file no
line names is made again (its deterministic name is simply overwritten); a failed item is tried again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
PARTIAL_SUFFIX = ".partial"  # ``.NAME.PID.partial``: a file being written; never a final name
SYNC_EVERY_S = 1.0  # the manifest is fsynced at most this often while a batch runs, and when it ends


class BatchFolderBusy(OSError):
    """Another ``flux-vector batch`` is writing to the same folder."""


class Manifest:
    """The manifest of one output folder, held under an exclusive lock while this object is open."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.entries: dict[tuple[int, str], dict[str, Any]] = {}
        self.dropped = 0  # lines that were not JSON (a line cut short by a crash)
        self._lock_file = None
        self._file = None
        self._synced_at = 0.0

    # ------------------------------------------------------------------------------------------ open / close
    def open(self, *, reset: bool = False) -> Manifest:
        """Lock the folder, clear what a killed run left (partial files, a cut last line) and read the lines;
        ``reset`` (``--overwrite``): start an empty manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / (MANIFEST + ".lock"), "a")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise BatchFolderBusy(
                f"{self.folder}: another flux-vector batch is writing to this folder; wait for it or choose another "
                "--out"
            ) from None
        for partial in self.folder.glob(f".*{PARTIAL_SUFFIX}"):
            partial.unlink(missing_ok=True)
        if reset:
            write_durably(self.path, b"")
        self._read()
        self._file = open(self.path, "ab")  # noqa: SIM115 - appended to until close
        return self

    def close(self) -> None:
        if self._file is not None:
            self._sync()
        for f in (self._file, self._lock_file):
            if f is not None:
                f.close()
        self._file = self._lock_file = None

    def __enter__(self) -> Manifest:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a last line a crash cut short: dropped, so that the next line starts clean
            self.dropped += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                key = (int(entry["row"]), str(entry["key"]))
            except (ValueError, KeyError, TypeError):
                self.dropped += 1
                continue
            self.entries[key] = entry

    # ------------------------------------------------------------------------------------------------ queries
    def is_done(self, row: int, key: str) -> bool:
        """The latest line for (row, key) says done and its files are intact."""
        entry = self.entries.get((row, key))
        return entry is not None and entry.get("status") == "done" and all(map(self.intact, entry.get("files", [])))

    def intact(self, record: dict[str, Any]) -> bool:
        path = self.folder / str(record.get("name", ""))
        try:
            if not path.is_file() or path.stat().st_size != record.get("bytes"):
                return False
            return file_sha256(path) == record.get("sha256")
        except OSError:
            return False

    def lines(self) -> Iterator[dict[str, Any]]:
        yield from self.entries.values()

    # ------------------------------------------------------------------------------------------------ writing
    def append(self, entry: dict[str, Any]) -> None:
        """One line, flushed to the operating system before returning (a killed process loses nothing); fsynced at
        most every ``SYNC_EVERY_S`` and on close (a power cut loses at most that much: those requests are made
        again)."""
        assert self._file is not None, "open() the manifest first"
        line = json.dumps(entry, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        if time.monotonic() - self._synced_at >= SYNC_EVERY_S:
            self._sync()
        self.entries[(int(entry["row"]), str(entry["key"]))] = entry

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced_at = time.monotonic()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_durably(path: Path, data: bytes) -> dict[str, Any]:
    """``data`` at ``path`` or nothing there: written under a partial name, fsynced, renamed. Returns the file's
    manifest record (name, bytes, sha256). The folder is not fsynced after the rename (a millisecond per image on
    the tiny model): a rename a power cut loses leaves a manifest line whose file is missing, and that request is
    made again, since a line counts only with its file intact."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
