#!/usr/bin/env python
"""FluxVectorPipeline vs plain diffusers FluxPipeline on the same components, in one process.

Both run the same steps at the same size (euler/simple, guidance 3.5, cfg 1); what differs is our loop (ComfyUI
sigmas, unpacked latents, the CFG denoiser) and, with --lora, the runtime LoRA adapter. Reports seconds per image
and the ratio ours / diffusers (1.00 = no overhead).

    python benchmarks/bench_pipeline.py                      # tiny checkpoint on CPU
    python benchmarks/bench_pipeline.py --real-size          # FLUX.1-dev architecture, random weights (GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flux_vector.offload import OffloadChoice
from flux_vector.pipeline import FluxVectorPipeline, default_device, default_dtype


def build(args) -> tuple[FluxVectorPipeline, dict]:
    device = default_device()
    dtype = default_dtype(device)
    if args.real_size:
        from components import real_size_random

        parts = real_size_random(device, dtype)
        pipe = FluxVectorPipeline(**parts, device=device, dtype=dtype, offload=OffloadChoice("none", device, "bench"))
    else:
        pipe = FluxVectorPipeline.from_pretrained("tiny", lora=None, device=device, log=lambda *_: None)
    if args.lora:
        from flux_vector.lora import apply_lora, load_lora_file, parse_lora
        from flux_vector.tiny import KOHYA_LORA, tiny_checkpoint_dir

        if args.real_size:
            raise SystemExit("--lora with --real-size: pass a real LoRA file with --lora-file")
        patches = parse_lora(load_lora_file(tiny_checkpoint_dir() / KOHYA_LORA), pipe.transformer)
        pipe.lora = apply_lora(patches, strength=1.0)
    return pipe, {"device": str(device), "dtype": str(dtype)}


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-size", action="store_true", help="FLUX.1-dev architecture with random weights")
    parser.add_argument("--lora", action="store_true", help="our pipeline with the tiny LoRA as a runtime adapter")
    parser.add_argument("--size", type=int, default=None, help="image side (default 256 tiny, 1024 real size)")
    parser.add_argument("--steps", type=int, default=None, help="default 20 tiny, 25 real size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    size = args.size or (1024 if args.real_size else 256)
    steps = args.steps or (25 if args.real_size else 20)
    pipe, info = build(args)
    prompt = "v3ct0r style, simple vector art, a fox"

    def ours():
        pipe(
            prompt,
            width=size,
            height=size,
            steps=steps,
            seed=1,
            progress=False,
            lora_strength=1.0 if pipe.lora is not None else None,
        )

    def ours_uncached():
        pipe.prompt_cache.entries.clear()
        ours()

    def plain():
        pipe._diffusers(
            prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(1),
            max_sequence_length=512,
        )

    with torch.inference_mode():
        ours(), plain()  # warm-up, and the prompt enters our cache as it would in a server
        pipe._diffusers.set_progress_bar_config(disable=True)
        # interleave so that machine noise hits both alike
        t_ours, t_uncached, t_plain = [], [], []
        for _ in range(args.repeats):
            t_ours += timed(ours, 1)
            t_uncached += timed(ours_uncached, 1)
            t_plain += timed(plain, 1)
    result = {
        **info,
        "size": size,
        "steps": steps,
        "lora": args.lora,
        "real_size": args.real_size,
        "ours_s": statistics.median(t_ours),
        "ours_uncached_s": statistics.median(t_uncached),
        "diffusers_s": statistics.median(t_plain),
        "threads": torch.get_num_threads(),
    }
    result["ratio"] = result["ours_s"] / result["diffusers_s"]
    result["ratio_uncached"] = result["ours_uncached_s"] / result["diffusers_s"]
    print(
        f"{'real-size' if args.real_size else 'tiny'} {size}x{size}, {steps} steps, {info['device']} {info['dtype']}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}{', LoRA adapter' if args.lora else ''}"
    )
    print(f"  diffusers FluxPipeline:            {result['diffusers_s']:.3f} s/image")
    print(
        f"  flux_vector, prompt re-encoded:    {result['ours_uncached_s']:.3f} s/image   "
        f"ratio {result['ratio_uncached']:.3f}"
    )
    print(f"  flux_vector, prompt cached:        {result['ours_s']:.3f} s/image   ratio {result['ratio']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
