"""What a batch run did, as a line and as the exit status (importable without torch: the parser's help names the
codes)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .rows import BatchItem, InvalidRow

# exit codes of `flux-vector batch` (2: a user's error before any work, as every command; 1: unexpected)
EXIT_OK, EXIT_INVALID_SKIPPED, EXIT_FAILED, EXIT_INTERRUPTED = 0, 3, 4, 130


class InvalidRows(ValueError):
    """``--strict`` and some rows are invalid: nothing was generated."""


@dataclass
class BatchSummary:
    """What a run did. ``total``: valid requests (rows after --repeat/--seeds)."""

    total: int = 0
    done_before: int = 0
    done_now: int = 0
    images_now: int = 0
    failed: list[tuple[BatchItem, str]] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    interrupted: bool = False
    manifest: Path | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """130 stopped by a signal before the end; 4 a request failed (recorded in the manifest); 3 invalid rows were
        skipped; 0 every request of every row is done."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.failed:
            return EXIT_FAILED
        return EXIT_INVALID_SKIPPED if self.invalid else EXIT_OK

    def text(self) -> str:
        done = self.done_before + self.done_now
        parts = [f"{done}/{self.total} requests done ({self.done_now} this run, {self.done_before} already)"]
        if self.failed:
            lines = line_list(sorted({item.line for item, _ in self.failed}))
            parts.append(f"{len(self.failed)} failed (lines {lines}; errors in the manifest; a re-run retries them)")
        if self.invalid:
            parts.append(f"{len(self.invalid)} invalid rows skipped (lines {line_list(r.line for r in self.invalid)})")
        rate = f", {self.images_now / self.seconds * 60:.1f} images/min" if self.images_now and self.seconds else ""
        return f"batch: {'; '.join(parts)}; manifest {self.manifest}{rate}"


LISTED_LINES = 20  # line numbers named in one summary line; the count says how many more


def line_list(numbers: Iterable[int]) -> str:
    """``2, 3, 7`` or, past ``LISTED_LINES``, ``2, 3, ... and 1,234 more``."""
    numbers = list(numbers)
    shown = ", ".join(str(n) for n in numbers[:LISTED_LINES])
    more = len(numbers) - LISTED_LINES
    return f"{shown} and {more:,} more" if more > 0 else shown
