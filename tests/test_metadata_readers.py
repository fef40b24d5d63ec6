"""Other tools read what flux_vector writes, and it names what ran (issue 25, points 4 and 5).

- JPEG and WebP carry the ``parameters`` text in the EXIF UserComment as the EXIF standard has it: type UNDEFINED (7),
  the 8-byte character-set prefix. Read back with two real readers from PyPI: piexif (what sd-prompt-reader uses:
  a UserComment typed BYTE comes back from it as a tuple of numbers, which is why that reader failed) and
  sd-parsers.
- The record, ``info``, the batch manifest's ``identity`` and ``--help`` name the LoRA that runs: on the demo model
  its outline LoRA, never the Simple Vector LoRA that does not run there.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import piexif
import piexif.helper
import pytest
import sd_parsers
from PIL import Image

from flux_vector.demo import DEMO_LORA_FILE
from flux_vector.image_metadata import exif_user_comment, image_metadata, read_metadata, save_options
from flux_vector.models import DEFAULT_LORA, resolve_lora, running_lora_name
from flux_vector.request import parse_request

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "v3ct0r style, simple vector art, a (large:1.2) red heart, in the center"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FLUX_VECTOR_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def user_comment_entry(exif: bytes) -> tuple[int, int]:
    """(type, count) of the UserComment entry, read from the TIFF bytes by hand (big-endian, as written)."""
    tiff = exif.removeprefix(b"Exif\x00\x00")
    assert tiff[:4] == b"MM\x00\x2a"
    (ifd0,) = struct.unpack(">I", tiff[4:8])
    entries = {}
    for offset in (ifd0, struct.unpack(">I", tiff[ifd0 + 10 : ifd0 + 14])[0]):  # IFD0, then the Exif IFD it points to
        (count,) = struct.unpack(">H", tiff[offset : offset + 2])
        for i in range(count):
            tag, kind, n = struct.unpack(">HHI", tiff[offset + 2 + 12 * i : offset + 10 + 12 * i])
            entries[tag] = (kind, n)
    return entries[0x9286]


def test_user_comment_is_undefined_with_the_unicode_prefix():
    text = "a fox\nSteps: 20, Seed: 1 — ünïcode"
    exif = exif_user_comment(text)
    kind, count = user_comment_entry(exif)
    assert kind == 7 and count == 8 + 2 * len(text)
    loaded = piexif.load(exif.removeprefix(b"Exif\x00\x00"))
    raw = loaded["Exif"][piexif.ExifIFD.UserComment]
    assert isinstance(raw, bytes) and raw.startswith(b"UNICODE\x00")
    assert piexif.helper.UserComment.load(raw) == text


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_jpeg_and_webp_parameters_read_back_with_piexif_and_sd_parsers(tmp_path, output_format):
    request = parse_request({"prompt": PROMPT, "seed": 7, "steps": 3, "negative_prompt": "blurry"})
    identity = {"model": "demo", "lora": DEMO_LORA_FILE}
    record = image_metadata(request, identity, size=(128, 128))
    path = tmp_path / f"heart.{output_format}"
    Image.new("RGB", (64, 64), (230, 40, 40)).save(
        path, format=output_format.upper(), **save_options(output_format, record)
    )

    raw = piexif.load(str(path))["Exif"][piexif.ExifIFD.UserComment]
    text = piexif.helper.UserComment.load(raw)
    assert text.startswith(PROMPT + "\nNegative prompt: blurry\nSteps: 3, Sampler: euler")
    assert f"Model: demo, Lora: {DEMO_LORA_FILE}" in text

    info = sd_parsers.ParserManager().parse(str(path))
    assert info is not None
    (sampler,) = info.samplers
    assert sampler.name == "euler" and sampler.parameters["seed"] == "7" and sampler.parameters["steps"] == "3"
    assert [p.value for p in sampler.prompts] == [PROMPT]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert sampler.model.name == "demo" and info.metadata["Lora"] == DEMO_LORA_FILE
    assert read_metadata(path)["request"]["seed"] == 7  # flux_vector's own reader (XMP) still reads it


def test_the_lora_named_is_the_one_that_runs():
    assert running_lora_name(DEFAULT_LORA, "demo") == DEMO_LORA_FILE
    assert running_lora_name(DEMO_LORA_FILE, "demo") == DEMO_LORA_FILE
    assert running_lora_name(DEFAULT_LORA, "black-forest-labs/FLUX.1-dev") == DEFAULT_LORA
    assert running_lora_name("none", "demo") is None and running_lora_name(None, "demo") is None
    assert running_lora_name(DEFAULT_LORA, "tiny") != DEFAULT_LORA
    # the recorded name loads the same file again (generate --like)
    assert resolve_lora(DEMO_LORA_FILE, "demo") == resolve_lora(DEFAULT_LORA, "demo")
    assert resolve_lora(DEMO_LORA_FILE, "demo").is_file()


def test_help_names_the_demo_lora_for_the_demo_model():
    proc = run_cli("generate", "--help")
    text = " ".join(proc.stdout.split())
    assert f"{DEMO_LORA_FILE}, the demo's outline LoRA, for demo" in text
    assert f"{DEFAULT_LORA}, Simple Vector, for FLUX.1-dev" in text


def test_demo_batch_manifest_record_info_and_sd_parsers_name_the_demo_lora(tmp_path):
    """One demo-model batch image (the default model without real weights, the default LoRA): every place that says
    what made it names the demo's outline LoRA."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": PROMPT, "output_format": "webp", "aspect_ratio": "1:1"}) + "\n")
    out = tmp_path / "out"
    run_cli("batch", str(rows), "--out", str(out), "--steps", "2", "--no-progress")
    (line,) = [json.loads(text) for text in (out / "manifest.jsonl").read_text().splitlines()]
    assert line["status"] == "done"
    assert line["identity"]["model"] == "demo" and line["identity"]["lora"] == DEMO_LORA_FILE
    (image,) = out.glob("*.webp")
    record = read_metadata(image)
    assert record["model"] == "demo" and record["lora"] == DEMO_LORA_FILE
    info = run_cli("info", str(image)).stdout
    assert f"Model: demo, Lora: {DEMO_LORA_FILE}" in info and DEFAULT_LORA not in info
    parsed = sd_parsers.ParserManager().parse(str(image))
    assert parsed.metadata["Lora"] == DEMO_LORA_FILE and parsed.samplers[0].model.name == "demo"
