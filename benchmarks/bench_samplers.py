#!/usr/bin/env python
"""Sampler loop overhead at the 1024x1024 latent [1,16,128,128], for every sampler name.

Two modes:
* ``--model-ms 0`` (default): a zero-cost model (a preallocated zero velocity). What is timed is the sampler's own
  tensor math, noise draws (CPU generator / Brownian tree) and bookkeeping; reported as ms/step and x euler.
* ``--model-ms 120``: a simulated model that holds each evaluation for 120 ms without using the CPU (``time.sleep``,
  as a GPU-bound step leaves the host idle). Reported: wall time / model time, where model time is
  evaluations x model-ms. 1.00 means the model never waits for the sampler; the goal is <= 1.05.
  With ``--device cuda`` the latent lives on the GPU and the model is a GPU kernel that spins for model-ms
  (``torch.cuda._sleep``), so any host-device sync in the sampler loop shows up as lost time.

For scale: one real FLUX.1-dev step is ~125 TFLOP (~120-250 ms on an H100).

    python benchmarks/bench_samplers.py [--steps 20] [--scheduler simple] [--repeats 3] [--json out.json]
    python benchmarks/bench_samplers.py --model-ms 120 [--repeats 1] [--samplers dpmpp_sde,euler] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from flux_vector.sampling import SAMPLER_NAMES, ksampler


def cuda_cycles_per_ms() -> float:
    """How many ``torch.cuda._sleep`` cycles make a millisecond on this GPU (timed with CUDA events)."""
    cycles = 50_000_000
    torch.cuda._sleep(cycles)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


def make_model(latent: torch.Tensor, model_ms: float, evals: list[int]):
    zero = torch.zeros_like(latent)
    spin = int(model_ms * cuda_cycles_per_ms()) if latent.device.type == "cuda" and model_ms > 0 else 0

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        evals[0] += 1
        if spin:
            torch.cuda._sleep(spin)  # the GPU is busy, the host is free to run ahead
        elif model_ms > 0:
            time.sleep(model_ms / 1000)
        return zero

    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampler(name: str, model, evals: list[int], args, latent: torch.Tensor) -> dict:
    best, best_evals = float("inf"), 0
    for _ in range(args.repeats):
        evals[0] = 0
        synchronize(latent.device)
        started = time.perf_counter()
        ksampler(
            model, model, sampler_name=name, scheduler=args.scheduler, steps=args.steps, seed=6652105, latent=latent
        )
        synchronize(latent.device)
        elapsed = time.perf_counter() - started
        if elapsed < best:
            best, best_evals = elapsed, evals[0]
    row = {"sampler": name, "seconds": best, "ms_per_step": 1000 * best / args.steps, "evals": best_evals}
    if args.model_ms > 0:
        row["model_seconds"] = best_evals * args.model_ms / 1000
        row["wall_over_model"] = best / row["model_seconds"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="simple")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent is size/8)")
    parser.add_argument("--model-ms", type=float, default=0.0, help="simulated model time per evaluation (sleeps)")
    parser.add_argument("--samplers", default="all", help="comma separated names (default: all)")
    parser.add_argument("--device", default="cpu", help="where the latent lives (cuda: the model is a GPU kernel)")
    parser.add_argument("--json")
    args = parser.parse_args()

    latent = torch.zeros(1, 16, args.size // 8, args.size // 8, device=args.device)
    evals = [0]
    names = list(SAMPLER_NAMES) if args.samplers == "all" else args.samplers.split(",")
    warm = make_model(latent, 0.0, evals)
    for name in ("euler", "euler_ancestral", "dpmpp_2m_sde", "lms"):  # the allocator, lazy imports (torchsde, scipy)
        ksampler(warm, warm, sampler_name=name, scheduler=args.scheduler, steps=args.steps, seed=1, latent=latent)
    model = make_model(latent, args.model_ms, evals)
    rows = [time_sampler(name, model, evals, args, latent) for name in names]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), latent {list(latent.shape)} on {latent.device}, "
        f"{args.steps} steps "
        f"{args.scheduler}, model {args.model_ms:g} ms/eval, best of {args.repeats}"
    )
    if args.model_ms > 0:
        print(f"{'sampler':24s} {'ms/step':>9s} {'evals':>6s} {'wall/model':>10s}")
        for row in rows:
            print(f"{row['sampler']:24s} {row['ms_per_step']:9.1f} {row['evals']:6d} {row['wall_over_model']:10.3f}")
        print(f"worst wall/model: {max(r['wall_over_model'] for r in rows):.3f}")
    else:
        euler = next((r["ms_per_step"] for r in rows if r["sampler"] == "euler"), rows[0]["ms_per_step"])
        print(f"{'sampler':24s} {'ms/step':>9s} {'x euler':>8s} {'evals':>6s}")
        for row in rows:
            row["ratio_to_euler"] = row["ms_per_step"] / euler
            print(f"{row['sampler']:24s} {row['ms_per_step']:9.2f} {row['ratio_to_euler']:8.2f} {row['evals']:6d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "steps": args.steps,
                    "scheduler": args.scheduler,
                    "model_ms": args.model_ms,
                    "device": str(latent.device),
                    "rows": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
