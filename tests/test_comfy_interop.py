"""ComfyUI in both directions (issue 29): the graphs flux_vector writes pass ComfyUI's input checks
(``tests/comfy_nodes.py``, from ``node_inputs.json``) and read back to the same request; ComfyUI's own PNGs (both
layouts, written by its SaveImage on the tiny model, tests/data/comfy_interop/) re-run through ``generate --like``
give ComfyUI's pixels; what cannot be reproduced is refused in one line naming the node."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from flux_vector.cli import main
from flux_vector.comfy import Unreproducible, graph_for, read_graph, request_from
from flux_vector.comfy.names import file_names
from flux_vector.image_metadata import read_metadata
from flux_vector.models import DEFAULT_LORA, DEFAULT_MODEL
from flux_vector.request import GenerationRequest, parse_request
from flux_vector.sampling.names import PP_MIGRATION, SAMPLER_NAMES, SCHEDULER_NAMES

from .comfy_nodes import problems
from .golden import E2E_LORA, E2E_MODEL

DATA = Path(__file__).parent / "data" / "comfy_interop"
PNGS = {image["id"]: image for image in json.loads((DATA / "comfy_pngs.json").read_text())["images"]}
IDENTITY = {"flux_vector": "0", "model": DEFAULT_MODEL, "lora": DEFAULT_LORA}
PIXEL_FRACTION = 0.005  # docs/COMFY_E2E.md section 8: |diff| <= 1 on at most 0.5 % of values


# ------------------------------------------------------------------------------------------ the validator itself


@pytest.mark.parametrize("image_id", list(PNGS))
def test_comfyuis_own_graphs_pass_the_validator(image_id):
    for key in ("api_graph", "api_graph_as_sent"):
        assert problems(PNGS[image_id][key]) == []


def test_the_validator_finds_what_comfyui_refuses():
    graph = copy.deepcopy(PNGS["K1"]["api_graph"])
    del graph["3"]["inputs"]["steps"]
    graph["3"]["inputs"]["sampler_name"] = "euler_pp"
    graph["3"]["inputs"]["cfg"] = 101.0
    graph["27"]["inputs"]["width"] = 120
    graph["26"]["inputs"]["conditioning"] = ["12", 0]
    found = "\n".join(problems(graph))
    for text in (
        "steps: required input missing",
        "'euler_pp' is not one of",
        "above the maximum 100",
        "step 16",
        "output 0 is MODEL, not CONDITIONING",
    ):
        assert text in found


# ------------------------------------------------------------------------------------------ writing


def _requests() -> list[dict]:
    """Every sampler (each family: Euler, ancestral, Heun, DPM2, DPM++, SDE, LMS, multistep, UniPC, LCM, DDIM, DEIS,
    cfg_pp, the hosted *_pp names), every scheduler, cfg != 1 with a negative, LoRA strengths -10..10, the model-only
    LoRA, a batch of 2, a weighted prompt, a seed above 2^53, an aspect ratio."""
    cases = [
        {"prompt": "a fox", "sampler_name": name, "scheduler": SCHEDULER_NAMES[i % len(SCHEDULER_NAMES)], "steps": 9}
        for i, name in enumerate(SAMPLER_NAMES)
    ]
    cases += [
        {"prompt": "a red (fox:1.3), ((clip art))", "cfg": 3.5, "negative_prompt": "blurry, (text:1.2)", "seed": 0},
        {"prompt": "a fox", "lora_strength": -10.0, "width": 64, "height": 96},
        {"prompt": "a fox", "lora_strength": 10.0, "lora_strength_clip": -10.0, "guidance": 1.0},
        {"prompt": "a fox", "lora_strength": 0.75, "lora_strength_clip": 0.0},  # LoraLoaderModelOnly's case
        {"prompt": "a fox", "batch_size": 2, "seed": 2**64 - 1, "aspect_ratio": "16:9"},
        {"prompt": "v3ct0r style, a lighthouse", "scheduler": "beta", "sampler_name": "dpmpp_2m_sde", "cfg": 0.0},
        {"prompt": "a fox", "steps": 100, "width": 4096, "height": 16, "guidance": 100.0},
    ]
    return cases


@pytest.mark.parametrize("params", _requests(), ids=lambda p: f"{p.get('sampler_name', '')}{sorted(p)}")
def test_the_graph_of_a_request_passes_comfyuis_checks_and_reads_back_to_it(params):
    request = parse_request(params)
    graph = json.loads(json.dumps(graph_for(request, IDENTITY)))  # as it travels in the PNG
    assert problems(graph) == []
    expected = request
    if request.sampler_name in PP_MIGRATION:  # written as ComfyUI's migration: the plain sampler at twice the cfg
        expected = parse_request({**params, "sampler_name": PP_MIGRATION[request.sampler_name], "cfg": 2 * request.cfg})
    assert request_from(graph) == expected
    lora = graph["20"]["inputs"]
    assert (lora["strength_model"], lora["strength_clip"]) == (request.lora_strength, request.text_lora_strength)
    assert graph["12"]["inputs"]["unet_name"] == "flux1-dev.safetensors"
    assert lora["lora_name"] == "Simple_Vector_Flux_v2_renderartist.safetensors"


def test_the_graph_shifts_as_the_pipeline_samples():
    import inspect

    from flux_vector.comfy.graph import BASE_SHIFT, MAX_SHIFT
    from flux_vector.sampling import flux_mu

    defaults = inspect.signature(flux_mu).parameters
    assert (defaults["max_shift"].default, defaults["base_shift"].default) == (MAX_SHIFT, BASE_SHIFT)


def test_seeds_above_2_53_are_exact_and_say_how_to_keep_them():
    big = graph_for(parse_request({"prompt": "a", "seed": 2**53 + 1}), IDENTITY)["3"]
    small = graph_for(parse_request({"prompt": "a", "seed": 2**53}), IDENTITY)["3"]
    assert big["inputs"]["seed"] == 2**53 + 1 and "API" in big["_meta"]["title"]
    assert small["_meta"]["title"] == "KSampler"


def test_file_names_for_every_kind_of_model():
    assert file_names(DEFAULT_MODEL)["clip_name2"] == "clip_l.safetensors"
    assert file_names("my-flux.safetensors") == {**file_names(DEFAULT_MODEL), "unet_name": "my-flux.safetensors"}
    assert file_names("demo")["unet_name"] == "demo/transformer/diffusion_pytorch_model.safetensors"
    graph = graph_for(parse_request({"prompt": "a"}), {"model": "demo", "lora": None}, size=(112, 160))
    assert problems(graph) == [] and "20" not in graph  # no LoRA loaded: no LoRA node
    assert graph["27"]["inputs"]["width"] == 112 and graph["30"]["inputs"]["height"] == 160
    assert request_from(graph).lora_strength == 0.0  # the pipeline served strength 0
    assert read_graph(graph).unet_name.startswith("demo/")


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("image_id", list(PNGS))
def test_comfyuis_graphs_read_to_their_equivalent_requests(image_id):
    image = PNGS[image_id]
    expected = parse_request(image["request"])
    for key in ("api_graph", "api_graph_as_sent"):
        assert request_from(image[key]) == expected
    embedded = json.loads(Image.open(DATA / image["file"]).text["prompt"])
    assert request_from(embedded) == expected


def test_a_zeroed_negative_is_an_empty_one_at_cfg_1():
    graph = copy.deepcopy(PNGS["K1"]["api_graph"])
    graph["40"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}
    graph["3"]["inputs"]["negative"] = ["40", 0]
    assert request_from(graph) == parse_request(PNGS["K1"]["request"])
    graph["3"]["inputs"]["cfg"] = 2.0
    with pytest.raises(Unreproducible, match=r"node 40 \(ConditioningZeroOut\).*only at cfg 1"):
        request_from(graph)


def _mutated(image_id: str, change) -> dict:
    graph = copy.deepcopy(PNGS[image_id]["api_graph"])
    change(graph)
    return graph


def _set(node: str, **inputs):
    return lambda g: g[node]["inputs"].update(inputs)


def _upscale(g):
    g["50"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "lanczos", "scale_by": 2}}
    g["9"]["inputs"]["images"] = ["50", 0]


def _img2img(g):
    g["50"] = {"class_type": "LoadImage", "inputs": {"image": "cat.png"}}
    g["51"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["50", 0], "vae": ["10", 0]}}
    g["3"]["inputs"]["latent_image"] = ["51", 0]


def _second_lora(g):
    g["21"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "lora_name": "other.safetensors",
            "strength_model": 1.0,
            "strength_clip": 1.0,
            "model": ["20", 0],
            "clip": ["20", 1],
        },
    }
    g["30"]["inputs"]["model"] = ["21", 0]
    g["6"]["inputs"]["clip"] = ["21", 1]


def _negative_guidance(g):
    g["41"] = {"class_type": "FluxGuidance", "inputs": {"guidance": 5.0, "conditioning": ["33", 0]}}
    g["3"]["inputs"]["negative"] = ["41", 0]


def _no_model_sampling(g):
    g["3"]["inputs"]["model"] = ["20", 0]


def _flux_encode(g):
    g["6"] = {
        "class_type": "CLIPTextEncodeFlux",
        "inputs": {"clip": ["20", 1], "clip_l": "a", "t5xxl": "b", "guidance": 3.5},
    }


REFUSALS = [
    ("K1", _upscale, r"node 50 \(ImageScaleBy\): a node flux_vector does not have"),
    ("K1", _img2img, r"node 50 \(LoadImage\)"),
    ("K1", _set("3", denoise=0.6), r"node 3 \(KSampler\): denoise 0.6"),
    ("A1", _set("16", sampler_name="uni_pc"), r"node 16 \(KSamplerSelect\): uni_pc with BasicScheduler"),
    ("A1", _set("16", sampler_name="dpm_2_ancestral"), r"node 16 \(KSamplerSelect\): dpm_2_ancestral"),
    ("A1", _set("17", denoise=0.5), r"node 17 \(BasicScheduler\): denoise 0.5"),
    ("K1", _negative_guidance, r"node 41 \(FluxGuidance\): the negative prompt at guidance 5"),
    ("K1", _set("30", width=1024, height=1024), r"node 30 \(ModelSamplingFlux\): width/height 1024x1024 differ"),
    ("K1", _set("30", max_shift=1.0), r"node 30 \(ModelSamplingFlux\): max_shift 1"),
    ("K1", _no_model_sampling, r"node 20 \(LoraLoader\).*without ModelSamplingFlux"),
    ("A3", _set("12", weight_dtype="fp8_e4m3fn"), r"node 12 \(UNETLoader\): weight_dtype fp8_e4m3fn"),
    ("K1", _second_lora, r"node 21 \(LoraLoader\): a second LoRA"),
    ("K1", _set("3", steps=500), r"node 3 \(KSampler\): steps=500 is not allowed"),
    ("K1", _set("3", scheduler="linear_quadratic"), r"node 3 \(KSampler\): scheduler='linear_quadratic'"),
    ("K1", _set("20", strength_model=50.0), r"node 20 \(LoraLoader\): lora_strength=50.0"),
    ("K1", _set("11", type="sd3"), r"node 11 \(DualCLIPLoader\): type sd3"),
    ("K1", _flux_encode, r"node 6 \(CLIPTextEncodeFlux\): different texts"),
    ("K1", _set("6", text=["99", 0]), r"node 6 \(CLIPTextEncode\): input text comes from another node"),
    ("K1", lambda g: g.update({"90": {**g["9"]}}), r"2 image outputs"),
    ("K1", _set("26", conditioning=["26", 0]), r"node 26 \(FluxGuidance\): its conditioning links round in a loop"),
]


@pytest.mark.parametrize("image_id, change, message", REFUSALS, ids=[m.split(":")[0] for *_, m in REFUSALS])
def test_what_cannot_be_reproduced_is_refused_naming_the_node_and_why(image_id, change, message):
    with pytest.raises(Unreproducible, match=message) as caught:
        request_from(_mutated(image_id, change))
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------ the command line


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


TINY = ("--model", str(E2E_MODEL), "--lora", str(E2E_LORA), "--device", "cpu", "--no-progress")


@pytest.mark.parametrize("image_id", list(PNGS))
def test_generate_like_a_comfyui_png_gives_comfyuis_pixels(tmp_path, image_id):
    out = tmp_path / "again.png"
    assert main(["generate", "--like", str(DATA / PNGS[image_id]["file"]), *TINY, "--out", str(out)]) == 0
    ours, theirs = _pixels(out), _pixels(DATA / PNGS[image_id]["file"])
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1 and (diff > 0).mean() <= PIXEL_FRACTION, (diff.max(), (diff > 0).mean())
    record = read_metadata(out)
    assert parse_request(record["request"]) == parse_request({**PNGS[image_id]["request"], "output_format": "png"})
    # our PNG carries a graph ComfyUI accepts, naming the files we read, that reads back to the same request
    graph = json.loads(Image.open(out).text["prompt"])
    assert problems(graph) == []
    assert request_from(graph) == parse_request(PNGS[image_id]["request"])
    assert graph["20"]["inputs"]["lora_name"] == E2E_LORA.name
    assert graph["12"]["inputs"]["unet_name"] == f"{E2E_MODEL.name}/transformer/diffusion_pytorch_model.safetensors"


def test_the_model_only_lora_is_exact_and_not_a_no_op(tmp_path):
    """A3 (LoraLoaderModelOnly) made with the LoRA on CLIP-L too: far from ComfyUI's pixels, so the strength of 0
    the graph gives the text encoder is what matched them (the tiny LoRA has CLIP-L keys)."""
    out = tmp_path / "clip_too.png"
    like = str(DATA / PNGS["A3"]["file"])
    assert main(["generate", "--like", like, *TINY, "--lora-strength-clip", "1", "--out", str(out)]) == 0
    assert np.abs(_pixels(out) - _pixels(DATA / PNGS["A3"]["file"])).mean() > 5


def test_info_shows_a_comfyui_pngs_parameters(capsys):
    assert main(["info", str(DATA / "comfy_A3.png")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("v3ct0r style, simple vector art, a green tree\n")
    for part in (
        "Steps: 7",
        "Sampler: euler_ancestral",
        "Schedule type: karras",
        "Seed: 987654321",
        "Size: 160x112",
        "Model: flux1-dev.safetensors",
        "Lora strength clip: 0.0",
        "Source: ComfyUI",
    ):
        assert part in text
    assert main(["info", str(DATA / "comfy_K1.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["model"], record["lora"], record["source"]) == (DEFAULT_MODEL, DEFAULT_LORA, "ComfyUI")


def _png_with_graph(path: Path, graph: dict) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    return path


def test_an_unreproducible_graph_is_one_line_before_any_model_loads(tmp_path, capsys):
    png = _png_with_graph(tmp_path / "a.png", _mutated("A1", _set("16", sampler_name="uni_pc")))
    assert main(["info", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ComfyUI node 16 (KSamplerSelect): uni_pc with BasicScheduler" in err
    # a model that does not exist: the refusal comes first, before the weights are even looked for
    assert main(["generate", "--like", str(png), "--model", "/nonexistent", "--out", str(tmp_path / "x.png")]) == 2
    assert "ComfyUI node 16 (KSamplerSelect)" in capsys.readouterr().err


def test_unknown_file_names_ask_for_the_flags(tmp_path, capsys):
    png = _png_with_graph(tmp_path / "a.png", _mutated("K1", _set("12", unet_name="my_flux_finetune.safetensors")))
    assert main(["generate", "--like", str(png), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "model file 'my_flux_finetune.safetensors'" in err and "give --model" in err
    png = _png_with_graph(tmp_path / "b.png", _mutated("K1", _set("20", lora_name="someone_elses.safetensors")))
    assert main(["generate", "--like", str(png), "--model", str(E2E_MODEL), "--out", str(tmp_path / "x.png")]) == 2
    assert "give --lora" in capsys.readouterr().err


def test_flags_override_the_graph(tmp_path):
    out = tmp_path / "steps.png"
    like = str(DATA / PNGS["A1"]["file"])
    assert main(["generate", "--like", like, *TINY, "--steps", "1", "--seed", "5", "--out", str(out)]) == 0
    request = read_metadata(out)["request"]
    assert (request["steps"], request["seed"], request["prompt"]) == (1, 5, PNGS["A1"]["request"]["prompt"])


def test_the_request_contract_carries_the_text_encoder_strength():
    assert GenerationRequest.model_fields["lora_strength_clip"].default is None
    assert parse_request({"prompt": "a", "lora_strength": 0.5, "lora_strength_clip": 0.5}).lora_strength_clip is None
    assert parse_request({"prompt": "a", "lora_strength_clip": 0}).text_lora_strength == 0.0
    with pytest.raises(ValueError, match="lora_strength_clip=11"):
        parse_request({"prompt": "a", "lora_strength_clip": 11})
