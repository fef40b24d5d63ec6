"""Write the outlined demo images that tests/test_vectorize_outline.py traces: the demo model's "v3ct0r style"
pictures (LoRA strength 1, 20 steps), small PNGs in tests/data/outlined_demo/.

The Quickstart heart (the README's first command, hosted defaults: 2:3, seed 6652105) and the first ``--count``
held-apart evaluation prompts that are not black (a black fill is as dark as the outline), alternately 1:1 and 2:3,
seed = the prompt's index. The files in tests/data/outlined_demo/ were made with the demo LoRA shipped before the
trigger fix (it drew the outline whatever the prompt said; with the trigger, as here, both LoRAs draw it), except
``quickstart-heart.png``: the same command with today's LoRA (the earlier one's heart is
``quickstart-heart-first-lora.png``, the picture whose SVG lost its outline in issue 25).

Usage: ``python scripts/make_outlined_samples.py [--count 15] [--out tests/data/outlined_demo]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_PROMPT = "v3ct0r style, simple vector art, a large red heart in the center on a white background"
QUICKSTART_SEED = 6652105


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "outlined_demo")
    args = parser.parse_args()

    from flux_vector.demo.shapes import held_apart
    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.request import parse_request

    pipe = FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [("quickstart-heart", {"prompt": QUICKSTART_PROMPT, "seed": QUICKSTART_SEED})]
    scenes = [(i, s) for i, s in enumerate(held_apart()) if s.colour != "black"][: args.count]
    for n, (i, scene) in enumerate(scenes):
        ratio = "1:1" if n % 2 == 0 else "2:3"
        jobs.append((f"held{i:02d}", {"prompt": scene.caption(style=True), "seed": i, "aspect_ratio": ratio}))
    for name, params in jobs:
        request = parse_request({**params, "lora_strength": 1.0, "steps": 20})
        pipe.generate(request, progress=False).image.save(args.out / f"{name}.png", optimize=True)
        print(name, params["prompt"])


if __name__ == "__main__":
    main()
