#!/usr/bin/env python
"""Speed and memory of every mode vs plain diffusers, in one process, on one device: JSON + markdown + PNG chart.

Modes (``--modes``, comma separated; default: all that apply):
  diffusers       plain diffusers FluxPipeline, eager, no LoRA (the baseline; the fastest plain-diffusers setup)
  ours            FluxVectorPipeline, eager, the LoRA as a runtime adapter at strength 1 (the reference latent)
  ours-fused      ours with the LoRA fused into the weights (what serving does): also the strength-switch cost
  ours-512tok     ours with the T5 prompt padded to 512 tokens (diffusers' length) instead of ComfyUI's 256
  qkv             ours + fused QKV projections only
  attention       ours + the best attention backend for the device only
  compile         ours + regional torch.compile only
  fast            ours + fused QKV + attention + regional compile (bf16)
  fast-fp8        fast + torchao float8 dynamic quantization (sm89+ with torchao)
  fast-cudagraphs fast(-fp8 where available) + CUDA graphs (compile mode reduce-overhead)
  step-cache      fast(-fp8 where available) + first-block step cache: APPROXIMATE, its error is in the table
  8bit            ours with the transformer in bitsandbytes int8 (memory mode)
  8bit-offload    8bit + model CPU offload of the text encoders and VAE (the int8 transformer stays on the GPU)
  offload-model / offload-group / offload-sequential   ours bf16 with that offload (memory modes; sequential
                  needs CUDA, model and group run on the CPU too: the hooks are exercised, nothing moves)

Each mode builds its components afresh (same seed: same random weights), loads the LoRA, applies the mode, runs one
warm-up generation (compiles, where the mode compiles) and ``--repeats`` timed ones, end to end: text encoding
(the prompt cache is cleared each time), ``--steps`` euler/simple steps, VAE decode. Reported per mode: seconds per
image, ms per step, text-encode and decode ms, peak GPU memory, load and compile seconds, speedup vs diffusers, the
relative error of the final latent vs ``ours`` (same seed and LoRA), and for compiled modes the cost of a LoRA
strength switch and whether it recompiled, for ours-fused the cost of a fused strength switch (a rebuild from W0)
and where W0 is kept, and the peak GPU memory after each generation (a leak shows as growth). A mode that cannot
run here is listed as skipped with the reason.
``--vram-limit-gib`` caps each mode's GPU memory once its components are built and placed (building the random
weights on the GPU would not fit under the cap), and the peak memory is counted from there.

    python benchmarks/bench_gpu.py --tiny --steps 2 --size 64 --out /tmp/bench   # CPU smoke test (tiny model)
    python benchmarks/bench_gpu.py --out bench_out                                # GPU: FLUX.1-dev size, random
    python benchmarks/bench_gpu.py --model /path/to/FLUX.1-dev --lora-file lora.safetensors --out bench_out
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_vector.fast import choose_fast_plan, compile_cache_dir, detect_env
from flux_vector.offload import OffloadChoice
from flux_vector.pipeline import FluxVectorPipeline

PROMPT = "v3ct0r style, simple vector art, a red fox sitting in a meadow, flat colors"
ALL_MODES = (
    "diffusers",
    "ours",
    "ours-512tok",
    "ours-fused",
    "qkv",
    "attention",
    "compile",
    "fast",
    "fast-fp8",
    "fast-cudagraphs",
    "step-cache",
    "8bit",
    "8bit-offload",
    "offload-model",
    "offload-group",
    "offload-sequential",
)
SPEED_MODES = ("diffusers", "ours", "qkv", "attention", "compile", "fast", "fast-fp8")
MEMORY_MODES = ("ours", "8bit", "8bit-offload", "offload-model", "offload-group", "offload-sequential")
TEXT_TOKENS = {"ours-512tok": 512}  # T5 padding per mode; otherwise the pipeline's (ComfyUI's: at least 256)
GiB = 1024**3


# ----------------------------------------------------------------------------------------------- components


_LOADED: dict = {}  # (device, dtype) -> the tiny checkpoint's components as read from disk, copied for each mode


def build_parts(args, device: torch.device, dtype: torch.dtype) -> dict:
    """Fresh components, the same weights every time: seeded random, or read from disk (the tiny checkpoint once,
    then a deep copy per mode: each mode mutates its own)."""
    torch.manual_seed(0)
    if args.model:
        return _load_parts(args, device, dtype)
    if args.tiny:  # read once (the rehearsal builds it for every mode), a deep copy per mode
        import copy

        key = (str(device), str(dtype))
        if key not in _LOADED:
            _LOADED[key] = _load_parts(args, device, dtype)
        loaded = _LOADED[key]
        return {name: part if name.startswith("tokenizer") else copy.deepcopy(part) for name, part in loaded.items()}
    from components import real_size_random

    return real_size_random(device, dtype)


def _load_parts(args, device: torch.device, dtype: torch.dtype) -> dict:
    """The components read from disk (the tiny checkpoint or ``--model``) on ``device``."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from flux_vector.pipeline import resolve_model

    folder = resolve_model("tiny" if args.tiny else args.model)
    kw = {"dtype": dtype}
    parts = dict(
        transformer=FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", **kw),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw),
        text_encoder_2=T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2"),
    )
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[name] = parts[name].to(device).eval()
    return parts


def lora_state_dict(args, transformer) -> dict[str, torch.Tensor]:
    """The LoRA: ``--lora-file``, the tiny checkpoint's kohya LoRA (--tiny), or a random kohya LoRA of
    ``--lora-rank`` over every BFL linear of the model (what a trained FLUX LoRA of that rank costs)."""
    from flux_vector.lora import load_lora_file
    from flux_vector.tiny import KOHYA_LORA, bfl_lora_targets, tiny_checkpoint_dir

    if args.lora_file:
        return load_lora_file(args.lora_file)
    if args.tiny:
        return load_lora_file(tiny_checkpoint_dir() / KOHYA_LORA)
    generator = torch.Generator().manual_seed(1)
    state = {}
    for name, (fan_in, fan_out) in bfl_lora_targets(dict(transformer.config)).items():
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(args.lora_rank, fan_in, generator=generator) * 0.01
        state[f"{key}.lora_up.weight"] = torch.randn(fan_out, args.lora_rank, generator=generator) * 0.01
        state[f"{key}.alpha"] = torch.tensor(float(args.lora_rank))
    return state


# ----------------------------------------------------------------------------------------------- modes


def fast_request(mode: str, env) -> tuple[dict | None, bool]:
    """(fast switches, full plan?) for a mode; None: no fast mode."""
    fp8_ok = env.device_type == "cuda" and env.capability is not None and tuple(env.capability) >= (8, 9)
    fp8_ok = fp8_ok and env.has("torchao")
    return {
        "qkv": ({"fuse_qkv": True}, False),
        "attention": ({"attention": "auto"}, False),
        "compile": ({"compile": True}, False),
        "fast": ({"fp8": False}, True),
        "fast-fp8": ({"fp8": True}, True),
        "fast-cudagraphs": ({"fp8": "auto", "cuda_graphs": True}, True),
        "step-cache": ({"fp8": "auto" if fp8_ok else False, "step_cache": True}, True),
    }.get(mode, (None, False))


def skip_reason(mode: str, device: torch.device, env, args) -> str | None:
    if mode == "offload-sequential" and device.type != "cuda":
        return "sequential offload needs an accelerator (diffusers raises 'requires accelerator' on CPU)"
    if mode in ("8bit", "8bit-offload"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "bitsandbytes is not installed"
    request, full = fast_request(mode, env)
    if request is not None:
        try:
            choose_fast_plan(env, request, full=full, dtype=dtype_for(device, args))
        except ValueError as exc:
            return str(exc)
    return None


def dtype_for(device: torch.device, args) -> torch.dtype:
    return getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if device.type == "cuda" else torch.float32


def make_pipe(mode: str, args, device, dtype, env, log) -> tuple[object, dict]:
    """The pipeline for ``mode`` (the LoRA at strength 1 on ours); info: plan, apply timings."""
    from flux_vector.lora import apply_lora, parse_lora

    parts = build_parts(args, device, dtype)
    if mode == "diffusers":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler config
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxPipeline(scheduler=scheduler, **parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe, {}
    info: dict = {}
    offload = OffloadChoice("none", device, "bench")
    if mode in ("8bit", "8bit-offload"):
        from flux_vector.quantize import quantize_linears_8bit

        info["quantized_linears"] = quantize_linears_8bit(parts["transformer"], device)
    if mode == "8bit-offload":  # what from_pretrained(quantize="8bit", offload="model") does: quantize, then offload
        offload = OffloadChoice("model", device, "bench")
    if mode.startswith("offload-"):
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            parts[name].to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        offload = OffloadChoice(mode.removeprefix("offload-"), device, "bench")
    patches = parse_lora(lora_state_dict(args, parts["transformer"]), parts["transformer"], parts["text_encoder"])
    lora = apply_lora(patches, strength=1.0)
    request, full = fast_request(mode, env)
    plan = None
    if request is not None:  # chosen for the offload mode and applied by the pipeline (weights before offload)
        plan = choose_fast_plan(env, request, full=full, quantized="8bit" in mode, offload=offload.mode, dtype=dtype)
        for line in plan.describe():
            log(f"fast: {line}")
    pipe = FluxVectorPipeline(
        **parts, device=device, dtype=dtype, offload=offload, lora=lora, model_name=mode, fast_plan=plan, log=log
    )
    info["offload_plan"] = pipe.offload_plan
    if plan is not None:
        info["plan"] = plan.as_dict()
        info["plan_summary"] = plan.summary()
        info["apply_s"] = dict(pipe.fast_timings)
    if mode == "ours-fused":
        started = time.perf_counter()
        pipe.lora.fuse()
        sync(device)
        info["fuse_s"] = time.perf_counter() - started
        info["w0_home"] = str(pipe.lora._original_device)
    return pipe, info


def generate(mode: str, pipe, args, device) -> dict:
    """One end-to-end generation; wall seconds and the parts."""
    sync(device)
    started = time.perf_counter()
    if mode == "diffusers":
        marks: list[float] = []

        def on_step(_pipe, _i, _t, kwargs):
            sync(device)
            marks.append(time.perf_counter())
            return kwargs

        pipe(
            PROMPT,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(1),
            max_sequence_length=512,
            callback_on_step_end=on_step,
        )
        sync(device)
        ended = time.perf_counter()
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else 0.0
        # derived from the step-end marks: before the first step ~ encoding (+ latent prep), after the last ~ decode
        return {
            "total_s": ended - started,
            "per_step_s": per_step,
            "encode_s": max(marks[0] - started - per_step, 0),
            "decode_s": ended - marks[-1],
            "latents": None,
        }
    pipe.prompt_cache.entries.clear()  # end to end: the text encoders run every time
    result = pipe(
        PROMPT, width=args.size, height=args.size, steps=args.steps, seed=1, lora_strength=1.0, progress=False
    )
    sync(device)
    total = time.perf_counter() - started
    t = result.timings
    return {
        "total_s": total,
        "per_step_s": t["per_step_s"],
        "encode_s": t["encode_s"],
        "decode_s": t["decode_s"],
        "latents": result.latents,
    }


def fused_strength_switch(pipe, device) -> dict:
    """Switch a fused LoRA's strength three times: each rebuilds every fused weight from W0 (no generation)."""
    switches = []
    for strength in (0.5, -1.0, 1.0):
        sync(device)
        started = time.perf_counter()
        pipe.set_lora_strength(strength)
        sync(device)
        switches.append(time.perf_counter() - started)
    return {"fused_switch_ms": [1000 * s for s in switches], "fused_layers": len(pipe.lora.modules)}


def strength_switch(pipe, args, device) -> dict:
    """Switch the LoRA strength three times on a compiled pipeline: seconds per switch, recompiles (dynamo)."""
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    switches, gens = [], []
    for strength in (0.5, -1.0, 1.0):
        started = time.perf_counter()
        pipe.set_lora_strength(strength)
        sync(device)
        switches.append(time.perf_counter() - started)
        started = time.perf_counter()
        pipe(
            PROMPT, width=args.size, height=args.size, steps=args.steps, seed=1, lora_strength=strength, progress=False
        )
        sync(device)
        gens.append(time.perf_counter() - started)
    return {
        "strength_switch_ms": 1000 * max(switches),
        "recompiles_on_switch": counters["stats"]["unique_graphs"] - graphs_before,
        "generation_after_switch_s": max(gens),
    }


@contextlib.contextmanager
def text_tokens(mode: str):
    """The T5 padding ``mode`` runs with (the prompt packer reads the module constant on each encode)."""
    import flux_vector.prompt.tokens as tokens_module

    if mode not in TEXT_TOKENS:
        yield
        return
    saved = tokens_module.T5_MIN_LENGTH
    tokens_module.T5_MIN_LENGTH = TEXT_TOKENS[mode]
    try:
        yield
    finally:
        tokens_module.T5_MIN_LENGTH = saved


@contextlib.contextmanager
def vram_limit(device: torch.device, limit_gib: float | None):
    """Cap this process's GPU memory at ``limit_gib`` inside the block (None or CPU: no cap)."""
    if not limit_gib or device.type != "cuda":
        yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gib * GiB / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def run_mode(mode: str, args, device, dtype, env, reference: dict, log) -> dict:
    capped = args.vram_limit_gib if device.type == "cuda" else None
    tokens = 512 if mode == "diffusers" else TEXT_TOKENS.get(mode, 256)  # for the bench's short prompt
    row: dict = {"mode": mode, "text_tokens": tokens, "vram_limit_gib": capped}
    free(device)
    started = time.perf_counter()
    pipe, info = make_pipe(mode, args, device, dtype, env, log)
    sync(device)
    row["load_s"] = time.perf_counter() - started
    row.update(info)
    if device.type == "cuda":  # from here: the weights as placed plus what generating needs (not the build)
        torch.cuda.reset_peak_memory_stats(device)
    with vram_limit(device, args.vram_limit_gib), text_tokens(mode):
        row.update(measure(mode, pipe, args, device, reference))
    if device.type == "cuda":
        row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GiB
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GiB
    del pipe
    free(device)
    return row


def measure(mode: str, pipe, args, device, reference: dict) -> dict:
    """A warm-up generation (compiles, where the mode compiles), then ``--repeats`` timed ones."""
    row: dict = {}
    compiled = bool(getattr(pipe, "fast_plan", None) is not None and pipe.fast_plan.compile)
    peaks: list[float] = []

    def generate_and_peak() -> dict:
        run = generate(mode, pipe, args, device)
        if device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated(device) / GiB)
        return run

    first = generate_and_peak()
    runs = [generate_and_peak() for _ in range(args.repeats)]
    if "offload" in mode and "8bit" in mode:
        runs += [generate_and_peak() for _ in range(max(0, 2 - args.repeats))]  # three generations at least
    row["peak_gib_by_generation"] = peaks or None
    pick = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]  # the median run
    row.update({k: v for k, v in pick.items() if k != "latents"})
    row["total_s"] = statistics.median(r["total_s"] for r in runs)
    row["runs_s"] = [r["total_s"] for r in runs]
    row["first_s"] = first["total_s"]
    row["compile_s"] = max(first["total_s"] - row["total_s"], 0.0) if compiled else None
    if mode == "ours":
        reference["latents"] = pick["latents"]
    if pick["latents"] is not None and reference.get("latents") is not None:
        ref = reference["latents"]
        row["rel_error"] = float((pick["latents"] - ref).norm() / ref.norm().clamp_min(1e-12))
    if compiled:
        row.update(strength_switch(pipe, args, device))
    if mode == "ours-fused":
        row.update(fused_strength_switch(pipe, device))
    return row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    try:
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:  # pragma: no cover - best effort
        pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- reports


def fmt(value, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(result: dict) -> str:
    meta = result["meta"]
    base = next((r for r in result["rows"] if r["mode"] == "diffusers" and "total_s" in r), None)
    lines = [
        f"# bench_gpu: {meta['what']}, {meta['size']}x{meta['size']}, {meta['steps']} steps",
        "",
        f"{meta['device_name']} ({meta['device']}, {meta['dtype']}), torch {meta['torch']}, diffusers "
        f"{meta['diffusers']}, median of {meta['repeats']} after one warm-up; LoRA at strength 1 on our modes "
        f"({meta['lora']}); end to end: text encoding (prompt cache cleared), sampling, VAE decode.",
        "",
        "| mode | s/image | ms/step | encode ms | decode ms | peak GPU GiB | load s | compile s | vs diffusers "
        "| rel. err vs ours | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if "total_s" not in r:
            lines.append(f"| {r['mode']} | - | - | - | - | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        speedup = f"{base['total_s'] / r['total_s']:.2f}x" if base else "-"
        notes = r.get("plan_summary", "")
        if "recompiles_on_switch" in r:
            notes += f"; strength switch {r['strength_switch_ms']:.1f} ms, {r['recompiles_on_switch']} recompiles"
        if r["mode"] == "step-cache":
            notes = "APPROXIMATE (skips work on steps); " + notes
        if r.get("text_tokens", 256) != 256:
            notes += f"; {r['text_tokens']} text tokens"
        if r.get("vram_limit_gib"):
            notes += f"; under a {r['vram_limit_gib']:g} GiB cap"
        if r.get("fused_switch_ms"):
            switch = ", ".join(f"{ms:.0f}" for ms in r["fused_switch_ms"])
            notes += f"; fused strength switch {switch} ms ({r['fused_layers']} layers, W0 {r.get('w0_home')})"
        if r.get("peak_gib_by_generation") and len(r["peak_gib_by_generation"]) > 1:
            notes += "; peak by generation " + ", ".join(f"{p:.2f}" for p in r["peak_gib_by_generation"])
        lines.append(
            f"| {r['mode']} | {r['total_s']:.3f} | {1000 * r['per_step_s']:.1f} | {1000 * r['encode_s']:.1f} | "
            f"{1000 * r['decode_s']:.1f} | {fmt(r.get('peak_allocated_gib'))} | {r['load_s']:.1f} | "
            f"{fmt(r.get('compile_s'), '.1f')} | {speedup} | {fmt(r.get('rel_error'), '.2e')} | {notes.strip('; ')} |"
        )
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    """A horizontal bar chart of seconds per image (PIL only: no plotting library needed)."""
    from PIL import Image, ImageDraw

    rows = [r for r in result["rows"] if "total_s" in r]
    base = next((r for r in rows if r["mode"] == "diffusers"), None)
    width, bar_h, left, top = 900, 28, 170, 50
    height = top + bar_h * max(len(rows), 1) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    meta = result["meta"]
    draw.text(
        (10, 10),
        f"seconds per image ({meta['what']}, {meta['size']}x{meta['size']}, {meta['steps']} steps, "
        f"{meta['device_name']})",
        fill="black",
    )
    longest = max((r["total_s"] for r in rows), default=1.0) or 1.0
    scale = (width - left - 170) / longest
    for i, r in enumerate(rows):
        y = top + i * bar_h
        color = (40, 110, 200)  # ours
        if r["mode"] == "diffusers":
            color = (120, 120, 120)
        elif "cache" in r["mode"]:
            color = (230, 140, 40)
        draw.text((10, y + 8), r["mode"], fill="black")
        draw.rectangle([left, y + 4, left + max(1, int(r["total_s"] * scale)), y + bar_h - 4], fill=color)
        label = f"{r['total_s']:.3f} s" + (f"  ({base['total_s'] / r['total_s']:.2f}x)" if base else "")
        draw.text((left + int(r["total_s"] * scale) + 6, y + 8), label, fill="black")
    draw.text(
        (10, height - 25), "grey: plain diffusers; blue: flux_vector; orange: approximate step cache", fill="black"
    )
    image.save(path)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "bench_gpu.md").write_text(markdown(result))
    chart(result, out / "bench_gpu.png")


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint (CPU smoke test)")
    parser.add_argument("--model", help="a diffusers FLUX.1-dev folder (real weights) instead of random weights")
    parser.add_argument("--lora-file", help="a LoRA .safetensors (default: random kohya LoRA, or the tiny one)")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the random LoRA (default 16)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="all", help="comma separated (see the module doc), 'all', 'speed', 'memory'")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--fresh-compile-cache", action="store_true", help="compile cold (a new inductor cache dir)")
    parser.add_argument("--vram-limit-gib", type=float, help="cap this process's GPU memory (e.g. 12: a 12 GB card)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if device.type == "cuda" else torch.float32
    args.size = args.size or (64 if args.tiny else 1024)
    if args.fresh_compile_cache:
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="flux_vector_inductor_")
    named = {"all": ALL_MODES, "speed": SPEED_MODES, "memory": MEMORY_MODES}
    modes = named.get(args.modes) or tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = sorted(set(modes) - set(ALL_MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(ALL_MODES)}")
    env = detect_env(device)
    cache = compile_cache_dir()
    import diffusers

    if args.tiny:
        what = "tiny checkpoint"
    else:
        what = f"FLUX.1-dev weights from {args.model}" if args.model else "FLUX.1-dev architecture, random weights"
    lora = args.lora_file or ("tiny kohya LoRA" if args.tiny else f"random kohya LoRA, rank {args.lora_rank}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    result = {
        "meta": {
            "what": what,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "device_name": device_name,
            "capability": env.capability,
            "available": sorted(env.available),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(),
            "size": args.size,
            "steps": args.steps,
            "repeats": args.repeats,
            "lora": lora,
            "vram_limit_gib": args.vram_limit_gib,
            "compile_cache": cache,
            "compile_cache_was_empty": not (Path(cache).exists() and any(Path(cache).iterdir())),
            "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        },
        "rows": [],
    }
    reference: dict = {}
    for mode in modes:
        reason = skip_reason(mode, device, env, args)
        if reason:
            print(f"{mode}: skipped ({reason})", flush=True)
            result["rows"].append({"mode": mode, "skipped": reason})
            write(result, args.out)
            continue
        print(f"{mode}: running", flush=True)
        try:
            row = run_mode(mode, args, device, dtype, env, reference, log=lambda m: print("  " + m, flush=True))
        except Exception as exc:  # one broken mode must not lose the others' figures
            traceback.print_exc()
            row = {"mode": mode, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        free(device)  # outside the except block: the traceback (and the failed pipeline) is gone by now
        result["rows"].append(row)
        if "total_s" in row:
            compiled = f", compile {row['compile_s']:.1f} s" if row.get("compile_s") is not None else ""
            print(f"  {row['total_s']:.3f} s/image, {1000 * row['per_step_s']:.1f} ms/step{compiled}", flush=True)
        write(result, args.out)  # after every mode: a timeout keeps what finished
    print(markdown(result))
    print(f"wrote {args.out / 'bench_gpu.json'}, bench_gpu.md, bench_gpu.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
