#!/usr/bin/env python
"""Prompt encoding, ComfyUI's way (ours) vs diffusers' FluxPipeline.encode_prompt, and what the T5 length costs the
transformer: one step at 1024x1024 with 256 vs 512 text tokens.

The encoders are the reference folder's (tests/data/comfy_e2e/tiny_flux: the real FLUX.1-dev tokenizers, tiny
encoders), so tokenization is real and the encoder work is small: this measures what the new path adds (weight
parsing, per-piece tokenization, the empty-prompt pass of weighted prompts) and what the shorter T5 sequence saves.
``--real-size`` runs the step-time part on FLUX.1-dev's real transformer with random weights (a GPU).

    python benchmarks/bench_prompt.py [--repeats 20] [--real-size] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
REFERENCE = ROOT / "tests" / "data" / "comfy_e2e"

from bench_pipeline import timed  # noqa: E402

from flux_vector.pipeline import FluxVectorPipeline, default_device, default_dtype  # noqa: E402


def prompts() -> dict[str, str]:
    entries = {
        e["id"]: e["text"] for e in json.loads((REFERENCE / "golden.json").read_text())["tokenization_and_conditioning"]
    }
    return {name: entries[name] for name in ("seed", "weights_basic", "long120", "long600")}


def median_s(fn, repeats: int) -> float:
    return statistics.median(timed(fn, repeats))


def encode_times(pipe: FluxVectorPipeline, repeats: int) -> list[dict]:
    rows = []
    for name, text in prompts().items():

        def ours(text=text):
            pipe.prompt_cache.entries.clear()
            return pipe.encode_prompt(text)

        def diffusers(text=text):
            return pipe._diffusers.encode_prompt(
                prompt=text, prompt_2=None, device=pipe.device, max_sequence_length=512
            )

        ours(), diffusers()  # warm-up
        t_ours, t_diffusers = median_s(ours, repeats), median_s(diffusers, repeats)
        rows.append(
            {
                "prompt": name,
                "t5_tokens_ours": ours()[0].shape[1],
                "t5_tokens_diffusers": 512,
                "ours_ms": 1e3 * t_ours,
                "diffusers_ms": 1e3 * t_diffusers,
                "ratio": t_ours / t_diffusers,
            }
        )
    return rows


def step_times(transformer, pipe_like: FluxVectorPipeline, repeats: int, size: int = 1024) -> dict:
    """One transformer call at ``size``x``size`` with a random T5 sequence of 256 and of 512 tokens."""
    device, dtype = pipe_like.device, pipe_like.dtype
    width = transformer.config.joint_attention_dim
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, device=device, dtype=dtype)
    x = torch.randn(1, 16, size // 8, size // 8, device=device)
    sigma = torch.tensor([0.5], device=device)
    calls = {}
    for tokens in (256, 512):
        t5 = torch.randn(1, tokens, width, device=device, dtype=dtype)
        calls[tokens] = pipe_like.velocity_model(t5, pooled, 3.5, size, size)
        calls[tokens](x, sigma)  # warm-up
    times: dict[int, list[float]] = {256: [], 512: []}
    for _ in range(repeats):  # interleaved, so that machine noise hits both lengths alike
        for tokens, velocity in calls.items():
            times[tokens] += timed(lambda velocity=velocity: velocity(x, sigma), 1)
    out = {f"step_{tokens}_ms": 1e3 * statistics.median(t) for tokens, t in times.items()}
    out["ratio_256_over_512"] = out["step_256_ms"] / out["step_512_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--real-size", action="store_true", help="step times on FLUX.1-dev's size, random weights")
    parser.add_argument("--json")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # diffusers' truncation notices for the long prompt, on every repeat
    transformers_logging.set_verbosity_error()
    device = default_device()
    pipe = FluxVectorPipeline.from_pretrained(
        str(REFERENCE / "tiny_flux"), lora=None, device=device, dtype=torch.float32, log=lambda *_: None
    )
    result = {"device": str(device), "threads": torch.get_num_threads()}
    with torch.inference_mode():
        result["encode"] = encode_times(pipe, args.repeats)
        if args.real_size:
            from components import real_size_random

            from flux_vector.offload import OffloadChoice

            dtype = default_dtype(device)
            parts = real_size_random(device, dtype)
            step_pipe = FluxVectorPipeline(
                **parts, device=device, dtype=dtype, offload=OffloadChoice("none", device, "bench")
            )
        else:
            step_pipe = pipe
        result["step"] = {
            "model": "real-size random" if args.real_size else "reference tiny",
            "size": 1024,
            **step_times(step_pipe.transformer, step_pipe, args.step_repeats),
        }

    print(f"prompt encoding on {device}, {result['threads']} threads, median of {args.repeats} (cache cleared each)")
    print("  prompt          T5 tokens ours/diffusers   ours ms   diffusers ms   ratio")
    for row in result["encode"]:
        print(
            f"  {row['prompt']:<14}  {row['t5_tokens_ours']:>4} / {row['t5_tokens_diffusers']:<4}             "
            f"{row['ours_ms']:7.2f}   {row['diffusers_ms']:12.2f}   {row['ratio']:.2f}"
        )
    step = result["step"]
    print(
        f"transformer step at 1024x1024 ({step['model']}, median of {args.step_repeats}): "
        f"256 tokens {step['step_256_ms']:.1f} ms, 512 tokens {step['step_512_ms']:.1f} ms, "
        f"ratio {step['ratio_256_over_512']:.3f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
