"""The README's grid of demo-model outputs: prompts (rows) x LoRA strength -1, 0, 1, 2 (columns).

Every image goes through ``FluxVectorPipeline.from_pretrained("demo")`` with the hosted defaults (20 steps euler/
simple, seed 6652105) at 1:1 (128x128 on the demo model), the prompt with the LoRA's trigger "v3ct0r style" in front.
Usage: ``python scripts/make_demo_grid.py [--out docs/demo_grid.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = (
    "v3ct0r style, simple vector art, a red star on a white background",
    "v3ct0r style, simple vector art, a large blue circle on the left on a cream background",
    "v3ct0r style, a small yellow heart icon at the top, clip art, light blue background",
    "v3ct0r style, green triangle in the center, simple vector art, flat colors, white background",
    "v3ct0r style, simple vector art, a purple diamond and an orange square, light grey background",
    "v3ct0r style, simple vector art, a pink cross on the right on a white background",
)
STRENGTHS = (-1.0, 0.0, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo_grid.png")
    args = parser.parse_args()
    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.request import parse_request

    pipe = FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)
    cell, label_w, head_h, pad = 128, 330, 22, 4
    grid = Image.new("RGB", (label_w + len(STRENGTHS) * (cell + pad), head_h + len(PROMPTS) * (cell + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for j, strength in enumerate(STRENGTHS):
        draw.text((label_w + j * (cell + pad) + 30, 5), f"LoRA {strength:+g}", fill="black")
    for i, prompt in enumerate(PROMPTS):
        y = head_h + i * (cell + pad)
        words, line, lines = prompt.split(), "", []
        for word in words:
            if len(line) + len(word) > 50:
                lines.append(line)
                line = ""
            line += word + " "
        lines.append(line)
        draw.multiline_text((6, y + 40), "\n".join(lines), fill="black", spacing=3)
        for j, strength in enumerate(STRENGTHS):
            request = parse_request({"prompt": prompt, "aspect_ratio": "1:1", "lora_strength": strength})
            image = pipe.generate(request, progress=False).image
            grid.paste(image, (label_w + j * (cell + pad), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
    main()
