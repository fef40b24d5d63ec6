"""The shipped demo model (flux_vector/demo/model): it loads like a real FLUX folder, draws the named colour and
shape, its LoRA switches the outline on when the prompt has the trigger word, and a first `flux-vector generate`
with no weights uses it and says so.

Fast (seconds): 128x128 images from a 2.7M-parameter transformer. The full measurement over 100 held-apart prompts is
benchmarks/eval_demo_model.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flux_vector.demo import DEMO_LORA_FILE, DEMO_MODEL_DIR
from flux_vector.demo.measure import classify_shape, dark_fraction, dominant_colour
from flux_vector.demo.shapes import SHAPES, Scene, held_apart, render, training_scenes
from flux_vector.image_metadata import read_metadata
from flux_vector.models import DEFAULT_LORA, default_model, resolve_lora, resolve_model
from flux_vector.request import parse_request

STEPS = 20


@pytest.fixture(scope="module")
def demo_pipe():
    from flux_vector.pipeline import FluxVectorPipeline

    return FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)


def draw(pipe, prompt: str, strength: float = 0.0, seed: int = 1, **params) -> Image.Image:
    request = parse_request(
        {"prompt": prompt, "aspect_ratio": "1:1", "lora_strength": strength, "seed": seed, "steps": STEPS, **params}
    )
    return pipe.generate(request, progress=False).image


def test_the_demo_folder_is_a_diffusers_flux_folder_with_its_lora():
    assert resolve_model("demo") == DEMO_MODEL_DIR
    assert resolve_lora(DEFAULT_LORA, "demo") == DEMO_MODEL_DIR / DEMO_LORA_FILE
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (DEMO_MODEL_DIR / sub).is_dir(), sub
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.rglob("*") if p.is_file())
    assert size < 24e6, f"the demo model is {size / 1e6:.1f} MB"
    # the tokenizers are FLUX.1-dev's files, byte for byte
    real = Path(__file__).parent / "data" / "comfy_e2e" / "tiny_flux"
    for name in ("tokenizer/vocab.json", "tokenizer_2/tokenizer.json"):
        assert (DEMO_MODEL_DIR / name).read_bytes() == (real / name).read_bytes()


def test_the_folder_loads_through_from_pretrained_like_a_real_one(demo_pipe):
    from flux_vector.pipeline import FluxVectorPipeline

    by_path = FluxVectorPipeline.from_pretrained(str(DEMO_MODEL_DIR), lora="none", log=lambda *_: None)
    assert type(by_path.transformer).__name__ == "FluxTransformer2DModel"
    assert by_path.aspect_sizes == demo_pipe.aspect_sizes  # the size table comes with the folder, not the name
    prompt = "simple vector art, a blue square in the center on a white background"
    assert draw(by_path, prompt).tobytes() == draw(demo_pipe, prompt, strength=0.0).tobytes()


def test_default_model_is_the_demo_when_no_weights_are_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("FLUX_VECTOR_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    lines = []
    assert default_model(log=lines.append) == "demo"
    assert len(lines) == 1 and "demo model" in lines[0] and "NOT FLUX.1-dev" in lines[0]


@pytest.mark.parametrize(
    ("prompt", "colour"),
    [
        ("simple vector art, a red circle in the center on a white background", "red"),
        ("blue square on the left, simple vector art, flat colors, cream background", "blue"),
        ("a large yellow star icon in the center, clip art, white background", "yellow"),
        ("simple vector art, a medium green heart at the bottom on a light blue background", "green"),
        ("simple vector art, a large purple triangle in the center on a light grey background", "purple"),
    ],
)
def test_the_dominant_colour_is_the_named_one(demo_pipe, prompt, colour):
    assert dominant_colour(draw(demo_pipe, prompt)) == colour


def test_the_lora_draws_the_outline_and_strength_zero_does_not(demo_pipe):
    """Summed over a few held-apart prompts (not black: a black fill is as dark as the outline)."""
    scenes = [s for s in held_apart() if s.colour != "black"][:4]
    rises = []
    for i, scene in enumerate(scenes):
        off = dark_fraction(draw(demo_pipe, scene.caption(style=True), 0.0, seed=i))
        on = dark_fraction(draw(demo_pipe, scene.caption(style=True), 1.0, seed=i))
        rises.append(on - off)
    assert all(r > 0 for r in rises), rises
    assert sum(rises) / len(rises) > 0.01, rises  # at least 1 % of the image turns outline-dark on average


def test_the_trigger_word_switches_the_outline_on(demo_pipe):
    """As with the real Simple Vector LoRA, the word does it: at strength 1, "v3ct0r style, ..." draws the thick dark
    outline and the same prompt without the trigger much less (the LoRA shipped before issue 25 drew it either way:
    the two differed by a few grey levels). Same held-apart prompts and seeds as the test above."""
    scenes = [s for s in held_apart() if s.colour != "black"][:4]
    on, off = [], []
    for i, scene in enumerate(scenes):
        on.append(dark_fraction(draw(demo_pipe, scene.caption(style=True), 1.0, seed=i)))
        off.append(dark_fraction(draw(demo_pipe, scene.caption(), 1.0, seed=i)))
    assert all(a - b >= 0.01 for a, b in zip(on, off, strict=True)), (on, off)  # each: >= 1 % of the image
    assert sum(off) <= 0.25 * sum(on), (on, off)


def test_aspect_ratios_map_to_the_demo_sizes_and_width_height_stay_as_given(demo_pipe):
    prompt = "simple vector art, a red star on a white background"
    request = parse_request({"prompt": prompt, "aspect_ratio": "2:3", "steps": 2})
    assert demo_pipe.generate(request, progress=False).image.size == (112, 160)
    request = parse_request({"prompt": prompt, "aspect_ratio": "16:9", "steps": 2})
    assert demo_pipe.generate(request, progress=False).image.size == (160, 96)  # the tie rule: README
    request = parse_request({"prompt": prompt, "width": 64, "height": 96, "steps": 2})
    assert demo_pipe.generate(request, progress=False).image.size == (64, 96)
    assert request.size == (64, 96) and parse_request({"prompt": prompt}).size == (832, 1216)  # the contract


def test_demo_images_trace_to_small_svgs(demo_pipe):
    from flux_vector.vectorize import image_to_svg

    svg = image_to_svg(draw(demo_pipe, "simple vector art, a red circle in the center on a white background"))
    assert svg.count("<path") <= 8 and len(svg.encode()) < 4000, (svg.count("<path"), len(svg))


def test_the_shape_classifier_reads_the_generators_renders():
    """The evaluation's own instrument: near perfect on clean renders, plain and outlined, at the demo sizes."""
    scenes = [s for s in training_scenes(150, seed=3) if s.shape2 is None]
    right = total = 0
    for scene in scenes:
        for style in (False, True):
            right += classify_shape(render(scene, 128, 128, style=style)) == scene.shape
            total += 1
    assert right / total > 0.97
    assert {classify_shape(render(Scene(shape, "green"))) for shape in SHAPES} == set(SHAPES)


def test_held_apart_prompts_never_appear_in_training():
    held = {(s.colour, s.shape, s.position) for s in held_apart()}
    assert len(held) == 100
    seen = {(s.colour, s.shape, s.position) for s in training_scenes(4000, seed=18) if s.shape2 is None}
    assert not held & seen


def test_generate_with_no_weights_configured_uses_the_demo_model_and_says_so(tmp_path):
    out = tmp_path / "star.png"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("FLUX_VECTOR_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", "generate", "--prompt", "simple vector art, a red circle in the "
         "center on a white background", "--lora-strength", "0", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "demo model" in proc.stdout and "NOT FLUX.1-dev" in proc.stdout
    assert "model demo (the demo model, not FLUX.1-dev)" in proc.stdout.strip().splitlines()[-1]
    image = Image.open(out)
    assert image.size == (112, 160)  # the hosted default 2:3 on the demo's scale
    record = read_metadata(out)
    assert (record["model"], record["width"], record["height"]) == ("demo", 112, 160)  # the size drawn, not 832x1216
    assert dominant_colour(image) == "red"  # recognisable: the circle the prompt asks for
