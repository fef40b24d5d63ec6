"""Files the command line reads and writes, checked before any model work: a bad ``--out``, input image or store
path is one line saying what is wrong and what to do, in well under a second, not an error after a generation.

Nothing is created here: an output's folder may not exist yet (it is created when the file is written), so its
nearest existing ancestor must be a writable folder, which is probed by creating and removing a temporary file
(permission bits alone miss read-only mounts, ``/proc`` and root's exemption from them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class PathProblem(ValueError):
    """A path given on the command line cannot be used; the message says why and what to do."""


def check_output_file(path: Path, suffixes: Iterable[str], *, option: str = "--out") -> Path:
    """``path`` can be written as a new or replaced file of one of ``suffixes``; returns it unchanged."""
    suffixes = tuple(suffixes)
    if path.suffix.lower() not in suffixes:
        raise PathProblem(
            f"{option} {path}: unknown file type {path.suffix or '(none)'!r}; give a name ending in "
            + ", ".join(suffixes)
        )
    check_writable_file(path, option=option, example="out" + suffixes[0])
    return path


def check_writable_file(path: Path, *, option: str, example: str = "out.png") -> Path:
    """``path`` is not a folder, and it, or the folder it will be created in, can be written."""
    if path.is_dir():
        raise PathProblem(f"{option} {path}: is a folder; give a file name inside it, e.g. {path / example}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PathProblem(f"{option} {path}: the file exists and is not writable; choose another name")
        folder = path.parent
    else:
        folder = nearest_existing(path.parent)
        if not folder.is_dir():
            raise PathProblem(
                f"{option} {path}: {folder} is a file, not a folder; choose a path whose folders are folders"
            )
    if not can_create_in(folder):
        raise PathProblem(f"{option} {path}: cannot create files in {folder}; choose a folder you can write to")
    return path


def check_output_folder(path: Path, *, option: str = "--out") -> Path:
    """``path`` is a folder that exists and can be written, or can be created."""
    if path.exists() and not path.is_dir():
        raise PathProblem(f"{option} {path}: is a file; give a folder (it is created if missing)")
    folder = nearest_existing(path)
    if not folder.is_dir():
        raise PathProblem(f"{option} {path}: {folder} is a file, not a folder; choose a path whose folders are folders")
    if not can_create_in(folder):
        raise PathProblem(f"{option} {path}: cannot create files in {folder}; choose a folder you can write to")
    return path


def check_input_file(path: Path, *, what: str = "input") -> Path:
    """``path`` is an existing, readable file."""
    if not path.exists():
        raise PathProblem(f"{what} {path}: no such file; check the path")
    if path.is_dir():
        raise PathProblem(f"{what} {path}: is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise PathProblem(f"{what} {path}: not readable; check its permissions")
    return path


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the current folder for a relative path with none)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def can_create_in(folder: Path) -> bool:
    """A file can be created (and removed) in ``folder``."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".flux-vector-probe-"):
            return True
    except OSError:
        return False
