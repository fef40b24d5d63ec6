"""Every PNG flux_vector writes (CLI, batch, server, facade: one writer) carries a ComfyUI ``prompt`` graph and
A1111's hashes; A1111/Forge ``parameters`` texts are read back; the text-encoder strength is ComfyUI's strength_clip
(checked on the reference LoRA, which has CLIP-L keys)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import flux_vector
from flux_vector import facade
from flux_vector.cli import main
from flux_vector.comfy import request_from
from flux_vector.comfy.a1111 import parse_parameters
from flux_vector.comfy.hashes import lora_hash, model_hash
from flux_vector.image_metadata import image_metadata, parameters_text, read_metadata
from flux_vector.output_formats import encode_image
from flux_vector.request import parse_request

from .comfy_nodes import problems
from .golden import E2E_LORA, E2E_MODEL, e2e_manifest, e2e_tensors
from .server_process import ServerProcess

SLUG = "Simple_Vector_Flux"
SMALL = {"width": 64, "height": 48, "steps": 1}


def _graph_of(data: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(data)).text["prompt"])


def _assert_png_carries_its_graph(data: bytes, **params) -> None:
    record = read_metadata(data)
    graph = _graph_of(data)
    assert problems(graph) == []
    assert request_from(graph) == parse_request({**params, "output_format": "png"})
    assert parse_request(record["request"]) == parse_request({**params, "output_format": "png"})


# ------------------------------------------------------------------------------------------ every writer


def test_the_batch_command_writes_the_graph(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "a red star", "seed": 3, "lora_strength_clip": 0.0}) + "\n")
    out = tmp_path / "out"
    flags = ("--model", "tiny", "--width", "64", "--height", "48", "--steps", "1", "--no-progress")
    assert main(["batch", str(rows), "--out", str(out), *flags]) == 0
    (png,) = sorted(out.glob("*.png"))
    _assert_png_carries_its_graph(png.read_bytes(), prompt="a red star", seed=3, lora_strength_clip=0.0, **SMALL)


def test_the_facade_writes_the_graph(tmp_path, tiny_pipe):
    flux_vector.configure(store_dir=tmp_path / "store", pipeline=tiny_pipe)
    try:
        facade.local.local_engine()
        result = flux_vector.run(SLUG, prompt="a fox", seed=9, lora_strength_clip=-2.5, **SMALL)
    finally:
        flux_vector.configure()
    data = Path(result["output"].removeprefix("file://")).read_bytes()
    _assert_png_carries_its_graph(data, prompt="a fox", seed=9, lora_strength_clip=-2.5, **SMALL)


def test_the_server_accepts_the_text_encoder_strength_and_writes_the_graph(tmp_path, tiny_dir):
    server = ServerProcess(tmp_path / "jobs.sqlite3", args=("--no-warmup",)).start()
    try:
        body = {"prompt": "a boat", "seed": 4, "lora_strength_clip": 0.0, **SMALL}
        response = httpx.post(f"{server.base_url}/{SLUG}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        _assert_png_carries_its_graph(response.content, **body)
        bad = httpx.post(f"{server.base_url}/{SLUG}", json={**body, "lora_strength_clip": 11}, timeout=30)
        assert bad.status_code == 400 and "lora_strength_clip" in bad.text
    finally:
        assert server.stop(), server.log()


# ------------------------------------------------------------------------------------------ A1111 hashes


def test_a1111_short_hashes_of_the_files_read(tmp_path):
    lora = tmp_path / "my_lora.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32)}, lora, metadata={"ss_note": "x"})
    data = lora.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert lora_hash(lora) == hashlib.sha256(data[8 + header :]).hexdigest()[:12]  # tensor data only ("addnet")
    assert model_hash(lora) == hashlib.sha256(data).hexdigest()[:10]
    save_file({"w": torch.arange(6, dtype=torch.float32)}, lora, metadata={"ss_note": "changed"})
    assert lora_hash(lora) == hashlib.sha256(data[8 + header :]).hexdigest()[:12]  # metadata is not hashed


def test_parameters_name_the_weights_by_hash_never_by_path(tmp_path):
    pipe = flux_vector.FluxVectorPipeline.from_pretrained(
        str(E2E_MODEL), lora=str(E2E_LORA), device="cpu", dtype=torch.float32, log=lambda *_: None
    )
    identity = pipe.identity
    assert identity["lora_file"] == E2E_LORA.name and identity["lora_hash"] == lora_hash(E2E_LORA)
    assert "model_hash" not in identity  # a diffusers folder of several files has no A1111 hash
    record = image_metadata(parse_request({"prompt": "a", **SMALL}), identity)
    text = parameters_text(record)
    assert f'Lora hashes: "tiny_lora_kohya: {lora_hash(E2E_LORA)}"' in text
    png = encode_image(Image.new("RGB", (64, 48)), "png", 95, metadata=record)
    assert str(E2E_MODEL.parent).encode() not in png and b"/tests/" not in png
    assert _graph_of(png)["20"]["inputs"]["lora_name"] == "tiny_lora_kohya.safetensors"


# ------------------------------------------------------------------------------------------ reading parameters

FORGE = (
    "v3ct0r style, a red fox <lora:Simple_Vector_Flux_v2_renderartist:0.8>\n"
    "Negative prompt: blurry, watermark\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 12345, "
    'Size: 896x1152, Model hash: 0123456789, Model: flux1-dev, Lora hashes: "Simple_Vector_Flux_v2_renderartist: '
    'abcdef012345", Version: f2.0.1v1.10.1'
)


def test_a_forge_parameters_text_reads_as_a_request():
    parsed = parse_parameters(FORGE)
    request = parse_request(parsed.params)
    assert (request.prompt, request.negative_prompt) == ("v3ct0r style, a red fox", "blurry, watermark")
    assert (request.steps, request.sampler_name, request.scheduler, request.seed) == (20, "euler", "simple", 12345)
    assert (request.cfg, request.guidance, request.aspect_ratio, request.width) == (1.0, 3.5, "3:4", None)
    assert (request.lora_strength, request.lora_strength_clip, parsed.lora) == (
        0.8,
        None,
        "Simple_Vector_Flux_v2_renderartist",
    )
    a1111 = parse_parameters("a cat <lora:x:0.5:1.5>\nSteps: 8, Sampler: DPM++ 2M Karras, Seed: 1, Size: 64x48")
    assert a1111.params["sampler_name"] == "dpmpp_2m" and a1111.params["scheduler"] == "karras"
    assert (a1111.params["lora_strength"], a1111.params["lora_strength_clip"]) == (1.5, 0.5)  # unet, te
    with pytest.raises(ValueError, match="Denoising strength: an image made from another image"):
        parse_parameters("a cat\nSteps: 8, Sampler: Euler, Denoising strength: 0.4")
    with pytest.raises(ValueError, match="'Restart' has no flux_vector equivalent"):
        parse_parameters("a cat\nSteps: 8, Sampler: Restart")


def test_our_own_parameters_text_reads_back_to_the_request():
    request = parse_request(
        {
            "prompt": "a, b: c",
            "negative_prompt": "x",
            "cfg": 2.5,
            "seed": 7,
            "sampler_name": "heun",
            "width": 64,
            "height": 48,
            "lora_strength": 0.5,
            "lora_strength_clip": 0.0,
            "scheduler": "beta",
        }
    )
    record = image_metadata(request, {"model": "tiny", "lora": "renderartist/simplevectorflux"})
    assert parse_request(parse_parameters(parameters_text(record)).params) == request


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_info_and_like_read_a_parameters_text(tmp_path, capsys, output_format):
    image = Image.new("RGB", (64, 48))
    path = tmp_path / f"forge.{'png' if output_format == 'png' else 'jpg'}"
    text = FORGE.replace("896x1152", "64x48")
    if output_format == "png":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        image.save(path, pnginfo=info)
    else:  # A1111 keeps it in the EXIF UserComment
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
        image.save(path, exif=exif.tobytes())
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Sampler: euler" in out and "Seed: 12345" in out and "Source: parameters" in out
    again = tmp_path / "again.png"
    assert (
        main(["generate", "--like", str(path), "--model", "tiny", "--steps", "1", "--no-progress", "--out", str(again)])
        == 0
    )
    request = read_metadata(again)["request"]
    assert (request["prompt"], request["seed"], request["lora_strength"], request["width"]) == (
        "v3ct0r style, a red fox",
        12345,
        0.8,
        64,
    )


# ------------------------------------------------------------------------------------------ strength_clip, exact


@pytest.fixture(scope="module")
def reference_pipe():
    return flux_vector.FluxVectorPipeline.from_pretrained(
        str(E2E_MODEL), lora=str(E2E_LORA), device="cpu", dtype=torch.float32, log=lambda *_: None
    )


@pytest.mark.parametrize("case", e2e_manifest()["clip_lora"], ids=lambda c: str(c["lora_strength_clip"]))
def test_the_text_encoder_strength_is_comfyuis_strength_clip(reference_pipe, case):
    """ComfyUI's pooled output at strength_clip s (golden data) with the transformer's strength held elsewhere: the
    two strengths are independent, and the CLIP side is exact."""
    prompts = {e["id"]: e for e in e2e_manifest()["tokenization_and_conditioning"]}
    request = parse_request(
        {
            "prompt": prompts[case["prompt_id"]]["text"],
            "lora_strength": -3.0,
            "lora_strength_clip": case["lora_strength_clip"],
        }
    )
    reference_pipe.set_lora_strength(request.lora_strength, request.text_lora_strength)
    assert (reference_pipe.lora.strength, reference_pipe.lora.text_strength) == (-3.0, request.text_lora_strength)
    t5, pooled = reference_pipe.encode_prompt(request.prompt)
    assert (pooled - e2e_tensors()[case["clip_pooled"]["key"]]).abs().max() < 1e-4
    assert (t5 - e2e_tensors()[case["t5_cond_unchanged_key"]]).abs().max() < 1e-4


def test_the_lora_files_we_use_and_their_text_encoder_keys(tiny_dir):
    """The reference LoRA patches CLIP-L (so strength_clip matters, tested above); the tiny model's own kohya LoRA
    (flux_vector/tiny.py) is transformer-only, for which the text-encoder strength changes nothing."""
    from safetensors import safe_open

    from flux_vector.tiny import KOHYA_LORA

    with safe_open(str(E2E_LORA), "pt") as f:
        reference = list(f.keys())
    with safe_open(str(tiny_dir / KOHYA_LORA), "pt") as f:
        tiny = list(f.keys())
    assert any(k.startswith("lora_te1_") for k in reference)
    assert tiny and not any(k.startswith("lora_te") for k in tiny)


def test_a_fused_lora_switches_the_text_strength_alone():
    """Fused (as the server runs it): a text-only switch rewrites the text encoder's weights, not the transformer's,
    and gives the unfused adapter's conditioning."""
    pipe = flux_vector.FluxVectorPipeline.from_pretrained(
        str(E2E_MODEL), lora=str(E2E_LORA), device="cpu", dtype=torch.float32, log=lambda *_: None
    )
    prompt = "v3ct0r style, a red fox"
    pipe.set_lora_strength(1.0, -2.5)
    _, unfused = pipe.encode_prompt(prompt)
    pipe.lora.fuse()
    transformer = [w for w in pipe.lora.modules if w in set(pipe.transformer.modules())]
    before = [w.base.weight.clone() for w in transformer]
    rewritten = []
    for wrapper in transformer:  # count the transformer layers a switch rewrites
        wrapper.refresh_fused = lambda *a, _w=wrapper, _f=wrapper.refresh_fused: (rewritten.append(_w), _f(*a))
    pipe.set_lora_strength(1.0, 0.0)
    pipe.set_lora_strength(1.0, -2.5)
    assert rewritten == [] and transformer
    assert all(torch.equal(w.base.weight, b) for w, b in zip(transformer, before, strict=True))
    pipe.prompt_cache.entries.clear()
    _, fused = pipe.encode_prompt(prompt)
    assert (fused - unfused).abs().max() < 1e-5
