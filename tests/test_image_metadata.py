"""Every image flux_vector writes says how it was made: the record round-trips through each format, ``info`` prints
it, ``generate --like`` makes the same image again, and nothing private goes in."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from flux_vector.cli import main
from flux_vector.image_metadata import (
    NoMetadata,
    image_metadata,
    parameters_text,
    public_name,
    read_metadata,
)
from flux_vector.output_formats import encode_image
from flux_vector.request import parse_request

HOSTILE = 'a "red" <star> & </metadata> ]]> --> &amp; 東京\nsecond line, (weighted:1.2)'
IDENTITY = {"flux_vector": "0.1.0", "model": "black-forest-labs/FLUX.1-dev", "lora": "renderartist/simplevectorflux"}


def _flat_image() -> Image.Image:
    image = Image.new("RGB", (64, 48), (250, 250, 250))
    image.paste((200, 30, 30), (16, 12, 48, 36))
    return image


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp", "svg"])
def test_the_record_round_trips_through_every_format(output_format):
    request = parse_request(
        {
            "prompt": HOSTILE,
            "negative_prompt": "blur, <x>",
            "seed": 2**64 - 1,
            "width": 64,
            "height": 48,
            "output_format": output_format,
            "batch_size": 3,
        }
    )
    record = image_metadata(request, IDENTITY, batch_index=2)
    data = encode_image(_flat_image(), output_format, 90, metadata=record, **request.vector_options())
    assert read_metadata(data) == record
    assert record["request"] == request.echo() and record["batch_index"] == 2
    if output_format != "svg":
        assert Image.open(io.BytesIO(data)).size == (64, 48)  # still a valid image


def test_without_a_record_the_file_is_unchanged_and_reading_says_so():
    image = _flat_image()
    plain = io.BytesIO()
    image.save(plain, format="PNG")
    assert encode_image(image, "png", 95) == plain.getvalue()
    with pytest.raises(NoMetadata, match="no flux_vector record"):
        read_metadata(plain.getvalue())
    with pytest.raises(ValueError, match="not an image"):
        read_metadata(b"hello, not an image")


def test_jpeg_and_webp_carry_the_parameters_where_other_tools_look():
    request = parse_request({"prompt": "a blue circle", "seed": 5, "steps": 8})
    record = image_metadata(request, IDENTITY)
    for output_format in ("jpeg", "webp"):
        image = Image.open(io.BytesIO(encode_image(_flat_image(), output_format, 90, metadata=record)))
        comment = image.getexif().get_ifd(0x8769)[0x9286]
        assert comment.startswith(b"UNICODE\x00")
        assert comment[8:].decode("utf-16-be") == parameters_text(record)
    png = Image.open(io.BytesIO(encode_image(_flat_image(), "png", 90, metadata=record)))
    assert png.text["parameters"] == parameters_text(record)


def test_parameters_text_is_the_familiar_form():
    request = parse_request({"prompt": "a cat", "negative_prompt": "dog", "seed": 9, "steps": 12, "cfg": 2.0})
    text = parameters_text(image_metadata(request, IDENTITY))
    prompt, negative, pairs = text.split("\n")
    assert (prompt, negative) == ("a cat", "Negative prompt: dog")
    assert pairs.startswith("Steps: 12, Sampler: euler, Schedule type: simple, CFG scale: 2.0, ")
    assert "Seed: 9, Size: 832x1216, Model: black-forest-labs/FLUX.1-dev, " in pairs
    assert pairs.endswith("Lora strength: 1.0, Version: flux_vector 0.1.0")


def test_public_names_keep_hub_ids_and_drop_local_folders(tmp_path):
    folder = tmp_path / "secret-user" / "my-flux"
    folder.mkdir(parents=True)
    assert public_name(str(folder)) == "my-flux"
    assert public_name("~/models/lora.safetensors") == "lora.safetensors"
    assert public_name("./lora.safetensors") == "lora.safetensors"
    assert public_name("black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"
    assert public_name("tiny") == "tiny"
    assert public_name(None) is None


def test_a_pipeline_from_a_local_folder_publishes_only_the_folder_name(tmp_path):
    from flux_vector import FluxVectorPipeline
    from tests.golden import E2E_LORA, E2E_MODEL

    pipe = FluxVectorPipeline.from_pretrained(str(E2E_MODEL), lora=str(E2E_LORA), device="cpu", log=lambda *_: None)
    assert pipe.identity["model"] == Path(E2E_MODEL).name and pipe.identity["lora"] == Path(E2E_LORA).name
    request = parse_request({"prompt": "x", "width": 32, "height": 32, "steps": 1})
    data = encode_image(
        pipe.generate(request, progress=False).image, "png", 95, metadata=image_metadata(request, pipe.identity)
    )
    record = read_metadata(data)  # the record is there (an empty file would pass the check below) ...
    assert record["model"] == Path(E2E_MODEL).name and record["lora"] == Path(E2E_LORA).name
    assert record["request"]["prompt"] == "x" and record["request"]["width"] == 32
    assert str(Path(E2E_MODEL).parent).encode() not in data and b"/tests/data" not in data  # ... with no folder


def _cli(*args: str) -> None:
    assert main([*args]) == 0


SMALL = ("--model", "tiny", "--width", "64", "--height", "48", "--steps", "2", "--no-progress")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".svg"])
def test_info_and_like_make_the_same_file_again(tmp_path, capsys, suffix):
    first, again = tmp_path / f"first{suffix}", tmp_path / f"again{suffix}"
    _cli("generate", *SMALL, "--prompt", HOSTILE, "--seed", "11", "--sampler-name", "dpmpp_2m", "--out", str(first))
    record = read_metadata(first)
    assert record["model"] == "tiny" and record["request"]["sampler_name"] == "dpmpp_2m"
    assert record["request"]["prompt"] == HOSTILE

    capsys.readouterr()
    _cli("info", str(first))
    text = capsys.readouterr().out
    assert text.startswith(HOSTILE + "\n") and "Sampler: dpmpp_2m" in text and "Seed: 11" in text
    _cli("info", str(first), "--json")
    assert json.loads(capsys.readouterr().out) == record

    _cli("generate", "--like", str(first), "--no-progress", "--out", str(again))
    assert again.read_bytes() == first.read_bytes()  # same pixels, same encoding, same record


def test_like_with_overrides_and_one_image_of_a_batch(tmp_path):
    batch = tmp_path / "batch.png"
    _cli("generate", *SMALL, "--prompt", "a boat", "--seed", "3", "--batch-size", "2", "--out", str(batch))
    second = tmp_path / "batch_1.png"
    assert read_metadata(second)["batch_index"] == 1

    again = tmp_path / "again.png"
    _cli("generate", "--like", str(second), "--no-progress", "--out", str(again))
    assert again.read_bytes() == second.read_bytes() and not (tmp_path / "again_0.png").exists()

    changed = tmp_path / "changed.png"
    _cli(
        "generate",
        "--like",
        str(second),
        "--steps",
        "3",
        "--aspect-ratio",
        "1:1",
        "--no-progress",
        "--out",
        str(changed),
    )
    record = read_metadata(changed)["request"]
    assert (record["steps"], record["aspect_ratio"], record["width"], record["prompt"]) == (3, "1:1", None, "a boat")


def test_info_and_like_refuse_files_without_a_record_in_one_line(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    _flat_image().save(plain)
    assert main(["info", str(plain)]) == 2
    assert "no flux_vector record" in capsys.readouterr().err
    assert main(["generate", "--like", str(plain), "--out", str(tmp_path / "x.png")]) == 2
    assert "no flux_vector record" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "x.png")]) == 2
    assert "--prompt is required" in capsys.readouterr().err
