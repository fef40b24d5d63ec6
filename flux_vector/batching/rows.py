"""A batch file's rows: read (``.jsonl``, ``.csv``, ``.txt``), merged over the command line's defaults, expanded
(``--repeat``, ``--seeds``) and validated by the one contract, all before any model work.

A row's number is the line of the file it starts on (1-based), so an error points at the line to fix. Blank lines
and lines starting with ``#`` are skipped in every format (not in a CSV record's quoted cells).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..request import FIELDS, GenerationRequest, RequestError, allowed, parse_request

FORMATS = (".jsonl", ".csv", ".txt")
SEED_DEFAULT = GenerationRequest.model_fields["seed"].default
MAX_EXPANSION = 100_000  # images one row may expand to (--repeat, --seeds): a typo should not queue a billion


@dataclass(frozen=True)
class Row:
    """One row as written: its line number and the fields it gives (typed: a CSV's text is converted)."""

    line: int
    params: dict[str, Any]


@dataclass(frozen=True)
class InvalidRow:
    """A row that cannot run: its line number and the contract's (or the parser's) error."""

    line: int
    error: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


@dataclass(frozen=True)
class BatchItem:
    """One request to run: the row it came from, its place in that row's expansion, the validated request."""

    line: int
    index: int
    request: GenerationRequest


# ------------------------------------------------------------------------------------------------ reading


def check_batch_file(path: Path) -> Path:
    """``path`` names a batch file format (by its suffix)."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"{path}: unknown batch file type {path.suffix or '(none)'!r}; give a .jsonl (one JSON request per line), "
            ".csv (a header of field names) or .txt (one prompt per line)"
        )
    return path


def read_rows(path: Path) -> tuple[list[Row], list[InvalidRow]]:
    """The rows of a ``.jsonl``, ``.csv`` or ``.txt`` file and the lines that are not rows at all (bad JSON)."""
    suffix = check_batch_file(path).suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        return _csv_rows(text)
    return (_jsonl_rows if suffix == ".jsonl" else _txt_rows)(text.splitlines())


def _skipped(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _txt_rows(lines: list[str]) -> tuple[list[Row], list[InvalidRow]]:
    return [Row(n, {"prompt": line.strip()}) for n, line in enumerate(lines, 1) if not _skipped(line)], []


def _jsonl_rows(lines: list[str]) -> tuple[list[Row], list[InvalidRow]]:
    rows, invalid = [], []
    for n, line in enumerate(lines, 1):
        if _skipped(line):
            continue
        try:
            params = json.loads(line)
        except json.JSONDecodeError as exc:
            invalid.append(
                InvalidRow(
                    n,
                    f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                    'request object, e.g. {"prompt": "a red fox", "seed": 1}',
                )
            )
            continue
        if not isinstance(params, dict):
            invalid.append(InvalidRow(n, f"a JSON {type(params).__name__}, not a request object"))
            continue
        rows.append(Row(n, params))
    return rows, invalid


def _csv_rows(text: str) -> tuple[list[Row], list[InvalidRow]]:
    lines = text.splitlines(keepends=True)
    # skip leading comments and blank lines before the header, keeping the line numbers
    first = next((i for i, line in enumerate(lines) if not _skipped(line)), len(lines))
    reader = csv.reader(lines[first:])
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return [], []
    rows, invalid = [], []
    line = first + reader.line_num + 1
    for record in reader:
        start, line = line, first + reader.line_num + 1
        if not record or (len(record) == 1 and _skipped(record[0])) or record[0].lstrip().startswith("#"):
            continue
        if len(record) != len(header):
            invalid.append(InvalidRow(start, f"{len(record)} cells, the header has {len(header)}"))
            continue
        try:
            params = {name: _from_text(name, cell) for name, cell in zip(header, record, strict=True) if cell != ""}
        except RequestError as exc:
            invalid.append(InvalidRow(start, str(exc)))
            continue
        rows.append(Row(start, params))
    return rows, invalid


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _from_text(field: str, text: str) -> Any:
    """A CSV cell as the field's type (the contract is strict: "20" is not a step count); unknown names stay text
    so that the contract reports them."""
    if field not in FIELDS:
        return text
    annotation = GenerationRequest.model_fields[field].annotation
    try:
        if annotation is bool:
            if text.strip().lower() in _TRUE + _FALSE:
                return text.strip().lower() in _TRUE
            raise ValueError(text)
        if annotation in (int, int | None):
            return int(text)
        if annotation in (float, float | None):
            return float(text)
    except ValueError:
        raise RequestError(field, text, allowed(field)) from None
    return text


# ------------------------------------------------------------------------------------------- expanding


def parse_seeds(text: str) -> range:
    """``--seeds A..B`` (inclusive) or ``--seeds A``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", text)
    if not match:
        raise ValueError(f"--seeds {text!r} is not allowed; give A..B (inclusive, e.g. 1..8) or one seed")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high < low:
        raise ValueError(f"--seeds {text!r}: {high} is below {low}; give A..B with A <= B")
    if high - low + 1 > MAX_EXPANSION:
        raise ValueError(f"--seeds {text!r}: {high - low + 1:,} seeds is over {MAX_EXPANSION:,}; give a smaller range")
    return range(low, high + 1)


def expand(
    rows: Iterable[Row], defaults: Mapping[str, Any], *, repeat: int = 1, seeds: range | None = None
) -> tuple[list[BatchItem], list[InvalidRow]]:
    """Each row over ``defaults`` (the command line's request options; a row's own fields win), validated, then
    expanded: ``seeds``: one item per seed, replacing the row's; ``repeat``: the row ``repeat`` times with seeds
    seed, seed+1, ... (the row's seed, else the default's). An invalid row is one ``InvalidRow`` however it expands."""
    if repeat < 1 or repeat > MAX_EXPANSION:
        raise ValueError(f"--repeat {repeat} is not allowed; --repeat must be from 1 to {MAX_EXPANSION:,}")
    items, invalid = [], []
    for row in rows:
        params = {**defaults, **row.params}
        try:
            request = parse_request(params)
            if seeds is not None:
                requests = [parse_request({**params, "seed": seed}) for seed in seeds]
            else:
                requests = [request] + [parse_request({**params, "seed": request.seed + i}) for i in range(1, repeat)]
        except RequestError as exc:
            invalid.append(InvalidRow(row.line, str(exc)))
            continue
        items.extend(BatchItem(row.line, i, r) for i, r in enumerate(requests))
    return items, invalid


def by_size(items: Iterable[BatchItem]) -> list[BatchItem]:
    """Items with the same image size together (sizes in order of first appearance, rows in file order within one):
    the compiled fast mode compiles once per size, and shapes stay warm."""
    groups: dict[tuple[int, int], list[BatchItem]] = {}
    for item in items:
        groups.setdefault(item.request.size, []).append(item)
    return [item for group in groups.values() for item in group]
