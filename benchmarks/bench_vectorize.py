"""``image_to_svg`` against plain vtracer defaults on flat icons, clean and "as generated".

The set: 48 Twemoji icons (graphics CC-BY 4.0, Twitter, Inc. and other contributors; npm ``@twemoji/svg``, fetched
with ``npm pack`` into ``benchmarks/.cache/``, never committed), single code points spread evenly over the sorted
list, rendered with cairosvg at 1024x1024 on white. Each is traced clean and "as generated": Gaussian blur sigma 1.2
then Gaussian noise sigma 4 (seeded per icon), which is how a diffusion model's flat art looks up close.

For each image, ours and ``vtracer.convert_raw_image_to_svg(png)`` with no options, in the same run: the SVG is
re-rendered with cairosvg and compared with the *clean* raster (PSNR over RGB, SSIM), plus SVG bytes, path count and
time. Time is the calling thread's CPU time (``time.thread_time``: one core, unaffected by other processes on the
machine; both tracers are single-threaded), wall time is reported beside it. Run with ``OMP_NUM_THREADS=1``.

    pip install -e ".[bench]"
    OMP_NUM_THREADS=1 python benchmarks/bench_vectorize.py [--count 48] [--out bench_out/vectorize]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "@twemoji/svg@15.0.0"
CACHE = Path(__file__).resolve().parent / ".cache"
SIZE = 1024
BLUR_SIGMA, NOISE_SIGMA = 1.2, 4.0


def icon_folder() -> Path:
    folder = CACHE / "twemoji-svg"
    if not folder.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        if shutil.which("npm") is None:
            sys.exit("npm is needed to fetch the icon set (apt-get install npm)")
        out = subprocess.run(
            ["npm", "pack", PACKAGE, "--silent"], cwd=CACHE, check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        with tarfile.open(CACHE / out) as archive:
            archive.extractall(CACHE / "unpacked", filter="data")
        (CACHE / "unpacked" / "package").rename(folder)
    return folder


def pick(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.glob("*.svg") if "-" not in p.stem)
    return [files[int(i * len(files) / count)] for i in range(count)]


def render(svg: bytes) -> np.ndarray:
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg, output_width=SIZE, output_height=SIZE)
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, image).convert("RGB"))


def as_generated(clean: np.ndarray, seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(clean.astype(np.float32), sigma=(BLUR_SIGMA, BLUR_SIGMA, 0))
    x += rng.normal(0.0, NOISE_SIGMA, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def ours(pixels: np.ndarray) -> str:
    from flux_vector.vectorize import image_to_svg

    return image_to_svg(Image.fromarray(pixels))


def vtracer_defaults(pixels: np.ndarray) -> str:
    import vtracer

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return vtracer.convert_raw_image_to_svg(buffer.getvalue(), img_format="png")


TRACERS = {"ours": ours, "vtracer": vtracer_defaults}


def measure(tracer, pixels: np.ndarray, clean: np.ndarray) -> tuple[dict, str]:
    wall, cpu = time.perf_counter(), time.thread_time()
    svg = tracer(pixels)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    back = render(svg.encode())
    row = {
        "psnr": psnr(back, clean),
        "ssim": ssim(back, clean),
        "bytes": len(svg.encode()),
        "paths": svg.count("<path"),
        "cpu_s": cpu,
        "wall_s": wall,
    }
    return row, svg


def table(rows: dict) -> str:
    lines = [
        "| set | tracer | PSNR dB median (worst) | SSIM median (worst) | SVG KB median (worst) | paths median "
        "(worst) | CPU s median (worst) | wall s median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("generated", "clean"):
        for name in TRACERS:
            r = rows[kind][name]
            col = {k: np.array([x[k] for x in r]) for k in r[0]}
            lines.append(
                f"| {kind} | {name} | {np.median(col['psnr']):.2f} ({col['psnr'].min():.2f}) "
                f"| {np.median(col['ssim']):.4f} ({col['ssim'].min():.4f}) "
                f"| {np.median(col['bytes']) / 1000:.1f} ({col['bytes'].max() / 1000:.1f}) "
                f"| {np.median(col['paths']):.0f} ({col['paths'].max()}) "
                f"| {np.median(col['cpu_s']):.3f} ({col['cpu_s'].max():.3f}) | {np.median(col['wall_s']):.3f} |"
            )
    return "\n".join(lines)


def targets(rows: dict) -> list[str]:
    def med(kind, name, key):
        return float(np.median([x[key] for x in rows[kind][name]]))

    checks = [
        (
            "generated: median size <= 1/10 of vtracer's",
            med("generated", "ours", "bytes"),
            med("generated", "vtracer", "bytes") / 10,
        ),
        (
            "generated: median PSNR >= vtracer's",
            -med("generated", "ours", "psnr"),
            -med("generated", "vtracer", "psnr"),
        ),
        ("generated: median CPU time <= 0.5 s", med("generated", "ours", "cpu_s"), 0.5),
        ("clean: median PSNR >= 32 dB", -med("clean", "ours", "psnr"), -32.0),
        ("clean: median size <= vtracer's", med("clean", "ours", "bytes"), med("clean", "vtracer", "bytes")),
    ]
    return [
        f"{'PASS' if value <= limit else 'FAIL'}  {text}: {abs(value):.4g} vs {abs(limit):.4g}"
        for text, value, limit in checks
    ]


def side_by_side(raster: np.ndarray, svg: str, path: Path, size: int = 384) -> None:
    """The picture for the README: the as-generated raster and our SVG re-rendered, side by side."""
    left = Image.fromarray(raster).resize((size, size), Image.Resampling.LANCZOS)
    right = Image.fromarray(render(svg.encode())).resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (2 * size + 8, size), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (size + 8, 0))
    canvas.save(path, optimize=True)


def run_icon(task: tuple[int, str, Path | None]) -> list[dict]:
    """Both tracers on one icon, clean and as generated; writes the README picture when asked."""
    index, path, picture = task
    clean = render(Path(path).read_bytes())
    generated = as_generated(clean, seed=index)
    rows = []
    for kind, pixels in (("generated", generated), ("clean", clean)):
        for name, tracer in TRACERS.items():
            row, svg = measure(tracer, pixels, clean)
            rows.append({"index": index, "icon": Path(path).stem, "set": kind, "tracer": name, **row})
            if picture is not None and kind == "generated" and name == "ours":
                side_by_side(generated, svg, picture)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=48, help="icons (default 48)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="icons measured in parallel processes (default 1; each "
        "image is still traced on one thread, its CPU time is its own)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/vectorize"))
    parser.add_argument("--picture", type=Path, help="also write the README picture (raster | SVG) here")
    parser.add_argument("--picture-index", type=int, default=7)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = pick(icon_folder(), args.count)
    done_file = args.out / "rows.jsonl"  # one line per measurement, so an interrupted run resumes where it stopped
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    seen = {row["index"] for row in done}
    tasks = [
        (i, str(f), args.picture if i == args.picture_index else None) for i, f in enumerate(files) if i not in seen
    ]
    print(
        f"{len(files)} icons at {SIZE}x{SIZE} ({len(seen)} already measured); OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} CPUs visible, {args.jobs} process(es)",
        flush=True,
    )
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool, done_file.open("a") as sink:
        for rows in pool.imap_unordered(run_icon, tasks):
            for row in rows:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            done.extend(rows)
            by = {(r["set"], r["tracer"]): r for r in rows}
            g, v = by[("generated", "ours")], by[("generated", "vtracer")]
            count = len({r["index"] for r in done})
            print(
                f"{count:2d}/{len(files)} {g['icon']:>6}: generated ours {g['psnr']:.2f} dB "
                f"{g['bytes'] / 1000:.1f} KB {g['cpu_s']:.3f} s | vtracer {v['psnr']:.2f} dB "
                f"{v['bytes'] / 1000:.1f} KB {v['cpu_s']:.3f} s",
                flush=True,
            )
    rows: dict = {
        kind: {name: [r for r in done if r["set"] == kind and r["tracer"] == name] for name in TRACERS}
        for kind in ("generated", "clean")
    }
    report = f"{len(seen | {r['index'] for r in done})} icons\n\n" + table(rows) + "\n\n" + "\n".join(targets(rows))
    print("\n" + report)
    (args.out / "bench_vectorize.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
