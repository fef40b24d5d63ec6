"""``flux-vector batch`` against the two ways to make the same images without it, in one run, and the cost of
resuming a finished batch.

Same N requests (distinct seeds, one prompt, --size/--steps) in every mode, the tiny model on CPU by default:

- ``batch CLI``: one ``flux-vector batch`` process, wall clock from spawn to exit (start-up, model load, writes);
- ``separate CLI``: N ``flux-vector generate`` processes one after another, wall clock in all;
- ``python loop`` / ``batch API``: in this process, one pipeline loaded once (not timed), rounds alternating:
  ``pipe(prompt, **params)`` + ``image.save`` per request, then ``flux_vector.batch(rows, folder, pipe=pipe)``
  (validation, size ordering, encoding with metadata, fsync, rename, manifest line, sha256) into a new folder.
  Medians over ``--rounds`` after a warm-up round.

Each mode's images/min by wall clock and by CPU time (its processes' user+system seconds: steadier than the wall clock
on a shared machine, and what start-up and bookkeeping cost).

Resume: a folder whose manifest says all of ``--resume-rows`` rows are done (files real PNGs with their sha256),
then ``flux_vector.batch`` over the same rows (nothing to do: rows read and validated, manifest read, every file
hashed) and ``flux-vector batch`` end to end, against the same command on a one-row folder.

    OMP_NUM_THREADS=1 python benchmarks/bench_batch.py [--images 12] [--size 64] [--steps 2] [--rounds 5]
        [--resume-rows 1000]

On a small machine shared with other work, ``OMP_NUM_THREADS=1``: with torch's default threads, a thread descheduled
by another process stalls every parallel region, and the same loop was measured at 2.7 s and at 64.8 s.
    python benchmarks/bench_batch.py --model black-forest-labs/FLUX.1-dev --size 1024 --steps 20 --images 8  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "v3ct0r style, simple vector art, a red fox, clip art"


def cli(*args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``flux-vector`` process, spawn to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flux_vector.cli", *args], check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def requests(n: int, size: int, steps: int) -> list[dict]:
    return [{"prompt": PROMPT, "seed": seed, "width": size, "height": size, "steps": steps} for seed in range(n)]


def per_min(images: int, seconds: float) -> float:
    return images / seconds * 60


def bench_processes(rows: list[dict], model: str, work: Path) -> dict[str, tuple[float, float]]:
    """images/min by wall clock and by CPU time (all the processes' CPU seconds)."""
    jsonl = work / "requests.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = cli("batch", str(jsonl), "--out", str(work / "cli_batch"), "--model", model, "--no-progress")
    separate = [0.0, 0.0]
    for i, row in enumerate(rows):
        wall, cpu = cli(
            "generate", "--model", model, "--no-progress", "--prompt", row["prompt"], "--seed", str(row["seed"]),
            "--width", str(row["width"]), "--height", str(row["height"]), "--steps", str(row["steps"]),
            "--out", str(work / "separate" / f"{i}.png"),
        )  # fmt: skip
        separate[0] += wall
        separate[1] += cpu
    n = len(rows)
    return {
        "batch CLI": (per_min(n, batch[0]), per_min(n, batch[1])),
        "separate CLI": (per_min(n, separate[0]), per_min(n, separate[1])),
    }


def bench_in_process(rows: list[dict], model: str, work: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """Medians over ``rounds`` after one uncounted warm-up round; the two modes alternate which goes first."""
    import flux_vector
    from flux_vector.pipeline import load_pipeline

    pipe = load_pipeline(model, log=lambda *_: None)

    def loop(folder: Path) -> None:
        folder.mkdir()
        for i, row in enumerate(rows):
            params = {k: v for k, v in row.items() if k != "prompt"}
            pipe(row["prompt"], progress=False, **params).image.save(folder / f"{i}.png")

    def api(folder: Path) -> None:
        summary = flux_vector.batch(rows, folder, pipe=pipe, progress=False, report=lambda _: None)
        assert summary.done_now == len(rows), summary.text()

    times: dict[str, list[tuple[float, float]]] = {"python loop": [], "batch API": []}
    for r in range(rounds + 1):
        order = [("python loop", loop), ("batch API", api)]
        for name, run in order if r % 2 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            run(work / f"{name.replace(' ', '_')}{r}")
            if r:  # round 0 warms up (first calls, lazy imports)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    n = len(rows)
    return {
        name: (per_min(n, statistics.median(t[0] for t in runs)), per_min(n, statistics.median(t[1] for t in runs)))
        for name, runs in times.items()
    }


def done_folder(folder: Path, rows: list[dict], model: str, lora: str | None) -> Path:
    """A batch folder whose manifest records every row as done, as a finished run leaves it."""
    import io

    from PIL import Image

    from flux_vector.batching.manifest import write_durably
    from flux_vector.batching.names import file_names, item_key
    from flux_vector.batching.rows import Row, expand

    items, _ = expand([Row(n, r) for n, r in enumerate(rows, 1)], {})
    buffer = io.BytesIO()
    Image.new("RGB", (rows[0]["width"], rows[0]["height"]), (200, 40, 40)).save(buffer, format="PNG")
    folder.mkdir(parents=True)
    lines = []
    for item in items:
        records = [write_durably(folder / name, buffer.getvalue()) for name in file_names(item)]
        entry = {"row": item.line, "key": item_key(item, model, lora), "status": "done", "files": records}
        entry["request"] = item.request.echo()
        lines.append(json.dumps(entry) + "\n")
    (folder / "manifest.jsonl").write_text("".join(lines))
    return folder


def bench_resume(n: int, size: int, model: str, work: Path) -> dict[str, float]:
    from flux_vector.batching import run_batch
    from flux_vector.models import DEFAULT_LORA

    def never():
        raise AssertionError("a finished batch must not load the model")

    out: dict[str, float] = {}
    for count in (1, n):
        rows = requests(count, size, 1)
        folder = done_folder(work / f"resume{count}", rows, model, str(DEFAULT_LORA))
        started = time.perf_counter()
        summary = run_batch(rows, folder, never, model=model, lora=str(DEFAULT_LORA), progress=False)
        out[f"api_{count}_s"] = time.perf_counter() - started
        assert summary.done_before == count and summary.done_now == 0, summary.text()
        jsonl = work / f"resume{count}.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[f"cli_{count}_s"], _ = cli("batch", str(jsonl), "--out", str(folder), "--model", model, "--no-progress")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resume-rows", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from flux_vector.quiet import quiet_third_party

    quiet_third_party()
    work = Path(tempfile.mkdtemp(prefix="bench_batch_", dir=args.keep))
    try:
        rows = requests(args.images, args.size, args.steps)
        rates = bench_processes(rows, args.model, work)
        rates.update(bench_in_process(rows, args.model, work, args.rounds))
        resume = bench_resume(args.resume_rows, args.size, args.model, work) if args.resume_rows else {}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    import torch

    print(
        f"{args.images} images, {args.size}x{args.size}, {args.steps} steps, model {args.model}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    print(f"{'mode':<14} {'images/min (wall)':>18} {'images/CPU-min':>15}")
    for mode, (wall, cpu) in rates.items():
        print(f"{mode:<14} {wall:>18.1f} {cpu:>15.1f}")
    for a, b in (("batch CLI", "separate CLI"), ("batch API", "python loop")):
        wall, cpu = (rates[a][k] / rates[b][k] for k in (0, 1))
        print(f"{a} / {b}: {wall:.3f} (wall), {cpu:.3f} (CPU)")
    if resume:
        n = args.resume_rows
        print(
            f"resume of {n} done rows: run_batch {resume[f'api_{n}_s']:.2f} s (1 row: {resume['api_1_s']:.3f} s); "
            f"flux-vector batch {resume[f'cli_{n}_s']:.2f} s (1 row: {resume['cli_1_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
