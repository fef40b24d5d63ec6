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

The folder may be shared, and the manifest hand-edited: a line is trusted only when it is well-formed (the shape
above, a line of at most ``MAX_LINE_BYTES``) and every file it names is a plain name inside the folder (no ``/``, no
``..``, no hidden or partial name); any other line is listed in ``untrusted`` (line number and why) and ignored, so
its request is made again. A named file counts only as a regular file in the folder (a planted link does not). The
manifest and its lock are opened without following links (``safe_files``); the lock file is removed when the batch
ends, however it ends (a killed run leaves it; the next run takes it over).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..safe_files import PARTIAL_SUFFIX, open_in_folder, replace_file

MANIFEST = "manifest.jsonl"
LOCK = MANIFEST + ".lock"
SYNC_EVERY_S = 1.0  # the manifest is fsynced at most this often while a batch runs, and when it ends
MAX_LINE_BYTES = 1 << 20  # a manifest line longer than this is not one of ours (ours are a few KB)
STATUSES = ("done", "failed")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCK_TRIES = 10

__all__ = ["LOCK", "MANIFEST", "PARTIAL_SUFFIX", "BatchFolderBusy", "Manifest", "file_sha256", "write_durably"]


class BatchFolderBusy(OSError):
    """Another ``flux-vector batch`` is writing to the same folder."""


class Manifest:
    """The manifest of one output folder, held under an exclusive lock while this object is open."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.lock_path = self.folder / LOCK
        self.entries: dict[tuple[int, str], dict[str, Any]] = {}
        self.dropped = 0  # a last line cut short by a crash (removed from the file)
        self.untrusted: list[tuple[int, str]] = []  # (line number, why) of the lines ignored
        self._lock_fd: int | None = None
        self._file: BinaryIO | None = None
        self._synced_at = 0.0

    # ------------------------------------------------------------------------------------------ open / close
    def open(self, *, reset: bool = False) -> Manifest:
        """Lock the folder, clear what a killed run left (partial files, a cut last line) and read the lines;
        ``reset`` (``--overwrite``): start an empty manifest."""
        if self._file is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            for partial in self.folder.glob(f".*{PARTIAL_SUFFIX}"):
                if partial.is_file() or partial.is_symlink():
                    partial.unlink(missing_ok=True)
            fd = open_in_folder(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, single_link=True)
            raw = io.FileIO(fd, "r+", closefd=True)
            if reset:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            else:
                self._read(raw)
            self._file = io.BufferedWriter(raw)  # O_APPEND: every write lands at the end
        except BaseException:
            self._unlock()
            raise
        return self

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.flush()
                self._sync()
                self._file.close()
        finally:
            self._file = None
            self._unlock()

    def __enter__(self) -> Manifest:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ lock
    def _lock(self) -> None:
        """An exclusive ``flock`` on the lock file, which must still be the file at its name once locked (a run
        ending meanwhile removes it: then the new one is locked)."""
        for _ in range(_LOCK_TRIES):
            fd = open_in_folder(self.lock_path, os.O_RDONLY | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BatchFolderBusy(
                    f"{self.folder}: another flux-vector batch is writing to this folder; wait for it or choose "
                    "another --out"
                ) from None
            if _same_file(fd, self.lock_path):
                self._lock_fd = fd
                return
            os.close(fd)
        raise BatchFolderBusy(f"{self.lock_path}: keeps being replaced while locking it; choose another --out")

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.lock_path):  # removed while still held: the next run locks a new one
                self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------------------ reading
    def _read(self, raw: io.FileIO) -> None:
        """Every line, read one at a time (bounded), trusted or listed in ``untrusted``; a last line without its
        newline (a crash cut it) is cut off the file."""
        reader = io.BufferedReader(raw, 1 << 16)
        good_end = 0  # the offset after the last complete line
        number = 0
        while True:
            line = reader.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            number += 1
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE_BYTES:  # the end of the file: a last line a crash cut short
                    self.dropped += 1
                    break
                while line and not line.endswith(b"\n"):  # an overlong line: skipped to its end
                    line = reader.readline(1 << 16)
                if not line:
                    self.dropped += 1
                    break
                good_end = reader.tell()
                self.untrusted.append((number, f"longer than {MAX_LINE_BYTES:,} bytes"))
                continue
            good_end = reader.tell()
            if not line.strip():
                continue
            entry, problem = _trusted(line)
            if entry is None:
                self.untrusted.append((number, problem))
                continue
            self.entries[(entry["row"], entry["key"])] = entry
        reader.detach()
        if good_end < os.fstat(raw.fileno()).st_size:
            os.ftruncate(raw.fileno(), good_end)
            os.fsync(raw.fileno())

    # ------------------------------------------------------------------------------------------------ queries
    def is_done(self, row: int, key: str) -> bool:
        """The latest line for (row, key) says done and its files are intact."""
        entry = self.entries.get((row, key))
        return entry is not None and entry.get("status") == "done" and all(map(self.intact, entry.get("files", [])))

    def intact(self, record: dict[str, Any]) -> bool:
        """The file is a regular file in the folder (not a link) with the recorded size and sha256."""
        name = record.get("name")
        if not isinstance(name, str) or plain_name_problem(name) is not None:
            return False
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != record.get("bytes"):
                return False
            return _sha256_of(f) == record.get("sha256")

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
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._synced_at = time.monotonic()


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def plain_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name inside the folder (None when it is one)."""
    if not name:
        return "an empty name"
    if "/" in name or "\\" in name or "\x00" in name:
        return f"{name!r} is a path, not a plain name in the folder"
    if name.startswith("."):
        return f"{name!r} is a hidden, partial or parent name"
    if name in (MANIFEST, LOCK):
        return f"{name!r} is the manifest's own file"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return f"a name of {len(name)} characters"
    return None


def _trusted(line: bytes) -> tuple[dict[str, Any], str] | tuple[None, str]:
    """The line as an entry, or None and why it is not trusted."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError) as exc:  # bad JSON or encoding, a number too long, nesting too deep
        return None, f"not a JSON line ({type(exc).__name__})"
    if not isinstance(entry, dict):
        return None, f"a JSON {type(entry).__name__}, not an object"
    row, key, status = entry.get("row"), entry.get("key"), entry.get("status")
    if type(row) is not int or row < 1:
        return None, "its row is not a line number"
    if not isinstance(key, str) or not 0 < len(key) <= 128:
        return None, "its key is not a short text"
    if status not in STATUSES:
        return None, f"its status is not one of {', '.join(STATUSES)}"
    files = entry.get("files", [])
    if status == "done" and "files" not in entry:
        return None, "a done line naming no files"
    if not isinstance(files, list):
        return None, f"its files are a JSON {type(files).__name__}, not a list"
    for i, record in enumerate(files):
        problem = _file_record_problem(record)
        if problem is not None:
            return None, f"files[{i}]: {problem}"
    return entry, ""


def _file_record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a file record"
    name, size, digest = record.get("name"), record.get("bytes"), record.get("sha256")
    if not isinstance(name, str):
        return "its name is not a text"
    problem = plain_name_problem(name)
    if problem is not None:
        return problem
    if type(size) is not int or size < 0:
        return "its bytes is not a size"
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        return "its sha256 is not 64 hex digits"
    return None


def _sha256_of(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_of(f)


def write_durably(path: Path, data: bytes) -> dict[str, Any]:
    """``data`` at ``path`` or nothing there: written under a partial name, fsynced, renamed (a link at ``path`` is
    replaced, never written through: ``safe_files.replace_file``). Returns the file's manifest record (name, bytes,
    sha256). The folder is not fsynced after the rename (a millisecond per image on the tiny model): a rename a power
    cut loses leaves a manifest line whose file is missing, and that request is made again, since a line counts only
    with its file intact."""
    replace_file(path, data)
    return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
