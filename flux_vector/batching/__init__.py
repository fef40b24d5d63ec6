"""``flux-vector batch``: many requests from a file through one loaded model, resumable from its manifest.

``rows.py`` reads, merges, expands and validates the rows; ``names.py`` keys each request and names its files;
``manifest.py`` is the durable record of what is done; ``interrupt.py`` the Ctrl-C policy; ``summary.py`` the
outcome and exit status; ``runner.py`` runs it (and imports the pipeline, so it is loaded only when asked for).
"""

from .manifest import MANIFEST, BatchFolderBusy, Manifest
from .rows import BatchItem, InvalidRow, check_batch_file, parse_seeds
from .summary import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID_SKIPPED, EXIT_OK, BatchSummary, InvalidRows


def __getattr__(name: str):
    if name in ("run_batch", "plan_rows", "batch"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'flux_vector.batching' has no attribute {name!r}")


__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_SKIPPED",
    "EXIT_OK",
    "MANIFEST",
    "BatchFolderBusy",
    "BatchItem",
    "BatchSummary",
    "InvalidRow",
    "InvalidRows",
    "Manifest",
    "batch",
    "check_batch_file",
    "parse_seeds",
    "plan_rows",
    "run_batch",
]
