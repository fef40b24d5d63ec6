"""The weight tiers (issue 30): none | 8bit | nf4 | fp8 for the transformer, the same for T5, the text encoders on
their own device, and the LoRA exact on every tier (strength 0 bitwise the tier without it, switching costs no reload
and gives back the same pixels, a LoRA that cannot reach a quantized layer raises). On the tiny checkpoint, CPU."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from flux_vector import FluxVectorPipeline
from flux_vector.fp8_linear import FP8_DTYPE, FP8_MAX, Fp8Linear, to_fp8
from flux_vector.lora import LoraError, LoraLinear, apply_lora, load_lora_file, parse_lora
from flux_vector.offload import DEVICE, MODEL, module_bytes, offload_plan, place
from flux_vector.quantize import (
    KEEP_FULL_PRECISION,
    NF4_BLOCKSIZE,
    QUANTIZE_CHOICES,
    check_quantize,
    quantize_linears,
    quantize_text_encoder,
    quantize_transformer,
    quantized_tier,
    stays_resident,
)
from flux_vector.quiet import import_bitsandbytes
from flux_vector.tiny import KOHYA_LORA

TIERS = QUANTIZE_CHOICES
QUANTIZED = [t for t in TIERS if t != "none"]
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 3}
PROMPT = "a red heart"


def _quiet(*_):
    return None


def tier_types(tier: str) -> tuple[type, ...]:
    if tier == "fp8":
        return (Fp8Linear,)
    bnb = import_bitsandbytes()
    return (bnb.nn.Linear8bitLt,) if tier == "8bit" else (bnb.nn.Linear4bit,)


def draw(pipe, strength: float) -> tuple[torch.Tensor, np.ndarray]:
    result = pipe(PROMPT, lora_strength=strength, progress=False, **SMALL)
    return result.latents, np.asarray(result.image)


def same(a: tuple[torch.Tensor, np.ndarray], b: tuple[torch.Tensor, np.ndarray]) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def load(tier: str = "none", **options) -> FluxVectorPipeline:
    return FluxVectorPipeline.from_pretrained("tiny", quantize=tier, device="cpu", log=_quiet, **options)


@pytest.fixture(scope="module")
def text_lora(tiny_dir, tmp_path_factory):
    """The tiny kohya LoRA plus factors on every T5 linear (``lora_te2_``) and one CLIP linear (``lora_te1_``)."""
    from safetensors.torch import save_file

    pipe = load(lora="none")
    state = dict(load_lora_file(tiny_dir / KOHYA_LORA))
    generator = torch.Generator().manual_seed(5)
    linears = [(n, m) for n, m in pipe.text_encoder_2.named_modules() if type(m) is nn.Linear]
    clip = next((n, m) for n, m in pipe.text_encoder.named_modules() if n.endswith("q_proj"))
    for prefix, (name, module) in [*(("lora_te2_", x) for x in linears), ("lora_te1_", clip)]:
        key = prefix + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(2, module.in_features, generator=generator) * 0.3
        state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=generator) * 0.3
    path = tmp_path_factory.mktemp("lora") / "text_lora.safetensors"
    save_file(state, str(path))
    return path


# ------------------------------------------------------------------------------------------ names and errors


def test_check_quantize_names_the_field_and_the_allowed_values():
    assert check_quantize(None) == "none"
    assert [check_quantize(t) for t in TIERS] == list(TIERS)
    for bad in ("int4", "NF4", 8, True):
        with pytest.raises(ValueError, match=r"quantize_text=.* must be None or one of 'none', '8bit', 'nf4', 'fp8'"):
            check_quantize(bad, "quantize_text")


@pytest.mark.parametrize(
    ("options", "field"),
    [({"quantize": "int4"}, "quantize"), ({"quantize_text": "q8"}, "quantize_text"), ({"text_device": "gpu"}, "")],
)
def test_from_pretrained_rejects_bad_values_naming_the_field(tiny_dir, options, field):
    with pytest.raises(ValueError, match=f"{field or 'text_device'}=") as info:
        FluxVectorPipeline.from_pretrained("tiny", device="cpu", log=_quiet, **options)
    if field:
        assert "'none', '8bit', 'nf4', 'fp8'" in str(info.value)


def test_cli_takes_the_tiers_and_rejects_others(capsys):
    from flux_vector.cli.commands import _load_options
    from flux_vector.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "generate",
            "--prompt",
            "x",
            "--out",
            "x.png",
            "--quantize",
            "nf4",
            "--quantize-text",
            "fp8",
            "--text-device",
            "cpu",
        ]
    )
    options = _load_options(args)
    assert (options["quantize"], options["quantize_text"], options["text_device"]) == ("nf4", "fp8", "cpu")
    for flag in ("--quantize", "--quantize-text"):
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", "--prompt", "x", "--out", "x.png", flag, "int4"])
        err = capsys.readouterr().err
        assert flag in err and "'none', '8bit', 'nf4', 'fp8'" in err


def test_serve_and_worker_take_the_text_options():
    import inspect

    from flux_vector.jobs.worker_process import run_worker
    from flux_vector.server.serve import serve

    for entry in (serve, run_worker):
        assert {"quantize", "quantize_text", "text_device"} <= set(inspect.signature(entry).parameters)


# ------------------------------------------------------------------------------------------------ the layers


def test_fp8_linear_saturates_and_computes_in_the_input_dtype():
    linear = nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight[0, 0] = 1000.0  # beyond e4m3's finite range: saturated, not NaN
        linear.weight[0, 1] = -1000.0
    layer = Fp8Linear.from_linear(linear)
    assert layer.weight.dtype == FP8_DTYPE and (layer.in_features, layer.out_features) == (8, 4)
    assert layer.weight[0, 0].float() == FP8_MAX and layer.weight[0, 1].float() == -FP8_MAX
    x = torch.randn(3, 8)
    expected = torch.nn.functional.linear(x, layer.weight.float(), linear.bias)
    assert torch.equal(layer(x), expected)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_fp8_weights_already_in_fp8_are_wrapped_without_a_copy():
    """An fp8 checkpoint's linears (weights float8_e4m3fn in the file, kept so) are wrapped as they are, also a kept
    (full-precision) layer, which could not compute as a plain linear with fp8 weights."""
    model = nn.Module()
    model.block = nn.Linear(16, 8)
    model.proj_out = nn.Linear(8, 4)
    for linear in (model.block, model.proj_out):
        linear.weight = nn.Parameter(to_fp8(linear.weight.data), requires_grad=False)
    pointers = [model.block.weight.data_ptr(), model.proj_out.weight.data_ptr()]
    assert quantize_linears(model, "fp8", "cpu", keep=KEEP_FULL_PRECISION) == 2
    assert isinstance(model.block, Fp8Linear) and isinstance(model.proj_out, Fp8Linear)
    assert [model.block.weight.data_ptr(), model.proj_out.weight.data_ptr()] == pointers


def test_nf4_layer_recipe_and_bytes():
    """nf4: blocksize 64, no double quantization, compute dtype = the weights' dtype; 0.5 byte per weight plus one
    fp32 absmax per 64 weights (what the memory table computes from)."""
    model = nn.Sequential(nn.Linear(128, 64))
    bias_bytes = 64 * 4
    assert quantize_linears(model, "nf4", "cpu") == 1
    layer = model[0]
    state = layer.weight.quant_state
    assert (state.quant_type, state.blocksize, state.nested) == ("nf4", NF4_BLOCKSIZE, False)
    assert layer.compute_dtype == torch.float32
    assert module_bytes(model) == 128 * 64 // 2 + (128 * 64 // NF4_BLOCKSIZE) * 4 + 16 * 4 + bias_bytes
    assert quantized_tier(model) == "nf4" and stays_resident(model)


def test_8bit_bytes_count_the_row_scales():
    model = nn.Sequential(nn.Linear(32, 16, bias=False))
    quantize_linears(model, "8bit", "cpu")
    assert module_bytes(model) == 32 * 16 + 16 * 4
    with torch.inference_mode():  # the first forward moves the scales from the weight to the layer's state
        model.eval()(torch.randn(2, 32))
    assert module_bytes(model) == 32 * 16 + 16 * 4


def test_t5_tier_keeps_wo_in_full_precision(tiny_dir):
    pipe = load(lora="none")
    t5 = pipe.text_encoder_2
    linears = {n for n, m in t5.named_modules() if type(m) is nn.Linear}
    kept = {n for n in linears if n.rsplit(".", 1)[-1] == "wo"}
    assert kept, "the tiny T5 has wo layers"
    assert quantize_text_encoder(t5, "nf4", "cpu") == len(linears) - len(kept)
    assert {n for n, m in t5.named_modules() if type(m) is nn.Linear} == kept
    assert quantize_text_encoder(t5, "none", "cpu") == 0


def test_offload_keeps_bitsandbytes_resident_and_moves_fp8():
    for tier, resident in (("8bit", True), ("nf4", True), ("fp8", False)):
        model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64))
        quantize_transformer(model, tier, "cpu")
        assert stays_resident(model) is resident, tier
        assert offload_plan("model", resident_transformer=stays_resident(model))["transformer"] == (
            DEVICE if resident else MODEL
        )
    nf4 = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64))
    quantize_transformer(nf4, "nf4", "cpu")
    packed = nf4[0].weight
    place(nf4, torch.device("cpu"))  # the 4-bit layer is left alone, the rest moves
    assert nf4[0].weight is packed and nf4[0].weight.quant_state is packed.quant_state


# --------------------------------------------------------------------------------------------- per tier, tiny


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_generates_and_its_lora_is_exact(tiny_dir, tier):
    """Finite pixels; strength 0 is bitwise the tier without the LoRA; 1 differs; 1 -> 0 -> 1 -> 0.5 -> 1 on one
    loaded pipeline (no reload) gives back the same latents and pixels bitwise."""
    plain = draw(load(tier, lora="none"), 0.0)
    assert torch.isfinite(plain[0]).all() and plain[1].std() > 0
    pipe = load(tier)
    if tier != "none":
        assert quantized_tier(pipe.transformer) == tier
        for patch in pipe.lora.patches:  # every LoRA layer sits on a layer of the tier
            assert isinstance(patch.module, tier_types(tier)), patch.target
    assert pipe.fuse_lora(log=_quiet) is (tier == "none")  # quantized tiers keep the runtime adapter
    first = draw(pipe, 1.0)
    assert not same(first, plain)
    off = draw(pipe, 0.0)
    assert same(off, plain)
    assert same(draw(pipe, 1.0), first)
    half = draw(pipe, 0.5)
    assert not same(half, first) and not same(half, plain)
    assert same(draw(pipe, 0.0), off)
    assert same(draw(pipe, 1.0), first)


@pytest.mark.parametrize("tier", QUANTIZED)
def test_fuse_lora_says_which_tier_keeps_the_adapter(tiny_dir, tier):
    lines: list[str] = []
    assert load(tier).fuse_lora(log=lines.append) is False
    assert f"quantized ({tier}" in lines[-1] and "runtime adapter" in lines[-1]


@pytest.mark.parametrize("text_tier", TIERS)
def test_t5_tiers_generate_and_a_text_lora_is_exact(tiny_dir, text_lora, text_tier):
    plain = draw(load(quantize_text=text_tier, lora="none"), 0.0)
    assert torch.isfinite(plain[0]).all()
    pipe = load(quantize_text=text_tier, lora=text_lora)
    assert pipe.lora.touches_text
    assert quantized_tier(pipe.text_encoder_2) == (None if text_tier == "none" else text_tier)
    t5_patches = [p for p in pipe.lora.patches if p.component == "text_encoder_2"]
    assert {p.target for p in t5_patches} == {
        n for n, m in pipe.text_encoder_2.named_modules() if isinstance(m, LoraLinear)
    }
    first = draw(pipe, 1.0)
    assert not same(first, plain)
    assert same(draw(pipe, 0.0), plain)
    assert not same(draw(pipe, 0.5), first)
    assert same(draw(pipe, 1.0), first)


def test_both_tiers_and_text_device_together(tiny_dir, text_lora):
    """nf4 transformer, fp8 T5, text encoders on their own device ("cpu:0": a device other than the pipeline's
    "cpu" to this code, the same memory): they stay out of the offload plan and compute there; the embeddings come
    to the device; the images are those of the same tiers without text_device, bitwise."""
    base = load("nf4", quantize_text="fp8", lora=text_lora)
    apart = load("nf4", quantize_text="fp8", lora=text_lora, text_device="cpu:0")
    assert apart.text_device == torch.device("cpu:0") and base.text_device is None
    assert apart.offload_plan["text_encoder"] == apart.offload_plan["text_encoder_2"] == "cpu:0"
    assert apart._diffusers.text_encoder is None and apart._diffusers.text_encoder_2 is None
    embeds, pooled = apart.encode_prompt(PROMPT)
    assert embeds.device == pooled.device == apart.device
    for strength in (1.0, 0.0):
        assert same(draw(apart, strength), draw(base, strength))


def test_text_device_same_as_device_is_a_no_op(tiny_dir):
    pipe = load(lora="none", text_device="cpu")
    assert pipe.text_device is None and pipe._diffusers.text_encoder is pipe.text_encoder


# ------------------------------------------------------------------------------ a LoRA that cannot reach its layer


def test_patches_whose_layers_were_quantized_away_raise_naming_them(tiny_dir):
    """A LoRA parsed before quantization points at linears that quantization replaced: applying it is a LoraError
    naming the layers, not a silent no-op."""
    pipe = load(lora="none")
    patches = parse_lora(load_lora_file(tiny_dir / KOHYA_LORA), pipe.transformer)
    quantize_transformer(pipe.transformer, "fp8", "cpu")
    with pytest.raises(LoraError, match="module not found") as info:
        apply_lora(patches, models=[pipe.transformer])
    assert "transformer.transformer_blocks.0.attn.to_q" in str(info.value)


class Opaque(nn.Module):
    """A layer type the adapter cannot wrap (no in_features/out_features): stands for a foreign quantized layer."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("tier", QUANTIZED)
def test_a_lora_on_a_layer_the_adapter_cannot_wrap_raises(tiny_dir, tier):
    pipe = load(tier, lora="none")
    block = pipe.transformer.transformer_blocks[0].attn
    block.to_q = Opaque(block.to_q)
    with pytest.raises(LoraError) as info:
        parse_lora(load_lora_file(tiny_dir / KOHYA_LORA), pipe.transformer)
    assert "double_blocks_0_img_attn_qkv" in str(info.value)  # the kohya key whose q rows have nowhere to go


def test_quantizing_with_nothing_to_quantize_raises():
    with pytest.raises(ValueError, match=r"found no nn\.Linear"):
        quantize_linears(nn.Sequential(nn.LayerNorm(4)), "fp8", "cpu")
    with pytest.raises(ValueError, match="other than 'none'"):
        quantize_linears(nn.Sequential(nn.Linear(4, 4)), "none", "cpu")


def test_cli_namespace_defaults():
    """--quantize defaults to auto (the tier chosen by free memory: memory_tiers.py), the text encoder's options to
    none given."""
    from flux_vector.cli.parser import build_parser
    from flux_vector.memory_tiers import AUTO

    args = build_parser().parse_args(["generate", "--prompt", "x", "--out", "x.png"])
    assert isinstance(args, argparse.Namespace)
    assert (args.quantize, args.quantize_text, args.text_device) == (AUTO, None, None)


def test_fp8_layers_run_under_group_offload_hooks(tiny_dir):
    """fp8 weights are plain tensors: diffusers' block-level group offload (CPU to CPU here: the hooks run, the
    tensors move nowhere) wraps the fp8 transformer, and the LoRA on it, without changing a latent."""
    from flux_vector.offload import _group_offload

    pipe = load("fp8")
    before = draw(pipe, 1.0)
    _group_offload(pipe.transformer, torch.device("cpu"))
    assert hasattr(pipe.transformer, "_diffusers_hook")
    assert same(draw(pipe, 1.0), before)
    assert not same(draw(pipe, 0.0), before)


@pytest.mark.slow
def test_generate_command_takes_the_tiers(tiny_dir, tmp_path):
    """``flux-vector generate`` with both tiers and the text encoders on their own device: one image, and the log
    lines name the tiers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "x.png"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    env.pop("FLUX_VECTOR_MODEL", None)
    args = ["--model", "tiny", "--quantize", "nf4", "--quantize-text", "fp8", "--text-device", "cpu"]
    size = ["--width", "64", "--height", "64", "--steps", "1", "--out", str(out), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", "generate", "--prompt", PROMPT, *args, *size],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    log = proc.stdout + proc.stderr
    assert "bitsandbytes nf4" in log and "fp8 e4m3 storage" in log, log
