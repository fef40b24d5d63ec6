"""Pixels of each weight tier against the unquantized run: PSNR, weight bytes and time per image.

For each model (default: the tiny random-weight checkpoint and the shipped demo model, which draws real shapes), the
same prompts, seeds and size are generated once per tier — the transformer in ``none | 8bit | nf4 | fp8``, then the
T5 encoder in ``8bit | nf4 | fp8`` (transformer unquantized) — with the model's default LoRA at strength 1 and at 0.
PSNR (dB, 8-bit pixels, over all images of a row) is against the ``none`` row of the same model and strength: on the
CPU that is the float32 run; on a GPU the pipeline dtype is bf16 and so is the reference. ``inf``: bitwise equal.
The byte columns are ``offload.module_bytes`` of the transformer and T5 as loaded, the LoRA's adapter factors
included (they stay in the file's dtype on quantized layers).

    OMP_NUM_THREADS=2 python benchmarks/bench_tier_pixels.py [--models tiny demo] [--device cpu] [--steps 8]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

PROMPTS = (
    "v3ct0r style, simple vector art, a large red heart in the center on a white background",
    "v3ct0r style, simple vector art, a blue circle on a yellow background",
    "v3ct0r style, simple vector art, a green triangle on a white background",
)
SIZES = {"tiny": (64, 64), "demo": (128, 128)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run(model: str, device: str, steps: int, seeds: int, quantize: str, quantize_text: str):
    from flux_vector import FluxVectorPipeline
    from flux_vector.offload import module_bytes

    pipe = FluxVectorPipeline.from_pretrained(
        model, quantize=quantize, quantize_text=quantize_text, device=device, log=lambda *_: None
    )
    width, height = SIZES.get(model, (512, 512))
    images: dict[float, list[np.ndarray]] = {}
    started = time.perf_counter()
    count = 0
    for strength in (1.0, 0.0):
        images[strength] = []
        for prompt in PROMPTS:
            for seed in range(seeds):
                result = pipe(
                    prompt, width=width, height=height, steps=steps, seed=seed, lora_strength=strength, progress=False
                )
                images[strength].append(np.asarray(result.image))
                count += 1
    seconds = (time.perf_counter() - started) / count
    sizes = {"transformer": module_bytes(pipe.transformer), "t5": module_bytes(pipe.text_encoder_2)}
    return images, sizes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    from flux_vector.quantize import QUANTIZE_CHOICES, human_bytes

    rows = [(t, "none") for t in QUANTIZE_CHOICES] + [("none", t) for t in QUANTIZE_CHOICES if t != "none"]
    print("| model | quantize | quantize_text | PSNR dB, LoRA 1 | PSNR dB, LoRA 0 | transformer | T5 | s/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        reference = None
        for quantize, quantize_text in rows:
            images, sizes, seconds = run(model, args.device, args.steps, args.seeds, quantize, quantize_text)
            if reference is None:
                reference = images
            scores = [psnr(np.stack(images[s]), np.stack(reference[s])) for s in (1.0, 0.0)]
            print(
                f"| {model} | {quantize} | {quantize_text} | {scores[0]:.1f} | {scores[1]:.1f} | "
                f"{human_bytes(sizes['transformer'])} | {human_bytes(sizes['t5'])} | {seconds:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
