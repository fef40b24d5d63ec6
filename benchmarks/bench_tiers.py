#!/usr/bin/env python
"""The GPU run's tier phase (issue 30): per quantization tier, one pipeline with that transformer, the same seed and
prompt: peak GPU memory, seconds per image, PSNR of the image against the unquantized one (bf16 on the GPU, float32
on the CPU), and the memory estimate (``memory_tiers``) beside the measured bytes and peak.

Tiers (``--tiers``, comma separated; most at stake first, a time limit cuts from the end):
  none        the reference: the transformer in the pipeline dtype
  nf4 fp8 8bit   ``quantize.quantize_transformer`` (what ``from_pretrained(quantize=...)`` runs)
  gguf-Q8_0 gguf-Q4_0   a city96-layout .gguf written from the loaded transformer by ``gguf_model.write_flux_gguf``
              and read back by ``gguf_model.load_gguf_transformer`` (the code a real file takes); Q8_0 and Q4_0 are
              quantized with torch on the run's device (``torch_gguf_quantize``, byte-identical to the gguf package's
              numpy code, which takes minutes for FLUX.1-dev's 12 B weights)
A tier whose package is missing (gguf, bitsandbytes) is reported as "not available" with the reason; a tier that
fails is reported with its error; neither stops the others. Results are written after every tier.

    python benchmarks/bench_tiers.py --tiny --steps 2 --size 64 --out /tmp/tiers     # CPU rehearsal (tiny model)
    python benchmarks/bench_tiers.py --steps 8 --out gpu_out/tiers                    # GPU: FLUX.1-dev size, random
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_gpu import PROMPT, GiB, build_parts, free, sync

from flux_vector import memory_tiers
from flux_vector.offload import OffloadChoice, mode_needs, module_bytes
from flux_vector.pipeline import FluxVectorPipeline

TIERS = ("none", "nf4", "fp8", "gguf-Q8_0", "gguf-Q4_0", "8bit")
COMPONENTS = ("transformer", "text_encoder_2", "text_encoder", "vae")


# ----------------------------------------------------------------------------------------------- GGUF, fast


def torch_gguf_quantize(array: np.ndarray, qtype) -> np.ndarray:
    """``gguf.quants.quantize`` for Q8_0 and Q4_0 in torch on ``_DEVICE`` (the same float32 arithmetic, so the same
    bytes: tests/test_bench_tiers.py checks it on the CPU); other types go to the gguf package."""
    import gguf

    kind = gguf.GGMLQuantizationType(qtype)
    if kind not in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
        return _GGUF_QUANTIZE(array, qtype)
    rows = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(_DEVICE)
    blocks = rows.reshape(-1, 32)
    if kind == gguf.GGMLQuantizationType.Q8_0:
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        scaled = blocks * inverse
        magnitude = scaled.abs()
        floored = magnitude.floor()
        qs = (torch.sign(scaled) * (floored + (2 * (magnitude - floored)).floor())).to(torch.int8).view(torch.uint8)
    else:
        index = blocks.abs().argmax(dim=1, keepdim=True)
        d = blocks.gather(1, index) / -8
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = (blocks * inverse + np.float32(8.5)).trunc().to(torch.uint8).clamp(0, 15)
        q = q.reshape(-1, 2, 16)
        qs = q[:, 0, :] | (q[:, 1, :] << 4)
    scale = d.to(torch.float16).view(torch.uint8)
    out = torch.cat([scale, qs], dim=1).cpu().numpy()
    return out.reshape(*array.shape[:-1], -1)


_DEVICE = torch.device("cpu")
_GGUF_QUANTIZE = None  # the gguf package's quantize, kept while ours replaces it


def fast_gguf_quantize(device: torch.device):
    """Route ``gguf.quants.quantize`` (which ``write_flux_gguf`` imports when called) through ``torch_gguf_quantize``
    on ``device``; returns the function that undoes it."""
    global _DEVICE, _GGUF_QUANTIZE
    import gguf.quants

    _DEVICE, _GGUF_QUANTIZE = device, gguf.quants.quantize
    gguf.quants.quantize = torch_gguf_quantize

    def undo() -> None:
        gguf.quants.quantize = _GGUF_QUANTIZE

    return undo


# ----------------------------------------------------------------------------------------------- tiers


def unavailable(tier: str, device: torch.device) -> str | None:
    """Why ``tier`` cannot run here (its package is missing), or None."""
    from flux_vector.quantize import QUANTIZE_CHOICES

    if tier.startswith("gguf-"):
        return "not available: the gguf package is not installed" if importlib.util.find_spec("gguf") is None else None
    if tier not in QUANTIZE_CHOICES:
        raise SystemExit(f"--tiers: {tier!r} is not a tier ({', '.join(QUANTIZE_CHOICES)}, gguf-<type>)")
    if tier in ("8bit", "nf4") and importlib.util.find_spec("bitsandbytes") is None:
        return "not available: bitsandbytes is not installed"
    return None


def apply_tier(tier: str, parts: dict, device: torch.device, dtype: torch.dtype, log) -> dict:
    """Put ``parts["transformer"]`` in ``tier``; info for the row."""
    transformer = parts["transformer"]
    if tier == "none":
        return {}
    if tier.startswith("gguf-"):
        from flux_vector.gguf_model import load_gguf_transformer, write_flux_gguf

        qtype = tier.removeprefix("gguf-")
        with tempfile.TemporaryDirectory(prefix="bench_tiers_") as tmp:
            transformer.save_config(Path(tmp) / "transformer")
            path = Path(tmp) / f"transformer-{qtype}.gguf"
            started = time.perf_counter()
            undo = fast_gguf_quantize(device)
            try:
                counts = write_flux_gguf(transformer, path, qtype)
            finally:
                undo()
            written = time.perf_counter() - started
            size = path.stat().st_size
            parts["transformer"] = None
            del transformer
            free(device)
            started = time.perf_counter()
            loaded = load_gguf_transformer(path, tmp, dtype, log=log)
            parts["transformer"] = loaded.to(device).eval()
            read = time.perf_counter() - started
        return {"gguf_file_gib": size / GiB, "gguf_tensors": counts, "gguf_write_s": written, "gguf_read_s": read}
    from flux_vector.quantize import quantize_transformer

    started = time.perf_counter()
    count = quantize_transformer(transformer, tier, device)
    sync(device)
    return {"quantized_linears": count, "quantize_s": time.perf_counter() - started}


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_tier(tier: str, args, device, dtype, reference: dict, log) -> dict:
    row: dict = {"tier": tier}
    free(device)
    parts = build_parts(args, device, dtype)
    model = {name: memory_tiers.component_census(name, parts[name]) for name in COMPONENTS}
    dtype_bytes = memory_tiers.dtype_size(dtype)
    estimated = memory_tiers.component_bytes(model, tier if tier in memory_tiers.FORMATS else "none", dtype_bytes)
    row.update(apply_tier(tier, parts, device, dtype, log))
    pipe = FluxVectorPipeline(
        **parts, device=device, dtype=dtype, offload=OffloadChoice("none", device, "bench"), model_name=tier, log=log
    )
    real = {name: module_bytes(getattr(pipe, name)) for name in COMPONENTS}
    row["weights_bytes"] = sum(real.values())
    row["transformer_bytes"] = real["transformer"]
    row["estimated_weights_bytes"] = sum(estimated.values())
    row["estimated_transformer_bytes"] = estimated["transformer"]
    row["estimated_peak_bytes"] = mode_needs("none", estimated)
    sync(device)
    if device.type == "cuda":  # from here: the weights as placed plus what generating needs (not the build)
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for _ in range(1 + args.repeats):  # a warm-up, then the timed ones
        pipe.prompt_cache.entries.clear()  # end to end: the text encoders run every time
        sync(device)
        started = time.perf_counter()
        result = pipe(PROMPT, width=args.size, height=args.size, steps=args.steps, seed=1, progress=False)
        sync(device)
        runs.append((time.perf_counter() - started, result))
    timed = sorted(runs[1:], key=lambda r: r[0])
    seconds, result = timed[len(timed) // 2]
    row["s_per_image"] = seconds
    row["ms_per_step"] = 1000 * result.timings["per_step_s"]
    if device.type == "cuda":
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    image = np.asarray(result.image.convert("RGB"))
    if tier == "none":
        reference["image"] = image
    if reference.get("image") is not None:
        row["psnr_db"] = psnr(image, reference["image"])
    del pipe, parts, result, runs, timed
    free(device)
    return row


# ----------------------------------------------------------------------------------------------- report


def size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / GiB:.2f} GiB" if n_bytes >= GiB else f"{n_bytes / 2**20:.2f} MiB"


def fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf (identical)"
    return format(value, spec)


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# bench_tiers: {meta['what']}, {meta['size']}x{meta['size']}, {meta['steps']} steps",
        "",
        f"{meta['device_name']} ({meta['device']}, {meta['dtype']}), torch {meta['torch']}; no LoRA, no offload; "
        f"PSNR of the image against tier none's (same seed and prompt); median of {meta['repeats']} after a warm-up; "
        "estimates from flux_vector/memory_tiers.py (peak: weights + offload.HEADROOM).",
        "",
        "| tier | s/image | ms/step | peak GPU | est. peak | weights | est. weights | PSNR dB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if "s_per_image" not in r:
            lines.append(f"| {r['tier']} | - | - | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        notes = []
        if "gguf_file_gib" in r:
            notes.append(
                f"file {r['gguf_file_gib']:.2f} GiB, written {r['gguf_write_s']:.0f} s, read {r['gguf_read_s']:.0f} s"
            )
        if "quantize_s" in r:
            notes.append(f"{r['quantized_linears']} linears quantized in {r['quantize_s']:.1f} s")
        lines.append(
            f"| {r['tier']} | {r['s_per_image']:.3f} | {r['ms_per_step']:.1f} | "
            f"{size(r.get('peak_allocated_bytes'))} | "
            f"{size(r['estimated_peak_bytes'])} | {size(r['weights_bytes'])} | {size(r['estimated_weights_bytes'])} | "
            f"{fmt(r.get('psnr_db'))} | {'; '.join(notes)} |"
        )
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tiers.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "bench_tiers.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint (CPU rehearsal)")
    parser.add_argument("--model", help="a diffusers FLUX.1-dev folder (real weights) instead of random weights")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiers", default=",".join(TIERS), help=f"comma separated (default {','.join(TIERS)})")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--out", type=Path, default=Path("bench_tiers_out"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if device.type == "cuda" else torch.float32
    args.size = args.size or (64 if args.tiny else 1024)
    tiers = tuple(t.strip() for t in args.tiers.split(",") if t.strip())
    unknown = sorted(set(tiers) - set(memory_tiers.FORMATS))
    if unknown:
        parser.error(f"unknown tiers {unknown}; known: {', '.join(memory_tiers.FORMATS)}")
    if tiers[:1] != ("none",):
        parser.error("--tiers must start with none: the reference image every PSNR is measured against")
    if args.tiny:
        what = "tiny checkpoint"
    else:
        what = f"FLUX.1-dev weights from {args.model}" if args.model else "FLUX.1-dev architecture, random weights"
    result = {
        "meta": {
            "what": what,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "size": args.size,
            "steps": args.steps,
            "repeats": args.repeats,
            "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        },
        "rows": [],
    }
    reference: dict = {}
    for tier in tiers:
        reason = unavailable(tier, device)
        if reason:
            print(f"{tier}: skipped ({reason})", flush=True)
            result["rows"].append({"tier": tier, "skipped": reason})
            write(result, args.out)
            continue
        print(f"{tier}: running", flush=True)
        try:
            row = run_tier(tier, args, device, dtype, reference, log=lambda m: print("  " + m, flush=True))
        except Exception as exc:  # one broken tier must not lose the others' figures
            traceback.print_exc()
            row = {"tier": tier, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        free(device)
        result["rows"].append(row)
        if "s_per_image" in row:
            print(f"  {row['s_per_image']:.3f} s/image, PSNR {fmt(row.get('psnr_db'))} dB", flush=True)
        write(result, args.out)  # after every tier: a time limit keeps what finished
    print(markdown(result))
    print(f"wrote {args.out / 'bench_tiers.json'} and bench_tiers.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
