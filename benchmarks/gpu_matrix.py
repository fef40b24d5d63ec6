#!/usr/bin/env python
"""The GPU run's correctness phase: every offload x quantize x fast combination generates one image (512x512 by
default) and reports whether it finished with finite latents, its seconds and its peak GPU memory. The 8-bit
combinations with an offload generate three times, the peak read after each (an int8 copy added per onload would
show as a growing peak). Results are written after every combination (JSON + markdown), so a time limit keeps what
finished.

"fast" here is the whole fast mode without torch.compile (fused QKV, the attention backend, fp8 where the device
has it): compiling FLUX.1-dev takes tens of seconds per combination; the speed phase (bench_gpu.py) measures it.
A combination the library refuses (8-bit + sequential offload, ...) is listed with the reason.

    python benchmarks/gpu_matrix.py --tiny --out /tmp/matrix        # CPU rehearsal (tiny model, 64x64)
    python benchmarks/gpu_matrix.py --out gpu_out/correctness       # GPU: FLUX.1-dev architecture, random weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_gpu import PROMPT, GiB, build_parts, free, lora_state_dict, sync

from flux_vector.fast import FULL, choose_fast_plan, detect_env
from flux_vector.offload import OffloadChoice, offload_plan
from flux_vector.pipeline import FluxVectorPipeline

# Most at stake first (a time limit cuts from the end): group and model offload are what issue 31 changed, no offload
# is also the speed phase's baseline, sequential is the slowest (every layer crosses PCIe on every step).
OFFLOADS = ("group", "model", "none", "sequential")
QUANTIZE = (None, "8bit")
FAST = (False, True)
FAST_NO_COMPILE = {**FULL, "compile": False}


def combinations() -> list[tuple[str, str | None, bool]]:
    return [(o, q, f) for o in OFFLOADS for q in QUANTIZE for f in FAST]


def label(offload: str, quantize: str | None, fast: bool) -> str:
    return f"{offload}/{quantize or 'bf16'}/{'fast' if fast else 'eager'}"


def build(offload: str, quantize: str | None, fast: bool, args, device, dtype, env, log):
    """The pipeline for one combination, or the reason the library refuses it."""
    from flux_vector.lora import apply_lora, parse_lora

    if offload == "sequential" and device.type != "cuda":
        return None, {"skipped": "sequential offload needs an accelerator (diffusers raises on the CPU)"}
    try:
        offload_plan(offload, resident_transformer=quantize == "8bit")
        plan = (
            choose_fast_plan(
                env, FAST_NO_COMPILE, full=True, quantized=quantize == "8bit", offload=offload, dtype=dtype
            )
            if fast
            else None
        )
    except ValueError as exc:
        return None, {"refused": str(exc)}
    parts = build_parts(args, device, dtype)
    if quantize == "8bit":
        from flux_vector.quantize import quantize_linears_8bit

        quantize_linears_8bit(parts["transformer"], device)
    patches = parse_lora(lora_state_dict(args, parts["transformer"]), parts["transformer"], parts["text_encoder"])
    lora = apply_lora(patches, strength=1.0)
    choice = OffloadChoice(offload, device, "gpu_matrix")
    pipe = FluxVectorPipeline(
        **parts, device=device, dtype=dtype, offload=choice, lora=lora, model_name="matrix", fast_plan=plan, log=log
    )
    info = {"offload_plan": pipe.offload_plan}
    if plan is not None:
        info["plan"] = plan.summary()
    return pipe, info


def run(offload: str, quantize: str | None, fast: bool, args, device, dtype, env, log) -> dict:
    row: dict = {"combination": label(offload, quantize, fast), "offload": offload, "quantize": quantize, "fast": fast}
    free(device)
    started = time.perf_counter()
    pipe, info = build(offload, quantize, fast, args, device, dtype, env, log)
    row.update(info)
    if pipe is None:
        return row
    sync(device)
    row["load_s"] = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        row["placed_gib"] = torch.cuda.memory_allocated(device) / GiB
    generations = 3 if quantize == "8bit" and offload != "none" else 1
    seconds, peaks, finite = [], [], True
    for _ in range(generations):
        started = time.perf_counter()
        result = pipe(PROMPT, width=args.size, height=args.size, steps=args.steps, seed=1, progress=False)
        sync(device)
        seconds.append(time.perf_counter() - started)
        finite = finite and bool(torch.isfinite(result.latents).all())
        if device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated(device) / GiB)
    row.update({"ok": finite, "seconds": seconds, "peak_gib": peaks or None})
    del pipe
    return row


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# correctness: every offload x quantize x fast, {meta['size']}x{meta['size']}, {meta['steps']} steps",
        "",
        f"{meta['device_name']} ({meta['device']}), torch {meta['torch']}, {meta['what']}; fast = the whole mode "
        "without compile. Peak GPU GiB after each generation (three for 8-bit + offload).",
        "",
        "| combination | result | s/image | peak GPU GiB | placement | notes |",
        "|---|---|---:|---|---|---|",
    ]
    for r in result["rows"]:
        if "ok" not in r:
            why = r.get("refused") or r.get("skipped") or r.get("error")
            kind = "refused" if "refused" in r else "skipped" if "skipped" in r else "ERROR"
            lines.append(f"| {r['combination']} | {kind} | - | - | - | {why} |")
            continue
        peaks = ", ".join(f"{p:.2f}" for p in r["peak_gib"]) if r["peak_gib"] else "-"
        placement = ", ".join(f"{k}={v}" for k, v in r["offload_plan"].items())
        result_text = "ok" if r["ok"] else "NON-FINITE"
        lines.append(
            f"| {r['combination']} | {result_text} | {min(r['seconds']):.2f} | {peaks} | {placement} | "
            f"{r.get('plan', '')} |"
        )
    return "\n".join([*lines, ""])


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_matrix.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu_matrix.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint (CPU rehearsal)")
    parser.add_argument("--model", help="a diffusers FLUX.1-dev folder instead of random weights")
    parser.add_argument("--lora-file", help="a LoRA .safetensors (default: random kohya LoRA, or the tiny one)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("gpu_matrix_out"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.size = args.size or (64 if args.tiny else 512)
    env = detect_env(device)
    what = "tiny checkpoint" if args.tiny else args.model or "FLUX.1-dev architecture, random weights"
    result = {
        "meta": {
            "what": what,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "size": args.size,
            "steps": args.steps,
            "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        },
        "rows": [],
    }
    for offload, quantize, fast in combinations():
        name = label(offload, quantize, fast)
        print(f"{name}: running", flush=True)
        try:
            row = run(offload, quantize, fast, args, device, dtype, env, log=lambda m: print("  " + m, flush=True))
        except Exception as exc:  # one broken combination must not lose the others
            traceback.print_exc()
            row = {"combination": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        free(device)
        result["rows"].append(row)
        print(f"  {json.dumps({k: v for k, v in row.items() if k != 'offload_plan'}, default=str)}", flush=True)
        write(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
