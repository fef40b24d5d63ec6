"""A batch file's rows: read (``.jsonl``, ``.csv``, ``.txt``), merged over the command line's defaults, expanded
(``--repeat``, ``--seeds``) and validated by the one contract, all before any model work.

A row's number is the line of the file it starts on (1-based), so an error points at the line to fix. Blank lines
and lines starting with ``#`` are skipped in every format (not in a CSV record's quoted cells).

The file is read one line at a time, never whole: a line longer than ``MAX_LINE_BYTES`` (1 MiB), a line that is not
UTF-8, bad JSON (a number of more than 4300 digits included), or a prompt that is empty or only NUL characters is
that line's error; the other rows still run. A batch expands to at most ``MAX_BATCH_REQUESTS`` requests in all
(rows x ``--repeat`` or ``--seeds``); more is one error before anything is generated.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..request import FIELDS, GenerationRequest, RequestError, allowed, parse_request
from ..safe_files import open_regular_for_reading

FORMATS = (".jsonl", ".csv", ".txt")
SEED_DEFAULT = GenerationRequest.model_fields["seed"].default
MAX_EXPANSION = 100_000  # images one row may expand to (--repeat, --seeds): a typo should not queue a billion
MAX_BATCH_REQUESTS = 100_000  # requests one batch may hold in all, rows x --repeat/--seeds (100 days at ~1/min)
MAX_LINE_BYTES = 1 << 20  # the longest line read (a request's two 4000-character prompts fit many times over)


class TooManyRequests(ValueError):
    """The batch expands to more than ``MAX_BATCH_REQUESTS`` requests."""


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


def read_rows(path: Path, *, per_row: int = 1) -> tuple[list[Row], list[InvalidRow]]:
    """The rows of a ``.jsonl``, ``.csv`` or ``.txt`` file and the lines that are not rows at all (bad JSON, not
    UTF-8, too long). ``per_row``: the requests each row expands to (``--repeat``, ``--seeds``), for the
    ``MAX_BATCH_REQUESTS`` cap, which stops the reading as soon as it is passed."""
    suffix = check_batch_file(path).suffix.lower()
    counter = _Counter(path, per_row)
    with open_regular_for_reading(path, what="REQUESTS") as f:
        lines = _lines(f)
        if suffix == ".csv":
            return _csv_rows(lines, counter)
        return (_jsonl_rows if suffix == ".jsonl" else _txt_rows)(lines, counter)


class _Counter:
    """Counts the rows (valid or not) as they are read; over the cap: ``TooManyRequests``."""

    def __init__(self, path: Path, per_row: int):
        self.path, self.per_row, self.rows = path, max(1, per_row), 0

    def add(self) -> None:
        self.rows += 1
        check_total(self.rows, self.per_row, str(self.path))


def check_total(rows: int, per_row: int, what: str) -> None:
    """``rows`` x ``per_row`` requests is within ``MAX_BATCH_REQUESTS``."""
    if rows * per_row > MAX_BATCH_REQUESTS:
        times = f" x {per_row:,} (--repeat/--seeds)" if per_row > 1 else ""
        raise TooManyRequests(
            f"{what}: more than {MAX_BATCH_REQUESTS:,} requests in one batch ({rows:,} rows so far{times}); split "
            "the file or ask for fewer seeds"
        )


_Line = tuple[int, str | None, str | None]  # (line number, its text or None, the error when None)


def _lines(f: Any) -> Iterator[_Line]:
    """The file's lines, one at a time, each at most ``MAX_LINE_BYTES``: (number, text with its newline, None), or
    (number, None, why) for a line that is too long or not UTF-8 (read past, never held whole)."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 16)
            yield number, None, f"longer than {MAX_LINE_BYTES:,} bytes (the most a line may hold)"
            continue
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield (
                number,
                None,
                f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8",
            )


def _skipped(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _row_lines(lines: Iterable[_Line], counter: _Counter, invalid: list[InvalidRow]) -> Iterator[tuple[int, str]]:
    """The lines that are rows (not blank, not a ``#`` comment) of a one-row-per-line file, as (number, text), each
    counted; a line that could not be read (too long, not UTF-8) is counted and recorded in ``invalid`` instead."""
    for n, line, error in lines:
        if line is not None and _skipped(line):
            continue
        counter.add()
        if line is None:
            invalid.append(InvalidRow(n, error or ""))
        else:
            yield n, line


def _txt_rows(lines: Iterable[_Line], counter: _Counter) -> tuple[list[Row], list[InvalidRow]]:
    invalid: list[InvalidRow] = []
    rows = [Row(n, {"prompt": line.strip()}) for n, line in _row_lines(lines, counter, invalid)]
    return rows, invalid


def _jsonl_rows(lines: Iterable[_Line], counter: _Counter) -> tuple[list[Row], list[InvalidRow]]:
    rows: list[Row] = []
    invalid: list[InvalidRow] = []
    for n, line in _row_lines(lines, counter, invalid):
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
        except ValueError as exc:  # a number of more than 4300 digits (int's string conversion limit)
            invalid.append(InvalidRow(n, f"not a request: {' '.join(str(exc).split())[:200]}"))
            continue
        except RecursionError:
            invalid.append(InvalidRow(n, "not a request: JSON nested too deep"))
            continue
        if not isinstance(params, dict):
            invalid.append(InvalidRow(n, f"a JSON {type(params).__name__}, not a request object"))
            continue
        rows.append(Row(n, params))
    return rows, invalid


def _csv_rows(lines: Iterable[_Line], counter: _Counter) -> tuple[list[Row], list[InvalidRow]]:
    invalid: list[InvalidRow] = []

    def texts() -> Iterator[str]:
        """The lines as csv reads them; a line that is too long or not UTF-8 is reported and read as blank."""
        for n, line, error in lines:
            if line is None:
                counter.add()
                invalid.append(InvalidRow(n, error or ""))
                yield "\n"
            else:
                yield line

    source = texts()
    first = 0  # leading comments and blank lines before the header, keeping the line numbers
    header_line = None
    for text in source:
        if not _skipped(text):
            header_line = text
            break
        first += 1
    if header_line is None:
        return [], invalid
    reader = csv.reader(_chain(header_line, source))
    try:
        header = [name.strip() for name in next(reader)]
    except (StopIteration, csv.Error):
        return [], invalid
    rows: list[Row] = []
    line = first + reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start, line = line, first + reader.line_num + 1
            counter.add()
            invalid.append(InvalidRow(start, f"not a CSV record ({exc})"))
            continue
        start, line = line, first + reader.line_num + 1
        if not record or (len(record) == 1 and _skipped(record[0])) or record[0].lstrip().startswith("#"):
            continue
        counter.add()
        if len(record) != len(header):
            invalid.append(InvalidRow(start, f"{len(record)} cells, the header has {len(header)}"))
            continue
        try:
            params = {name: _from_text(name, cell) for name, cell in zip(header, record, strict=True) if cell != ""}
        except RequestError as exc:
            invalid.append(InvalidRow(start, str(exc)))
            continue
        rows.append(Row(start, params))
    return rows, sorted(invalid, key=lambda r: r.line)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


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
    items: list[BatchItem] = []
    invalid: list[InvalidRow] = []
    per_row = per_row_requests(repeat, seeds)
    for count, row in enumerate(rows, 1):
        check_total(count, per_row, "the batch")
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


def per_row_requests(repeat: int = 1, seeds: range | None = None) -> int:
    """The requests one row expands to."""
    return len(seeds) if seeds is not None else repeat


def by_size(items: Iterable[BatchItem]) -> list[BatchItem]:
    """Items with the same image size together (sizes in order of first appearance, rows in file order within one):
    the compiled fast mode compiles once per size, and shapes stay warm."""
    groups: dict[tuple[int, int], list[BatchItem]] = {}
    for item in items:
        groups.setdefault(item.request.size, []).append(item)
    return [item for group in groups.values() for item in group]
