"""Does the shipped demo model draw what its prompt says? Measured over 100 held-apart prompt combinations.

The prompts are ``flux_vector.demo.shapes.held_apart()``: (colour, shape, position) triples that never appear in the
training data, each with its own size, background and caption template, in the users' style. For each one, through
the same ``FluxVectorPipeline.from_pretrained("demo")`` every entry point uses (seed = prompt index, the hosted
defaults otherwise, 1:1 -> 128x128):

* base: the plain caption at LoRA strength 0 -> dominant foreground colour == the named colour? shape classifier
  (``demo.measure.classify_shape``, image moments) == the named shape?
* style: "v3ct0r style, " + caption at strength 0 and at strength 1 -> does the outline-dark pixel fraction rise?
  (black shapes are left out: their fill is as dark as the outline); colour and shape at strength 1 too.
* trigger: the plain caption (no "v3ct0r") at strength 1 against "v3ct0r style, " + caption at strength 1 -> is the
  outline the trigger's doing (as with the real Simple Vector LoRA) or the LoRA's whatever the prompt says? The
  outline-dark fraction without the trigger, and the share of prompts where the trigger adds at least 1 % of the
  image in outline-dark pixels.
* sanity: background purity, foreground area against the rendered truth's, centroid against the named position,
  and the SVG (``vectorize.image_to_svg``) sizes and path counts.

Targets (issue #18): colour >= 90 %, shape >= 70 %, outline effect >= 90 %; (issue #25) trigger effect >= 90 %.
Not a timed test; ~3-5 min on 2 CPUs.
Usage: ``OMP_NUM_THREADS=2 python benchmarks/eval_demo_model.py [--out docs/demo_training/eval.json]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo_training" / "eval.json")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--trigger-only",
        action="store_true",
        help="only the trigger figures (2 pictures per prompt, the black ones skipped): the LoRA's word, measured fast",
    )
    args = parser.parse_args()
    if args.trigger_only:
        trigger_only(args)
        return

    from flux_vector.demo.measure import (
        background_purity,
        classify_shape,
        dark_fraction,
        dominant_colour,
        foreground_mask,
    )
    from flux_vector.demo.shapes import POSITIONS, held_apart, render
    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.request import parse_request
    from flux_vector.vectorize import image_to_svg

    pipe = FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)
    scenes = held_apart()[: args.count]
    rows = []
    started = time.perf_counter()

    def draw(prompt: str, strength: float, seed: int):
        request = parse_request(
            {"prompt": prompt, "aspect_ratio": "1:1", "lora_strength": strength, "seed": seed, "steps": args.steps}
        )
        return pipe.generate(request, progress=False).image

    for i, scene in enumerate(scenes):
        base = draw(scene.caption(), 0.0, i)
        styled0 = draw(scene.caption(style=True), 0.0, i)
        styled1 = draw(scene.caption(style=True), 1.0, i)
        plain1 = draw(scene.caption(), 1.0, i)
        truth = render(scene, 128, 128)
        mask, truth_mask = foreground_mask(base), foreground_mask(truth)
        ys, xs = np.nonzero(mask)
        fx, fy = POSITIONS[scene.position]
        centre_error = float(np.hypot(xs.mean() / 128 - fx, ys.mean() / 128 - fy)) if len(xs) else float("nan")
        svg = image_to_svg(base)
        rows.append(
            {
                "prompt": scene.caption(),
                "colour_ok": dominant_colour(base) == scene.colour,
                "shape_ok": classify_shape(base) == scene.shape,
                "styled_colour_ok": dominant_colour(styled1, ignore_dark=True) == scene.colour,
                "styled_shape_ok": classify_shape(styled1) == scene.shape,
                "dark_0": dark_fraction(styled0),
                "dark_1": dark_fraction(styled1),
                "dark_1_no_trigger": dark_fraction(plain1),
                "outline_counted": scene.colour != "black",
                "background_purity": background_purity(base, scene.background),
                "area_ratio": float(mask.sum() / max(1, truth_mask.sum())),
                "centre_error": centre_error,
                "svg_bytes": len(svg.encode()),
                "svg_paths": svg.count("<path"),
            }
        )
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{len(scenes)} prompts, {time.perf_counter() - started:.0f} s", flush=True)

    def pct(key, rows=rows):
        return 100.0 * float(np.mean([r[key] for r in rows]))

    counted = [r for r in rows if r["outline_counted"]]
    outline = [r["dark_1"] > r["dark_0"] for r in counted]
    summary = {
        "prompts": len(rows),
        "steps": args.steps,
        "colour_pct": pct("colour_ok"),
        "shape_pct": pct("shape_ok"),
        "outline_effect_pct": 100.0 * float(np.mean(outline)),
        "outline_prompts": len(counted),
        "dark_fraction_mean_strength_0": float(np.mean([r["dark_0"] for r in counted])),
        "dark_fraction_mean_strength_1": float(np.mean([r["dark_1"] for r in counted])),
        "trigger_effect_pct": 100.0 * float(np.mean([r["dark_1"] - r["dark_1_no_trigger"] >= 0.01 for r in counted])),
        "dark_fraction_mean_strength_1_no_trigger": float(np.mean([r["dark_1_no_trigger"] for r in counted])),
        "styled_colour_pct": pct("styled_colour_ok"),
        "styled_shape_pct": pct("styled_shape_ok"),
        "background_purity_mean": float(np.mean([r["background_purity"] for r in rows])),
        "area_ratio_median": float(np.median([r["area_ratio"] for r in rows])),
        "centre_error_median": float(np.nanmedian([r["centre_error"] for r in rows])),
        "centre_within_0.1_pct": 100.0 * float(np.mean([r["centre_error"] < 0.1 for r in rows])),
        "svg_bytes_median": float(np.median([r["svg_bytes"] for r in rows])),
        "svg_bytes_max": int(max(r["svg_bytes"] for r in rows)),
        "svg_paths_median": float(np.median([r["svg_paths"] for r in rows])),
        "svg_paths_max": int(max(r["svg_paths"] for r in rows)),
        "seconds": time.perf_counter() - started,
    }
    targets = {"colour_pct": 90.0, "shape_pct": 70.0, "outline_effect_pct": 90.0, "trigger_effect_pct": 90.0}
    for key, value in summary.items():
        target = (
            f"   (target >= {targets[key]:.0f}: {'MET' if value >= targets[key] else 'NOT MET'})"
            if key in targets
            else ""
        )
        print(f"{key:32s} {value:10.3f}{target}" if isinstance(value, float) else f"{key:32s} {value:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


def trigger_only(args: argparse.Namespace) -> None:
    """The outline-dark fraction at LoRA strength 1 with and without "v3ct0r style, " in front of each held-apart
    caption (same seed), over the first ``--count`` prompts whose shape is not black."""
    from flux_vector.demo.measure import dark_fraction
    from flux_vector.demo.shapes import held_apart
    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.request import parse_request

    pipe = FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)
    started = time.perf_counter()
    rows = []
    for i, scene in enumerate(held_apart()):
        if scene.colour == "black":
            continue
        dark = {}
        for key, prompt in (("dark_1", scene.caption(style=True)), ("dark_1_no_trigger", scene.caption())):
            request = parse_request(
                {"prompt": prompt, "aspect_ratio": "1:1", "lora_strength": 1.0, "seed": i, "steps": args.steps}
            )
            dark[key] = dark_fraction(pipe.generate(request, progress=False).image)
        rows.append({"prompt": scene.caption(), **dark})
        print(f"{len(rows)}/{args.count} {dark['dark_1']:.4f} {dark['dark_1_no_trigger']:.4f}", flush=True)
        if len(rows) == args.count:
            break
    summary = {
        "prompts": len(rows),
        "steps": args.steps,
        "trigger_effect_pct": 100.0 * float(np.mean([r["dark_1"] - r["dark_1_no_trigger"] >= 0.01 for r in rows])),
        "dark_fraction_mean_strength_1": float(np.mean([r["dark_1"] for r in rows])),
        "dark_fraction_mean_strength_1_no_trigger": float(np.mean([r["dark_1_no_trigger"] for r in rows])),
        "seconds": time.perf_counter() - started,
    }
    for key, value in summary.items():
        print(f"{key:42s} {value:10.4f}" if isinstance(value, float) else f"{key:42s} {value:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
