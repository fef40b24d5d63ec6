"""The GGUF transformer tier (flux_vector/gguf_model.py): a .gguf made from the tiny transformer with the ``gguf``
package (Q8_0 and 4-bit types, with and without ComfyUI's prefix) loads through the code a downloaded
``flux1-dev-Q8_0.gguf`` takes, generates close to the float32 model, carries the LoRA exactly, and bad files are
clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flux_vector.gguf_model import (
    COMFY_PREFIX,
    GGUFError,
    GGUFLinear,
    fast_for_gguf,
    gguf_layers,
    load_gguf_transformer,
    read_gguf,
    write_flux_gguf,
)

SIZE = dict(width=64, height=64, steps=4, seed=3, progress=False)
QUIET = dict(log=lambda *_: None, device="cpu")
# PSNR floors (dB) against the float32 folder's pixels; measured on the tiny model: Q8_0 ~58, Q5_1 ~46, Q4_x ~39.
PSNR_FLOOR = {"Q8_0": 45.0, "Q5_1": 35.0, "Q4_1": 30.0, "Q4_0": 30.0}


def psnr(a, b) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def files(tiny_pipe, tmp_path_factory):
    """The tiny transformer as .gguf files: name -> path."""
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for qtype, prefix in (("Q8_0", ""), ("Q4_1", ""), ("Q4_0", COMFY_PREFIX), ("Q5_1", ""), ("Q8_0", COMFY_PREFIX)):
        name = qtype + ("-comfy" if prefix else "")
        out[name] = folder / f"flux1-tiny-{name}.gguf"
        write_flux_gguf(tiny_pipe.transformer, out[name], qtype, prefix=prefix)
    return out


@pytest.fixture(scope="module")
def q8_lora(files):
    from flux_vector import FluxVectorPipeline

    return FluxVectorPipeline.from_pretrained(str(files["Q8_0"]), base="tiny", **QUIET)


def _load(path, **options):
    from flux_vector import FluxVectorPipeline

    return FluxVectorPipeline.from_pretrained(str(path), base="tiny", **{**QUIET, **options})


# --------------------------------------------------------------------------------------------------- reading
def test_quantized_rows_split_exactly(files, tiny_pipe):
    """Every GGUF linear holds exactly its rows of the file's (fused) tensor: dequantized by diffusers' functions it
    equals gguf's own numpy dequantization of those rows, and stays within one quantization step of the float
    weight it was made from."""
    from gguf.quants import dequantize

    file = read_gguf(files["Q4_1"])
    model = load_gguf_transformer(files["Q4_1"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    q = model.get_submodule("single_transformer_blocks.1.attn.to_k")
    assert isinstance(q, GGUFLinear) and q.quant_type.name == "Q4_1"
    fused = file.tensors["single_blocks.1.linear1.weight"]  # q | k | v | mlp rows
    inner = q.out_features
    theirs = dequantize(fused.numpy(), file.quant_types["single_blocks.1.linear1.weight"])[inner : 2 * inner]
    assert np.array_equal(q.dequantized(torch.float32).numpy(), theirs)
    float_weights = {k.replace(".base.", "."): v for k, v in tiny_pipe.transformer.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, GGUFLinear):
            w = float_weights[f"{name}.weight"]
            step = w.abs().reshape(w.shape[0], -1, 32).amax(-1, keepdim=True) / 7  # Q4_1: 15 levels over the range
            err = (module.dequantized(torch.float32) - w).abs().reshape(w.shape[0], -1, 32)
            assert (err <= step + 1e-6).all(), name


def _forward_inputs() -> dict:
    """One call's inputs for the tiny transformer (16 image tokens, 8 text tokens)."""
    torch.manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, 16, 64),
        encoder_hidden_states=torch.randn(1, 8, 32),
        pooled_projections=torch.randn(1, 32),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(8, 3),
        return_dict=False,
    )


def tiny_pipe_folder():
    from flux_vector.tiny import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


def test_every_quant_type_diffusers_reads_dequantizes_as_gguf_does():
    """All of diffusers' types (Q4_0..Q8_0, the K-quants, IQ4_NL/IQ4_XS), on arbitrary blocks (finite scales):
    ``GGUFLinear`` computes with exactly the matrix gguf's own numpy code decodes."""
    import gguf
    from gguf.quants import dequantize as reference

    from flux_vector.gguf_model import supported_quant_types

    kinds = supported_quant_types()
    assert {"Q8_0", "Q4_1", "Q4_K", "Q6_K", "IQ4_XS"} <= {k.name for k in kinds}
    rng = np.random.default_rng(0)
    for kind in kinds:
        block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
        data = rng.integers(0, 0x60, size=(3, 2 * type_size), dtype=np.uint8)  # high bytes < 0x78: finite fp16
        layer = GGUFLinear(2 * block_size, 3, kind, torch.from_numpy(data))
        expected = reference(data, kind)
        assert np.array_equal(layer.dequantized(torch.float32).numpy(), expected), kind.name
        x = torch.randn(5, 2 * block_size)
        assert torch.allclose(layer(x), x @ torch.from_numpy(expected).T, rtol=1e-5, atol=1e-3), kind.name


def test_prefixed_file_loads_the_same_weights(files):
    plain = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    comfy = load_gguf_transformer(files["Q8_0-comfy"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    a, b = plain.state_dict(), comfy.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(gguf_layers(plain)) > 0
    assert all(layer.weight.dtype == torch.uint8 for layer in gguf_layers(plain))


def test_log_names_the_quant_types_and_bytes(files):
    lines: list[str] = []
    _load(files["Q4_0-comfy"], lora="none", log=lines.append)
    line = next(x for x in lines if x.startswith("gguf:"))
    assert "Q4_0" in line and "F32" in line and "MiB" in line and "linears kept quantized" in line


# ------------------------------------------------------------------------------------------------ generating
@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1", "Q4_1", "Q4_0-comfy"])
def test_generates_close_to_float32(files, tiny_pipe, qtype):
    pipe = _load(files[qtype], lora="none")
    ours = pipe("a cat", lora_strength=0, **SIZE)
    reference = tiny_pipe("a cat", lora_strength=0, **SIZE)
    figure = psnr(ours.image, reference.image)
    print(f"{qtype}: PSNR {figure:.1f} dB against the float32 folder")
    assert figure >= PSNR_FLOOR[qtype.split("-")[0]]
    assert figure < float("inf")  # quantized: not the same pixels


def test_generates_in_bfloat16(files):
    """The GPU's dtype: quantized layers dequantize into bfloat16, float weights load as bfloat16."""
    pipe = _load(files["Q8_0-comfy"], lora="none", dtype="bfloat16")
    assert all(p.dtype in (torch.uint8, torch.bfloat16) for p in pipe.transformer.parameters())
    result = pipe("a cat", lora_strength=0, **{**SIZE, "steps": 2})
    assert torch.isfinite(result.latents).all()
    assert np.asarray(result.image).std() > 0


def test_bytes_are_smaller_than_float(files, tiny_pipe):
    from flux_vector.offload import module_bytes

    q8 = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    q4 = load_gguf_transformer(files["Q4_1"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    float_linears = sum(
        module_bytes(tiny_pipe.transformer.get_submodule(name).base)
        if hasattr(tiny_pipe.transformer.get_submodule(name), "base")
        else module_bytes(tiny_pipe.transformer.get_submodule(name))
        for name, m in q8.named_modules()
        if isinstance(m, GGUFLinear)
    )
    q8_linears = sum(module_bytes(m) for m in gguf_layers(q8))
    q4_linears = sum(module_bytes(m) for m in gguf_layers(q4))
    assert q4_linears < q8_linears < float_linears / 3  # 34 bytes / 32 weights vs 4 bytes each, biases in float


# ------------------------------------------------------------------------------------------------------ LoRA
def test_lora_strength_zero_is_bitwise_the_gguf_without_lora(files, q8_lora):
    plain = _load(files["Q8_0"], lora="none")
    assert q8_lora.lora is not None
    wrapped = [m for m in q8_lora.lora.modules if isinstance(m.base, GGUFLinear)]
    assert len(wrapped) == len(q8_lora.lora.modules)  # every LoRA layer of the transformer is a GGUF layer...
    assert sum(p.component == "transformer" for p in q8_lora.lora.patches) > 0
    a = q8_lora("a cat", lora_strength=0, **SIZE)
    b = plain("a cat", lora_strength=0, **SIZE)
    assert torch.equal(a.latents, b.latents)


def test_lora_strength_switches_without_drift(q8_lora):
    one = q8_lora("a cat", lora_strength=1, **SIZE)
    zero = q8_lora("a cat", lora_strength=0, **SIZE)
    again = q8_lora("a cat", lora_strength=1, **SIZE)
    zero_again = q8_lora("a cat", lora_strength=0, **SIZE)
    assert not torch.equal(one.latents, zero.latents)
    assert torch.equal(one.latents, again.latents)
    assert torch.equal(zero.latents, zero_again.latents)


def test_lora_on_gguf_matches_lora_on_dequantized_float(files, q8_lora):
    """The adapter adds the same delta on a GGUF layer as on a float layer holding the dequantized weight."""
    from flux_vector.lora import apply_lora, load_lora_file, parse_lora
    from flux_vector.tiny import KOHYA_LORA

    model = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    as_float = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    for name, layer in list(as_float.named_modules()):
        if isinstance(layer, GGUFLinear):
            linear = torch.nn.Linear(layer.in_features, layer.out_features)
            linear.weight.data = layer.dequantized(torch.float32)
            linear.bias.data = layer.bias.data
            parent, _, attr = name.rpartition(".")
            setattr(as_float.get_submodule(parent), attr, linear)
    lora = load_lora_file(tiny_pipe_folder() / KOHYA_LORA)
    transformer_keys = {k: v for k, v in lora.items() if "te1" not in k and "te_" not in k and "text" not in k}
    for m in (model, as_float):
        apply_lora(parse_lora(transformer_keys, m), strength=0.7)
    kwargs = _forward_inputs()
    with torch.no_grad():
        a, b = model(**kwargs)[0], as_float(**kwargs)[0]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_fuse_lora_says_gguf_is_kept_as_an_adapter(q8_lora):
    from flux_vector.lora import LoraError

    lines: list[str] = []
    assert q8_lora.fuse_lora(log=lines.append) is False
    assert "runtime adapter" in lines[0] and "GGUF weights stay quantized" in lines[0]
    assert not q8_lora.lora.fused
    with pytest.raises(LoraError, match="GGUFLinear"):
        q8_lora.lora.fuse()


def test_lora_that_cannot_reach_a_gguf_layer_raises(files, q8_lora):
    from flux_vector.lora import LoraError, parse_lora

    model = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    inner = model.get_submodule("transformer_blocks.0.attn.to_q").in_features
    wrong_width = {
        "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, inner + 1),
        "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(inner, 4),
    }
    with pytest.raises(LoraError, match="double_blocks_0_img_attn_proj"):
        parse_lora(wrong_width, model)
    nowhere = {
        "lora_unet_double_blocks_9_img_attn_proj.lora_down.weight": torch.zeros(4, inner),
        "lora_unet_double_blocks_9_img_attn_proj.lora_up.weight": torch.zeros(inner, 4),
    }
    with pytest.raises(LoraError, match="cannot be placed"):
        parse_lora(nowhere, model)


# --------------------------------------------------------------------------------------------------- offload
def test_group_offload_hooks_carry_the_quantized_bytes(files):
    """GGUF bytes are plain uint8 parameters: diffusers' group offload (what offload='group' applies to the
    transformer) moves them like any tensor and the output is unchanged (CPU -> CPU here: the hooks run)."""
    from diffusers.hooks import apply_group_offloading

    from flux_vector.offload import GROUP, MODEL, offload_plan

    assert offload_plan("group")["transformer"] == GROUP  # a GGUF transformer is offloaded like a float one
    assert offload_plan("model")["transformer"] == MODEL
    model = load_gguf_transformer(files["Q4_1"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    kwargs = _forward_inputs()
    with torch.no_grad():
        before = model(**kwargs)[0]
        apply_group_offloading(
            model, onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
        )
        after = model(**kwargs)[0]
    assert torch.equal(before, after)
    assert all(layer.weight.dtype == torch.uint8 for layer in gguf_layers(model))


def test_sequential_offload_hooks_rebuild_the_quantized_bytes(files):
    """accelerate's sequential offload (offload='sequential') leaves every parameter on the meta device and rebuilds
    it per call from a CPU copy: the GGUF bytes come back as uint8 and the output is unchanged."""
    from accelerate import cpu_offload

    model = load_gguf_transformer(files["Q4_1"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    kwargs = _forward_inputs()
    with torch.no_grad():
        before = model(**kwargs)[0]
        cpu_offload(model, execution_device=torch.device("cpu"))
        assert gguf_layers(model)[0].weight.device.type == "meta"
        after = model(**kwargs)[0]
    assert torch.equal(before, after)


def test_to_dtype_keeps_the_bytes(files):
    model = load_gguf_transformer(files["Q8_0"], tiny_pipe_folder(), torch.float32, log=lambda *_: None)
    layer = gguf_layers(model)[0]
    raw = layer.weight.detach().clone()
    model.to(torch.bfloat16)
    assert layer.weight.dtype == torch.uint8 and torch.equal(layer.weight, raw)
    assert layer.bias.dtype == torch.bfloat16
    x = torch.randn(2, layer.in_features, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ bad inputs
def test_quantize_with_a_gguf_model_is_refused(files):
    with pytest.raises(ValueError, match="already quantized"):
        _load(files["Q8_0"], lora="none", quantize="8bit")


def test_fast_mode_drops_fused_qkv_and_fp8_for_gguf():
    full = {"fuse_qkv": "auto", "attention": "auto", "compile": "auto", "fp8": "auto"}
    assert fast_for_gguf(True, full) == {**full, "fuse_qkv": False, "fp8": False}
    assert fast_for_gguf(None, full) is None
    assert fast_for_gguf({"attention": "auto"}, full) == {"attention": "auto", "fuse_qkv": False, "fp8": False}
    with pytest.raises(ValueError, match="fuse_qkv=True"):
        fast_for_gguf({"fuse_qkv": True}, full)


def test_pipeline_fast_mode_on_gguf_keeps_the_layers_quantized(files):
    at_load = _load(files["Q8_0"], lora="none", fast={"fuse_qkv": "auto"})
    assert at_load.fast_plan is not None and not at_load.fast_plan.fuse_qkv and not at_load.fast_plan.fp8
    later = _load(files["Q8_0"])
    plan = later.enable_fast({"fuse_qkv": "auto"}, full=False, log=lambda *_: None)
    assert not plan.fuse_qkv
    assert len(gguf_layers(later.transformer)) == len(gguf_layers(at_load.transformer)) > 0
    assert later("a cat", **{**SIZE, "steps": 1}).image is not None


def test_a_missing_gguf_is_weights_not_found(tmp_path):
    from flux_vector.models import WeightsNotFound, check_weights

    with pytest.raises(WeightsNotFound, match="not found"):
        check_weights(str(tmp_path / "flux1-dev-Q8_0.gguf"), None, base="tiny")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "flux1-dev-Q8_0.gguf"
    path.write_bytes(b"this is a safetensors file, renamed" + bytes(64))
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        read_gguf(path)


def test_wrong_architecture(tmp_path):
    import gguf

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"general\.architecture is 'llama'"):
        read_gguf(path)


def test_missing_tensors(tiny_pipe, tmp_path):
    from flux_vector.bfl import to_bfl

    t = tiny_pipe.transformer
    plain = {k.replace(".base.", "."): v for k, v in t.state_dict().items()}
    bfl = to_bfl(plain, t.config.num_layers, t.config.num_single_layers)
    del bfl["double_blocks.1.img_attn.qkv.weight"]
    path = tmp_path / "short.gguf"
    write_flux_gguf(bfl, path, "Q8_0")
    with pytest.raises(GGUFError, match=r"lacks 1 transformer weights.*double_blocks\.1\.img_attn\.qkv\.weight"):
        load_gguf_transformer(path, tiny_pipe_folder(), torch.float32, log=lambda *_: None)


def test_unsupported_quant_type_names_the_tensor(tmp_path):
    import gguf
    from gguf.quants import quantize

    path = tmp_path / "ternary.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    kind = gguf.GGMLQuantizationType.TQ1_0  # a type gguf writes and diffusers cannot dequantize
    data = quantize(np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32), kind)
    writer.add_tensor("double_blocks.0.img_mlp.0.weight", data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"double_blocks\.0\.img_mlp\.0\.weight is TQ1_0, a type diffusers cannot"):
        read_gguf(path)


def test_importing_flux_vector_does_not_import_gguf(files):
    """``gguf`` is imported only when a file is read; reading one imports diffusers' GGUF helpers without
    bitsandbytes (whose import asks the Hub for a kernel)."""
    code = (
        "import sys, torch, flux_vector.pipeline, flux_vector.models, flux_vector.lora; print('gguf' in sys.modules); "
        "from flux_vector.gguf_model import read_gguf, dequantize; f = read_gguf(sys.argv[1]); "
        "name, kind = next(iter(f.quant_types.items())); dequantize(f.tensors[name], kind, torch.float32); "
        "print('gguf' in sys.modules, 'bitsandbytes' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(files["Q8_0"])], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "False"]


# ------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_generates_from_a_gguf_with_base(files, tmp_path):
    out = tmp_path / "cat.png"
    proc = subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", "generate", "--model", str(files["Q4_1"]), "--base", "tiny"]
        + ["--prompt", "a cat", "--width", "64", "--height", "64", "--steps", "2", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "saved" in proc.stdout
    assert "Q4_1" in proc.stdout + proc.stderr  # the log names the file's quant types
