"""Run a batch: rows checked first, what the manifest says is done skipped, the model loaded once, the rest
generated in size groups; each image written durably and recorded before the next is reported.

Generation runs on the calling thread; encoding (an SVG's tracing is CPU seconds), writing and the manifest line run
on one writer thread, so the next image generates meanwhile and manifest lines stay in order. At most one finished
image waits for the writer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..image_metadata import identity_of, image_metadata
from ..output_formats import encode_image
from .interrupt import StopRequest, stop_on_signals
from .manifest import MANIFEST, Manifest, write_durably
from .names import file_names, item_key
from .rows import BatchItem, InvalidRow, Row, by_size, expand, per_row_requests, read_rows
from .summary import BatchSummary, InvalidRows, line_list


def plan_rows(
    source: Path | Iterable[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    *,
    repeat: int = 1,
    seeds: range | None = None,
) -> tuple[list[BatchItem], list[InvalidRow]]:
    """The valid items (file order) and the invalid rows (by line) of a batch file or of a list of parameter dicts
    (rows numbered from 1)."""
    if isinstance(source, (str, Path)):
        rows, bad = read_rows(Path(source), per_row=per_row_requests(repeat, seeds))
    else:
        rows, bad = [Row(n, dict(params)) for n, params in enumerate(source, 1)], []
    items, invalid = expand(rows, defaults, repeat=repeat, seeds=seeds)
    return items, sorted(bad + invalid, key=lambda r: r.line)


def run_batch(
    source: Path | Iterable[Mapping[str, Any]],
    out: Path,
    load: Callable[[], Any],
    *,
    model: str,
    lora: str | None,
    defaults: Mapping[str, Any] | None = None,
    repeat: int = 1,
    seeds: range | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> BatchSummary:
    """The whole batch. ``load()`` returns the pipeline and is called only when something is left to do; ``model``
    and ``lora`` are the names the requests are keyed under (``names.item_key``); ``report`` gets the invalid rows
    and one line per finished request."""
    items, invalid = plan_rows(source, defaults or {}, repeat=repeat, seeds=seeds)
    for row in invalid:
        report(f"line {row.line}: {'invalid' if strict else 'skipped'}: {row.error}")
    if strict and invalid:
        raise InvalidRows(
            f"{len(invalid)} invalid row{'s' if len(invalid) > 1 else ''} in the batch (lines "
            f"{line_list(r.line for r in invalid)}) and --strict: nothing was generated; fix them or leave out "
            "--strict to skip them"
        )
    summary = BatchSummary(total=len(items), invalid=invalid, manifest=Path(out) / MANIFEST)
    with Manifest(Path(out)).open(reset=overwrite) as manifest:
        if manifest.dropped:
            report(f"{manifest.path}: {manifest.dropped} line(s) cut short by an earlier crash dropped")
        for number, why in manifest.untrusted:
            report(f"{manifest.path} line {number}: ignored, not trusted: {why}; its request is made again")
        keys = {(item.line, item.index): item_key(item, model, lora) for item in items}
        todo = [item for item in items if not manifest.is_done(item.line, keys[item.line, item.index])]
        summary.done_before = len(items) - len(todo)
        if todo:
            pipe = load()
            started = time.perf_counter()
            with stop_on_signals(
                "stopping after the image in progress (Ctrl-C again to abandon it); the same command resumes"
            ) as stop:
                _Run(pipe, manifest, keys, summary, progress, report).run(by_size(todo), stop)
            summary.seconds = time.perf_counter() - started
    return summary


_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images [{elapsed}<{remaining}{postfix}]"


class _Run:
    """One run over the items left to do."""

    def __init__(self, pipe, manifest: Manifest, keys, summary: BatchSummary, progress: bool, report):
        self.pipe, self.manifest, self.keys, self.summary, self.report = pipe, manifest, keys, summary, report
        self.identity = identity_of(pipe)
        self.progress, self.bar, self.count, self.started = progress, None, 0, time.perf_counter()

    def run(self, todo: list[BatchItem], stop: StopRequest) -> None:
        from ..pipeline import generate_many  # torch: only once there is something to generate

        self.total = len(todo)
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=sum(item.request.batch_size for item in todo),
                desc="batch",
                bar_format=_BAR_FORMAT,
                dynamic_ncols=True,
            )
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        pending: deque[Future] = deque()
        generated = 0
        results = generate_many(self.pipe, (item.request for item in todo), progress=False, errors="return")
        try:
            for item, outcome in zip(todo, results, strict=False):
                generated += 1
                pending.append(writer.submit(self.settle, item, outcome))
                while len(pending) > 1:  # at most one finished image waits; a write error stops the batch here
                    pending.popleft().result()
                if stop.requested:
                    break
        except KeyboardInterrupt:  # the second Ctrl-C: the image in progress is abandoned, nothing of it written
            generated = -1
        finally:
            results.close()
            wait_futures(pending)  # what was generated is written (each file whole or not at all)
            writer.shutdown(wait=True)
            if self.bar is not None:
                self.bar.close()
        for future in pending:
            future.result()
        self.summary.interrupted = generated < len(todo)

    # ------------------------------------------------------------------------------ on the writer thread
    def settle(self, item: BatchItem, outcome: Any) -> None:
        key = self.keys[item.line, item.index]
        entry: dict[str, Any] = {"row": item.line, "key": key}
        if isinstance(outcome, Exception):
            error = f"{type(outcome).__name__}: {outcome}"
            entry.update(status="failed", error=error, request=item.request.echo(), identity=self.identity)
            entry["finished_at"] = _now()
            self.manifest.append(entry)
            self.summary.failed.append((item, error))
            self._line(f"FAILED line {item.line} (seed {item.request.seed}): {error}", item.request.batch_size)
            return
        started = time.perf_counter()
        files = write_images(self.manifest.folder, item, outcome.images, self.identity)
        timings = {name: round(float(value), 4) for name, value in outcome.timings.items()}
        timings["write_s"] = round(time.perf_counter() - started, 4)
        entry.update(status="done", files=files, request=item.request.echo(), timings=timings, identity=self.identity)
        entry["finished_at"] = _now()
        self.manifest.append(entry)
        self.summary.done_now += 1
        self.summary.images_now += len(files)
        names = ", ".join(f["name"] for f in files)
        self._line(f"{names}  {outcome.width}x{outcome.height}  {timings.get('total_s', 0.0):.2f} s", len(files))

    def _line(self, text: str, images: int) -> None:
        self.count += 1
        width = len(str(self.total))
        line = f"[{self.count:>{width}}/{self.total}] {text}"
        if self.bar is None:
            self.report(line)
            return
        with self.bar.external_write_mode():  # the line above the bar, not through it
            self.report(line)
        self.bar.update(images)
        minutes = (time.perf_counter() - self.started) / 60
        self.bar.set_postfix_str(f"{self.summary.images_now / minutes:.1f} images/min" if minutes else "", refresh=True)


def write_images(folder: Path, item: BatchItem, images: list, identity: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The one place a batch encodes and writes its images: each durably under its deterministic name; returns the
    manifest records (name, bytes, sha256)."""
    request = item.request
    records = []
    for i, (name, image) in enumerate(zip(file_names(item), images, strict=True)):
        metadata = image_metadata(request, identity, batch_index=i, size=image.size)
        data = encode_image(
            image, request.output_format, request.quality, metadata=metadata, **request.vector_options()
        )
        records.append(write_durably(folder / name, data))
    return records


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def batch(
    requests: Path | str | Iterable[Mapping[str, Any]],
    out: Path | str,
    *,
    model: str | None = None,
    lora: str | None = None,
    pipe: Any = None,
    repeat: int = 1,
    seeds: range | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
    **defaults: Any,
) -> BatchSummary:
    """``flux_vector.batch``: what ``flux-vector batch`` does, from Python. ``requests``: a .jsonl/.csv/.txt file or
    parameter dicts (rows numbered from 1); ``defaults``: request fields every row gets unless it gives its own;
    ``pipe``: a loaded pipeline to use (else one is loaded, only if something is left to do); ``report``: where the
    invalid rows and the line per finished request go."""
    from ..models import DEFAULT_LORA, default_model, running_lora_name
    from ..pipeline import load_pipeline

    name = model or getattr(pipe, "model_name", None) or default_model(log=lambda *_: None)
    asked = DEFAULT_LORA if lora is None else lora
    lora_name = getattr(pipe, "lora_name", None) if pipe is not None else running_lora_name(asked, name)
    return run_batch(
        Path(requests) if isinstance(requests, str) else requests,
        Path(out),
        (lambda: pipe) if pipe is not None else (lambda: load_pipeline(name, lora=lora)),
        model=name,
        lora=None if lora_name is None else str(lora_name),
        defaults=defaults,
        repeat=repeat,
        seeds=seeds,
        strict=strict,
        overwrite=overwrite,
        progress=progress,
        report=report,
    )
