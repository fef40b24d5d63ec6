"""Where flux_vector keeps what it builds: the tiny checkpoint, the server's store, compiled graphs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FLUX_VECTOR_CACHE"


def default_cache_dir() -> Path:
    """$FLUX_VECTOR_CACHE/flux_vector, else ``$XDG_CACHE_HOME/flux_vector`` (``~/.cache/flux_vector``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "flux_vector"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flux_vector"
