#!/usr/bin/env python
"""Sampler loop overhead: time per step of each hosted sampler name with a zero-cost model, as a ratio to euler.

The model returns a preallocated zero velocity, so what is timed is the sampler's own tensor math, noise draws
(CPU generator / Brownian tree) and bookkeeping at the real 1024x1024 latent size [1,16,128,128] on the CPU.
For scale: one real FLUX.1-dev step is ~125 TFLOP (~0.25 s on an H100).

    python benchmarks/bench_samplers.py [--steps 20] [--scheduler simple] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from flux_vector.sampling import HOSTED_SAMPLER_NAMES, ksampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="simple")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent is size/8)")
    parser.add_argument("--json")
    args = parser.parse_args()

    latent = torch.zeros(1, 16, args.size // 8, args.size // 8)
    zero = torch.zeros_like(latent)
    evals = [0]

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        evals[0] += 1
        return zero

    names = list(HOSTED_SAMPLER_NAMES) + ["deis"]
    for _ in range(3):  # warm the allocator and the lazy imports before anything is timed
        ksampler(model, model, sampler_name="euler", scheduler=args.scheduler, steps=args.steps, seed=1, latent=latent)
    rows = []
    for name in names:
        best = float("inf")
        for _ in range(args.repeats):
            evals[0] = 0
            started = time.perf_counter()
            ksampler(model, model, sampler_name=name, scheduler=args.scheduler, steps=args.steps, seed=6652105,
                     latent=latent)  # fmt: skip
            best = min(best, time.perf_counter() - started)
        rows.append({"sampler": name, "seconds": best, "ms_per_step": 1000 * best / args.steps, "evals": evals[0]})
    euler = next(r for r in rows if r["sampler"] == "euler")["ms_per_step"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {list(latent.shape)}, "
          f"{args.steps} steps {args.scheduler}, best of {args.repeats}")  # fmt: skip
    print(f"{'sampler':22s} {'ms/step':>9s} {'x euler':>8s} {'evals':>6s}")
    for row in rows:
        row["ratio_to_euler"] = row["ms_per_step"] / euler
        print(f"{row['sampler']:22s} {row['ms_per_step']:9.2f} {row['ratio_to_euler']:8.2f} {row['evals']:6d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "scheduler": args.scheduler, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
