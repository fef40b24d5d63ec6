"""Opening files that someone else may have planted: never through a link, never anything but a regular file.

Output folders (``flux-vector batch --out``, a shared folder) can hold what another user put there: a symbolic link
named ``manifest.jsonl`` pointing at a file of yours, a FIFO that blocks every open, a device. Every file the command
line writes or appends to in such a folder is opened here with ``O_NOFOLLOW`` (a link is refused, not followed) and
``O_NONBLOCK`` (a FIFO cannot hang the open), then checked to be a regular file; a final file is written under a
fresh temporary name (``O_EXCL``) and renamed over its name, which replaces a link rather than writing through it.
Input files (``info``, ``--like``, ``vectorize``, a batch file) may be links the user made, but they must be regular
files: ``/dev/zero`` or a FIFO is one line saying so, not a read until memory runs out or a hang.

A refusal is ``UnsafeFile`` (a ``ValueError``: the command line prints it as one line naming the path, exit 2).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

PARTIAL_SUFFIX = ".partial"  # ``.NAME.PID.partial``: a file being written; never a final name


class UnsafeFile(ValueError):
    """A path that is a link, or not a regular file, where only a regular file may be."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_in_folder(path: Path, flags: int, *, mode: int = 0o644, single_link: bool = False) -> int:
    """A file descriptor for ``path`` opened with ``flags`` plus ``O_NOFOLLOW``: refused (``UnsafeFile`` naming the
    path) when it is a symbolic link or not a regular file, or, with ``single_link``, when it has other hard links
    (a file we append to or truncate must not be someone else's file under a second name)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(
                f"{path}: is a symbolic link; flux-vector does not write through links in an output folder: remove "
                "it or choose another folder"
            ) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            kind = "a FIFO" if exc.errno == errno.ENXIO else "a folder"
            raise UnsafeFile(f"{path}: is {kind}, not a regular file; remove it or choose another folder") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(
                f"{path}: is {_kind(info.st_mode)}, not a regular file; remove it or choose another folder"
            )
        if single_link and info.st_nlink > 1:
            raise UnsafeFile(
                f"{path}: has {info.st_nlink - 1} other hard link(s) (another name for the same file); "
                "flux-vector does not write to it: remove it or choose another folder"
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_for_reading(path: Path, *, what: str = "input") -> BinaryIO:
    """``path`` opened for reading (a link the user made is followed), refused unless it is a regular file: a
    device reads forever, a FIFO blocks. The open itself cannot block (``O_NONBLOCK``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise UnsafeFile(f"{what} {path}: is a folder; give a file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{what} {path}: is {_kind(info.st_mode)}, not a regular file; give an image file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def replace_file(path: Path, data: bytes) -> None:
    """``data`` at ``path`` or nothing there: written under a fresh partial name (``O_EXCL|O_NOFOLLOW``), fsynced,
    renamed over ``path``. A link at ``path`` is replaced, never written through. The folder is not fsynced after
    the rename (see ``batching.manifest.write_durably``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    fd = open_in_folder(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
