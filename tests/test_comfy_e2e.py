"""Same request, same pixels as ComfyUI: every entry of tests/data/comfy_e2e/golden.json (docs/COMFY_E2E.md).

The model is the reference folder (tiny random weights, the real FLUX.1-dev tokenizers) with its kohya LoRA, loaded
through ``FluxVectorPipeline.from_pretrained`` on CPU in float32: the path the CLI, the server and the facade take.
Tolerances are the ones docs/COMFY_E2E.md section 8 suggests.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_vector import FluxVectorPipeline
from flux_vector.prompt import encode_clip_pooled, encode_t5, parse_weights, tokenize_prompt, weighted_pieces

from .golden import E2E_LORA, E2E_MODEL, e2e_manifest, e2e_tensors

COND_TOL = 1e-4
WEIGHT_TOL = 1e-5
LATENT_TOL = 5e-4
PIXEL_FRACTION = 0.005

PROMPTS = {e["id"]: e for e in e2e_manifest()["tokenization_and_conditioning"]}
TRANSFORMER_INPUTS = {e["id"]: e for e in e2e_manifest()["transformer_inputs"]}
CPU = torch.device("cpu")


def golden(entry: dict) -> torch.Tensor:
    return e2e_tensors()[entry["key"]]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def load(lora: bool = True) -> FluxVectorPipeline:
    return FluxVectorPipeline.from_pretrained(
        str(E2E_MODEL), lora=str(E2E_LORA) if lora else None, device="cpu", dtype=torch.float32, log=lambda *_: None
    )


@pytest.fixture(scope="module")
def pipe() -> FluxVectorPipeline:
    return load()


@pytest.fixture(scope="module")
def pipe_without_lora() -> FluxVectorPipeline:
    return load(lora=False)


# ------------------------------------------------------------------------------------------ A/B: text -> tokens


@pytest.mark.parametrize("prompt_id", list(PROMPTS))
def test_weight_parser_segments(prompt_id):
    entry = PROMPTS[prompt_id]
    assert [list(s) for s in parse_weights(entry["text"])] == entry["parsed_segments"]


@pytest.mark.parametrize("prompt_id", list(PROMPTS))
def test_token_ids_and_weights_both_tokenizers(pipe, prompt_id):
    entry = PROMPTS[prompt_id]
    assert bytes.fromhex(entry["text_utf8_hex"]).decode() == entry["text"]
    tokens = pipe.tokenize(entry["text"])
    assert [[list(t) for t in chunk] for chunk in tokens.clip_chunks] == entry["clip_l_chunks"]
    assert [list(t) for t in tokens.t5] == entry["t5xxl"]
    assert len(tokens.warnings) == (1 if entry["warnings"] else 0)


@pytest.mark.parametrize("prompt_id", list(PROMPTS))
def test_t5_conditioning_and_pooled(pipe_without_lora, prompt_id):
    entry = PROMPTS[prompt_id]
    t5, pooled = pipe_without_lora.encode_prompt(entry["text"])
    assert max_diff(t5, golden(entry["tensors"]["t5_cond"])) < COND_TOL
    assert max_diff(pooled, golden(entry["tensors"]["clip_pooled"])) < COND_TOL


@pytest.mark.parametrize("prompt_id", [p for p, e in PROMPTS.items() if "t5_raw" in e["tensors"]])
def test_weighted_t5_interpolates_towards_the_empty_sequence(pipe_without_lora, prompt_id):
    entry = PROMPTS[prompt_id]
    tokens = pipe_without_lora.tokenize(entry["text"])
    assert tokens.t5_empty_ids == entry["t5_empty_tokens"]
    with torch.inference_mode():
        unweighted = replace(tokens, t5=tuple((t, 1.0) for t in tokens.t5_ids))
        raw = encode_t5(pipe_without_lora.text_encoder_2, unweighted, CPU)
        empty = encode_t5(
            pipe_without_lora.text_encoder_2, replace(tokens, t5=tuple((t, 1.0) for t in tokens.t5_empty_ids)), CPU
        )
    assert max_diff(raw, golden(entry["tensors"]["t5_raw"])) < COND_TOL
    assert max_diff(empty, golden(entry["tensors"]["t5_empty"])) < COND_TOL


@pytest.mark.parametrize("prompt_id", list(PROMPTS))
def test_pooled_per_chunk(pipe_without_lora, prompt_id):
    """Every chunk's pooled vector (ComfyUI encodes them all; only chunk 0's is used)."""
    entry = PROMPTS[prompt_id]
    tokens = pipe_without_lora.tokenize(entry["text"])
    with torch.inference_mode():
        per_chunk = [replace(tokens, clip_chunks=(chunk,)) for chunk in tokens.clip_chunks]
        pooled = torch.cat([encode_clip_pooled(pipe_without_lora.text_encoder, one, CPU) for one in per_chunk])
    assert max_diff(pooled, golden(entry["tensors"]["clip_pooled_per_chunk"])) < COND_TOL


# ------------------------------------------------------------------------------------------ C: the model call


@pytest.mark.parametrize("case", e2e_manifest()["transformer"], ids=lambda c: c["id"])
def test_transformer_velocity_and_denoised_at_every_lora_strength(pipe, pipe_without_lora, case):
    inputs = TRANSFORMER_INPUTS[case["input"]]
    strength = case["lora_strength_model"]
    model = pipe_without_lora if strength is None else pipe
    if strength is not None:
        model.set_lora_strength(strength)
    t = e2e_tensors()
    x = t[inputs["x"]["key"]]
    t5, pooled = (t[key] for key in inputs["cond_tensors"])
    height, width = x.shape[2] * 8, x.shape[3] * 8
    sigma = torch.tensor([inputs["sigma"]])
    with torch.inference_mode():
        velocity = model.velocity_model(t5, pooled, inputs["guidance"], height, width)(x, sigma)
    assert max_diff(velocity, golden(case["velocity"])) < COND_TOL
    assert max_diff(x - inputs["sigma"] * velocity, golden(case["denoised"])) < COND_TOL


# ------------------------------------------------------------------------------------------ LoRA on CLIP-L


@pytest.mark.parametrize("case", e2e_manifest()["clip_lora"], ids=lambda c: str(c["lora_strength_clip"]))
def test_clip_pooled_with_lora_at_strength_clip(pipe, case):
    pipe.set_lora_strength(case["lora_strength_clip"])
    t5, pooled = pipe.encode_prompt(PROMPTS[case["prompt_id"]]["text"])
    assert max_diff(pooled, golden(case["clip_pooled"])) < COND_TOL
    assert max_diff(t5, e2e_tensors()[case["t5_cond_unchanged_key"]]) < COND_TOL  # no T5 keys in this LoRA


def _diffusers_weight(pipe: FluxVectorPipeline, comfy_key: str) -> torch.Tensor:
    """The weight ComfyUI names ``comfy_key``, assembled from the diffusers modules (fused BFL weights are the row
    concatenation of their diffusers parts, docs/COMFY_E2E.md section 4)."""
    path = comfy_key.removesuffix(".weight").split(".")
    if path[0] == "clip_l":
        return pipe.text_encoder.get_submodule(".".join(path[3:])).weight
    kind, index, *rest = path[1:]
    block = f"transformer_blocks.{index}" if kind == "double_blocks" else f"single_transformer_blocks.{index}"
    parts = {
        "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
        "txt_mod.lin": ["norm1_context.linear"],
        "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
        "linear2": ["proj_out"],
    }[".".join(rest)]
    return torch.cat([pipe.transformer.get_submodule(f"{block}.{p}").weight for p in parts])


@pytest.mark.parametrize("strength", sorted({w["strength"] for w in e2e_manifest()["lora_patched_weights"]}))
def test_lora_patched_weights(strength):
    fused = load()
    fused.set_lora_strength(strength)
    fused.lora.fuse()
    for entry in (w for w in e2e_manifest()["lora_patched_weights"] if w["strength"] == strength):
        weight = _diffusers_weight(fused, entry["comfy_key"])
        assert max_diff(weight, golden(entry["weight"])) < WEIGHT_TOL, entry["comfy_key"]


def test_every_lora_module_is_placed_where_comfyui_places_it(pipe):
    """All 28 kohya modules of the file are placed: 16 on the transformer, 12 on CLIP-L."""
    modules = e2e_manifest()["lora_file"]["modules"]
    keys = {p.key for p in pipe.lora.patches}
    assert keys == {m["kohya_module"] for m in modules}
    clip = {p.key for p in pipe.lora.patches if p.component == "text_encoder"}
    assert clip == {m["kohya_module"] for m in modules if m["target"].startswith("clip_l.")}


# ------------------------------------------------------------------------------------------ D: end to end


@pytest.mark.parametrize("run", e2e_manifest()["end_to_end"], ids=lambda r: r["id"])
def test_end_to_end_latents_and_pixels(pipe, run):
    assert run["lora_strength_model"] == run["lora_strength_clip"]
    result = pipe(
        run["prompt"],
        negative_prompt=run["negative_prompt"],
        width=run["width"],
        height=run["height"],
        steps=run["steps"],
        seed=run["seed"],
        sampler_name=run["sampler_name"],
        scheduler=run["scheduler"],
        cfg=run["cfg"],
        guidance=run["guidance"],
        lora_strength=run["lora_strength_model"],
        batch_size=run["batch_size"],
        progress=False,
    )
    tensors = run["tensors"]
    assert max_diff(result.latents, golden(tensors["final_model_space"])) < LATENT_TOL
    pixels = np.stack([np.asarray(image) for image in result.images]).astype(np.int16)
    expected = golden(tensors["pixels_uint8"]).numpy().astype(np.int16)
    assert pixels.shape == expected.shape
    diff = np.abs(pixels - expected)
    assert diff.max() <= 1
    assert (diff > 0).mean() <= PIXEL_FRACTION


def test_negative_prompt_of_another_t5_length_is_a_separate_call(pipe):
    """e13's shape, checked directly: a 512-token positive and a 256-token negative at cfg 3."""
    long_prompt = PROMPTS["t5_511"]["text"]
    assert pipe.encode_prompt(long_prompt)[0].shape[1] == 512
    assert pipe.encode_prompt("")[0].shape[1] == 256
    result = pipe(
        long_prompt, negative_prompt="", cfg=3.0, width=64, height=64, steps=2, lora_strength=0, progress=False
    )
    assert result.image.size == (64, 64)


def test_module_functions_equal_the_pipeline(pipe_without_lora):
    """The prompt package used directly gives the pipeline's conditioning (the pipeline adds only the cache)."""
    text = PROMPTS["weights_basic"]["text"]
    tokens = tokenize_prompt(weighted_pieces(text), pipe_without_lora.tokenizer, pipe_without_lora.tokenizer_2)
    with torch.inference_mode():
        t5 = encode_t5(pipe_without_lora.text_encoder_2, tokens, CPU)
        pooled = encode_clip_pooled(pipe_without_lora.text_encoder, tokens, CPU)
    cached_t5, cached_pooled = pipe_without_lora.encode_prompt(text)
    assert torch.equal(t5, cached_t5) and torch.equal(pooled, cached_pooled)
