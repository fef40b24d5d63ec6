"""flux_vector.lora on the tiny real-architecture transformer: every key layout placed, and the result exact.

Expected deltas are computed here from the files with this test's own BFL -> diffusers table (tiny sizes written out
by hand), not from LoraPatch, so a wrong slice or scale in the parser cannot pass.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from flux_vector.lora import (
    LoraError,
    LoraLinear,
    apply_lora,
    check_strength,
    load_lora,
    load_lora_file,
    parse_lora,
)
from flux_vector.tiny import DIFFUSERS_LORA, KOHYA_LORA, TRANSFORMER_CONFIG, bfl_lora_targets, write_tiny_loras

STRENGTHS = (1.0, -1.0, 2.5, -10.0, 10.0, 0.0)
INNER, MLP = 32, 128  # tiny: 2 heads x 16, mlp_ratio 4


@pytest.fixture(scope="module")
def pristine():
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return FluxTransformer2DModel(**TRANSFORMER_CONFIG).eval()


@pytest.fixture(scope="module")
def lora_dir(pristine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    write_tiny_loras(pristine, folder)
    return folder


@pytest.fixture()
def transformer(pristine):
    return copy.deepcopy(pristine)


@pytest.fixture(scope="module")
def kohya_sd(lora_dir):
    return load_lora_file(lora_dir / KOHYA_LORA)


@pytest.fixture(scope="module")
def diffusers_sd(lora_dir):
    return load_lora_file(lora_dir / DIFFUSERS_LORA)


# ----------------------------------------------------------------------------------------- the test's own mapping


def _bfl_rows(name: str) -> list[tuple[str, int, int]]:
    """BFL name -> [(diffusers module, first row in up, rows)] for the tiny model, written out by hand."""
    kind, i, rest = name.split(".", 2)
    if kind == "double_blocks":
        b = f"transformer_blocks.{i}"
        table = {
            "img_attn.qkv": [
                (f"{b}.attn.to_q", 0, INNER),
                (f"{b}.attn.to_k", INNER, INNER),
                (f"{b}.attn.to_v", 2 * INNER, INNER),
            ],
            "txt_attn.qkv": [
                (f"{b}.attn.add_q_proj", 0, INNER),
                (f"{b}.attn.add_k_proj", INNER, INNER),
                (f"{b}.attn.add_v_proj", 2 * INNER, INNER),
            ],
            "img_attn.proj": [(f"{b}.attn.to_out.0", 0, INNER)],
            "txt_attn.proj": [(f"{b}.attn.to_add_out", 0, INNER)],
            "img_mlp.0": [(f"{b}.ff.net.0.proj", 0, MLP)],
            "img_mlp.2": [(f"{b}.ff.net.2", 0, INNER)],
            "txt_mlp.0": [(f"{b}.ff_context.net.0.proj", 0, MLP)],
            "txt_mlp.2": [(f"{b}.ff_context.net.2", 0, INNER)],
            "img_mod.lin": [(f"{b}.norm1.linear", 0, 6 * INNER)],
            "txt_mod.lin": [(f"{b}.norm1_context.linear", 0, 6 * INNER)],
        }
    else:
        b = f"single_transformer_blocks.{i}"
        table = {
            "linear1": [
                (f"{b}.attn.to_q", 0, INNER),
                (f"{b}.attn.to_k", INNER, INNER),
                (f"{b}.attn.to_v", 2 * INNER, INNER),
                (f"{b}.proj_mlp", 3 * INNER, MLP),
            ],
            "linear2": [(f"{b}.proj_out", 0, INNER)],
            "modulation.lin": [(f"{b}.norm.linear", 0, 3 * INNER)],
        }
    return table[rest]


def _bfl_names() -> dict[str, str]:
    """kohya base key -> BFL dotted name, from tiny.bfl_lora_targets (the names the kohya file was written from)."""
    return {"lora_unet_" + n.replace(".", "_"): n for n in bfl_lora_targets(TRANSFORMER_CONFIG)}


def _kohya_deltas(sd) -> dict[str, torch.Tensor]:
    """diffusers module -> full ΔW at strength 1 (alpha / rank * up @ down, row-split)."""
    deltas: dict[str, torch.Tensor] = {}
    for key, bfl in _bfl_names().items():
        down, up = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"]
        full = (float(sd[f"{key}.alpha"]) / down.shape[0]) * (up @ down)
        for module, start, rows in _bfl_rows(bfl):
            deltas[module] = full[start : start + rows]
    return deltas


def _diffusers_deltas(sd) -> dict[str, torch.Tensor]:
    return {
        key[len("transformer.") : -len(".lora_A.weight")]: sd[key.replace("lora_A", "lora_B")] @ sd[key]
        for key in sd
        if key.endswith(".lora_A.weight")
    }


def _deltas(name: str, sd) -> dict[str, torch.Tensor]:
    return _kohya_deltas(sd) if name == "kohya" else _diffusers_deltas(sd)


def _patch_deltas(patches) -> dict[str, torch.Tensor]:
    """target -> summed ΔW at strength 1, as the parser placed it."""
    out: dict[str, torch.Tensor] = {}
    for p in patches:
        m = p.module
        d = out.setdefault(p.target, torch.zeros(m.out_features, m.in_features))
        d[p.offset : p.offset + p.rows] += p.delta(1.0)
    return out


# ----------------------------------------------------------------------------------------- checks


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def _inputs(model: nn.Module, names) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {n: torch.randn(2, 5, model.get_submodule(n).in_features, generator=g) for n in names}


def _check_adapter(model, originals, deltas, xs, s):
    for name, delta in deltas.items():
        module = model.get_submodule(name)
        assert isinstance(module, LoraLinear), name
        base = originals[name]
        got = module(xs[name])
        if s == 0:
            assert torch.equal(got, base(xs[name])), f"{name}: strength 0 is not bitwise the original"
            continue
        want = F.linear(xs[name], base.weight + s * delta, base.bias)
        assert _rel(got, want) < 1e-5, f"{name} at strength {s}: rel error {_rel(got, want):.2e}"


def _check_fused(model, originals, deltas, xs, s):
    for name, delta in deltas.items():
        module = model.get_submodule(name)
        weight, w0 = module.base.weight, originals[name].weight
        if s == 0:
            assert torch.equal(weight, w0), name
            assert torch.equal(module(xs[name]), originals[name](xs[name])), name
            continue
        want = w0.float() + s * delta
        torch.testing.assert_close(weight, want, rtol=2e-7, atol=2e-7, msg=lambda m, n=name, v=s: f"{n} @ {v}: {m}")
        got = module(xs[name])
        assert _rel(got, F.linear(xs[name], want, originals[name].bias)) < 1e-6, name


def _flux_inputs(batch: int = 1):
    g = torch.Generator().manual_seed(3)
    n_img, n_txt = 16, 6
    return dict(
        hidden_states=torch.randn(batch, n_img, 64, generator=g),
        encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.full((batch,), 0.7),
        img_ids=torch.randint(0, 4, (n_img, 3), generator=g).float(),
        txt_ids=torch.zeros(n_txt, 3),
        guidance=torch.full((batch,), 3.5),
        return_dict=False,
    )


# ----------------------------------------------------------------------------------------- parsing


def test_every_key_of_both_tiny_files_is_placed(transformer, kohya_sd, diffusers_sd):
    kohya = parse_lora(kohya_sd, transformer)
    assert {p.key for p in kohya} == {k.split(".")[0] for k in kohya_sd}
    assert len(kohya) == 2 * (2 * 3 + 8) + 2 * (4 + 2)  # qkv -> 3 modules, linear1 -> 4
    assert {p.scale for p in kohya} == {0.5}  # alpha = rank / 2
    diffusers = parse_lora(diffusers_sd, transformer)
    assert len(diffusers) == len(diffusers_sd) // 2
    assert {p.scale for p in diffusers} == {1.0}  # no alpha key: scale 1, not 1 / rank
    for name, sd, patches in (("kohya", kohya_sd, kohya), ("diffusers", diffusers_sd, diffusers)):
        want, got = _deltas(name, sd), _patch_deltas(patches)
        assert set(got) == set(want)
        for target in want:
            torch.testing.assert_close(got[target], want[target], rtol=1e-6, atol=1e-7)


def test_kohya_qkv_and_linear1_slices_land_on_the_right_rows(transformer, kohya_sd):
    patches = {(p.key, p.target): p for p in parse_lora(kohya_sd, transformer)}
    up = kohya_sd["lora_unet_double_blocks_1_txt_attn_qkv.lora_up.weight"]
    down = kohya_sd["lora_unet_double_blocks_1_txt_attn_qkv.lora_down.weight"]
    for j, target in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
        p = patches["lora_unet_double_blocks_1_txt_attn_qkv", f"transformer_blocks.1.attn.{target}"]
        assert torch.equal(p.up, up[j * INNER : (j + 1) * INNER]) and torch.equal(p.down, down)
        assert p.offset == 0 and p.module is transformer.get_submodule(p.target)
    up = kohya_sd["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    for target, start, rows in _bfl_rows("single_blocks.0.linear1"):
        p = patches["lora_unet_single_blocks_0_linear1", target]
        assert torch.equal(p.up, up[start : start + rows]) and p.offset == 0
    assert patches["lora_unet_single_blocks_0_linear1", "single_transformer_blocks.0.proj_mlp"].rows == MLP


def _rekey_bfl(sd, up="lora_B", down="lora_A", prefix="diffusion_model."):
    out = {}
    for key, bfl in _bfl_names().items():
        out[f"{prefix}{bfl}.{down}.weight"] = sd[f"{key}.lora_down.weight"]
        out[f"{prefix}{bfl}.{up}.weight"] = sd[f"{key}.lora_up.weight"]
        out[f"{prefix}{bfl}.alpha"] = sd[f"{key}.alpha"]
    return out


@pytest.mark.parametrize(
    "rekey",
    [
        lambda sd: _rekey_bfl(sd),  # ComfyUI / BFL: diffusion_model.* with lora_A / lora_B
        lambda sd: _rekey_bfl(sd, "lora_up", "lora_down"),
        lambda sd: _rekey_bfl(sd, prefix=""),
        lambda sd: {k.replace(".lora_up", "_lora.up").replace(".lora_down", "_lora.down"): v for k, v in sd.items()},
        lambda sd: {k.replace(".lora_up", ".lora.up").replace(".lora_down", ".lora.down"): v for k, v in sd.items()},
    ],
    ids=["diffusion_model-lora_AB", "diffusion_model-up_down", "bare-bfl", "_lora.up", ".lora.up"],
)
def test_kohya_rekeyed_gives_identical_layers(transformer, kohya_sd, rekey):
    other = copy.deepcopy(transformer)
    reference = parse_lora(kohya_sd, transformer)
    rekeyed = parse_lora(rekey(kohya_sd), other)
    ref = {(p.target, p.offset): p for p in reference}
    assert len(rekeyed) == len(reference)
    for p in rekeyed:
        q = ref[p.target, p.offset]
        assert torch.equal(p.down, q.down) and torch.equal(p.up, q.up) and p.scale == q.scale
    # and per layer after applying: identical outputs
    h1, h2 = apply_lora(reference, 2.5), apply_lora(rekeyed, 2.5, models=[other])
    xs = _inputs(transformer, {p.target for p in reference})
    for name, x in xs.items():
        assert torch.equal(transformer.get_submodule(name)(x), other.get_submodule(name)(x)), name
    h1.remove(), h2.remove()


def _onetrainer(key: str) -> str:
    module, kind = key.removeprefix("transformer.").removesuffix(".weight").rsplit(".", 1)
    return f"lora_transformer_{module.replace('.', '_')}.{'lora_down' if kind == 'lora_A' else 'lora_up'}.weight"


@pytest.mark.parametrize(
    "rekey",
    [
        lambda sd: {"base_model.model." + k[len("transformer.") :]: v for k, v in sd.items()},  # peft dump
        lambda sd: {_onetrainer(k): v for k, v in sd.items()},
        lambda sd: {k.replace(".lora_A.weight", ".lora_A.default.weight"): v for k, v in sd.items()},
    ],
    ids=["peft-base_model", "onetrainer", "peft-default"],
)
def test_diffusers_rekeyed_gives_identical_layers(transformer, diffusers_sd, rekey):
    reference = {(p.target, p.offset): p for p in parse_lora(diffusers_sd, transformer)}
    rekeyed = parse_lora(rekey(diffusers_sd), transformer)
    assert len(rekeyed) == len(reference)
    for p in rekeyed:
        q = reference[p.target, p.offset]
        assert torch.equal(p.down, q.down) and torch.equal(p.up, q.up) and p.scale == q.scale == 1.0


def test_final_layer_modulation_swaps_shift_and_scale(transformer):
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(3, INNER, generator=g), torch.randn(2 * INNER, 3, generator=g)
    sd = {
        "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight": down,
        "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight": up,
        "lora_unet_final_layer_adaLN_modulation_1.alpha": torch.tensor(1.5),
    }
    bfl = 0.5 * (up @ down)  # BFL rows: (shift, scale); diffusers AdaLayerNormContinuous chunks (scale, shift)
    want = torch.cat([bfl[INNER:], bfl[:INNER]])
    patches = parse_lora(sd, transformer)
    assert sorted(p.offset for p in patches) == [0, INNER]
    torch.testing.assert_close(_patch_deltas(patches)["norm_out.linear"], want, rtol=1e-6, atol=1e-7)
    # the adapter adds each half into its own row range (non-zero offsets), and so does fusing
    originals = {"norm_out.linear": copy.deepcopy(transformer.norm_out.linear)}
    xs = _inputs(transformer, originals)
    handle = apply_lora(patches, 1.0)
    for s in (1.0, -2.0, 0.0):
        handle.set_strength(s)
        _check_adapter(transformer, originals, {"norm_out.linear": want}, xs, s)
    handle.fuse()
    for s in (1.0, -2.0, 0.0):
        handle.set_strength(s)
        _check_fused(transformer, originals, {"norm_out.linear": want}, xs, s)
    handle.remove()


def test_embedders_and_final_linear_map_to_diffusers_modules(transformer):
    g = torch.Generator().manual_seed(6)
    names = {
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "final_layer.linear": "proj_out",
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    }
    sd = {}
    for bfl, target in names.items():
        m = transformer.get_submodule(target)
        sd[f"lora_unet_{bfl.replace('.', '_')}.lora_down.weight"] = torch.randn(2, m.in_features, generator=g)
        sd[f"lora_unet_{bfl.replace('.', '_')}.lora_up.weight"] = torch.randn(m.out_features, 2, generator=g)
    placed = {p.key[len("lora_unet_") :]: p.target for p in parse_lora(sd, transformer)}
    assert placed == {bfl.replace(".", "_"): target for bfl, target in names.items()}


# ----------------------------------------------------------------------------------------- errors


def _one_pair(key: str, rank: int, fan_in: int, fan_out: int):
    return {f"{key}.lora_down.weight": torch.zeros(rank, fan_in), f"{key}.lora_up.weight": torch.zeros(fan_out, rank)}


@pytest.mark.parametrize(
    ("extra", "offending"),
    [
        (_one_pair("lora_unet_double_blocks_99_img_attn_qkv", 4, 32, 96), "lora_unet_double_blocks_99_img_attn_qkv"),
        (_one_pair("lora_unet_double_blocks_0_img_attn_qkv_x", 4, 32, 96), "double_blocks_0_img_attn_qkv_x"),
        (_one_pair("transformer.proj_out", 4, 33, 64), "transformer.proj_out.lora_down.weight"),  # in mismatch
        (_one_pair("diffusion_model.single_blocks.0.linear1", 4, 32, 96), "diffusion_model.single_blocks.0.linear1"),
        ({"transformer.x_embedder.lora_A.weight": torch.zeros(4, 64)}, "transformer.x_embedder.lora_A.weight"),
        ({"transformer.x_embedder.dora_scale": torch.zeros(1, 64)}, "transformer.x_embedder.dora_scale"),
        (_one_pair("lora_te1_text_model_encoder_layers_0_mlp_fc1", 4, 32, 37), "lora_te1_text_model_encoder"),
        (_one_pair("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 4, 32, 32), "lora_te3_encoder_block_0"),
    ],
    ids=["block-99", "unknown-name", "shape", "linear1-rows", "half-pair", "dora", "te-without-encoder", "t5"],
)
def test_unplaceable_keys_raise_naming_them(transformer, kohya_sd, extra, offending):
    sd = {**kohya_sd, **extra}
    with pytest.raises(LoraError) as err:
        parse_lora(sd, transformer)
    assert offending in str(err.value)
    assert any(offending in k for k in err.value.keys)
    assert not any(k.startswith("lora_unet_single_blocks_1") for k in err.value.keys)  # only the bad ones
    assert isinstance(err.value, ValueError)


def test_empty_or_alpha_only_lora_is_an_error(transformer):
    with pytest.raises(LoraError, match="no tensors"):
        parse_lora({}, transformer)
    with pytest.raises(LoraError, match=r"lora_unet_img_in\.alpha"):
        parse_lora({"lora_unet_img_in.alpha": torch.tensor(2.0)}, transformer)
    with pytest.raises(LoraError, match="no patches"):
        apply_lora([], models=[transformer])
    with pytest.raises(LoraError, match="no patches"):
        apply_lora([])


def test_load_lora_file_errors(tmp_path):
    with pytest.raises(LoraError, match="not found"):
        load_lora_file(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(LoraError, match="cannot read"):
        load_lora_file(tmp_path / "bad.safetensors")
    with pytest.raises(LoraError, match="not a file"):
        load_lora_file(tmp_path)
    save_file({}, tmp_path / "empty.safetensors")
    with pytest.raises(LoraError, match="no tensors"):
        load_lora_file(tmp_path / "empty.safetensors")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, False, "1.0", None, 10.0001, -10.5, 1e9])
def test_bad_strengths_are_rejected(transformer, kohya_sd, bad):
    handle = apply_lora(parse_lora(kohya_sd, transformer), 1.0)
    with pytest.raises(ValueError, match=r"\[-10, 10\]") as err:
        handle.set_strength(bad)
    assert repr(bad) in str(err.value)
    assert handle.strength == 1.0
    with pytest.raises(ValueError, match=r"\[-10, 10\]"):
        apply_lora(handle.patches, bad)


def test_good_strengths_are_accepted():
    import numpy as np

    assert [check_strength(v) for v in (10, -10, 0, 2.5, np.float32(0.5), -0.0)] == [10.0, -10.0, 0.0, 2.5, 0.5, 0.0]


# ----------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("which", ["kohya", "diffusers"])
def test_adapter_and_fused_weights_are_exact_across_switches(transformer, kohya_sd, diffusers_sd, which):
    sd = kohya_sd if which == "kohya" else diffusers_sd
    deltas = _deltas(which, sd)
    originals = {name: copy.deepcopy(transformer.get_submodule(name)) for name in deltas}
    objects = {name: transformer.get_submodule(name) for name in deltas}
    untouched = {n: m for n, m in transformer.named_modules() if isinstance(m, nn.Linear) and n not in deltas}
    xs = _inputs(transformer, deltas)
    rng = random.Random(0)
    switches = [rng.choice([*STRENGTHS, rng.uniform(-10, 10)]) for _ in range(20)]

    handle = apply_lora(parse_lora(sd, transformer), strength=1.0)
    assert not handle.touches_text
    assert all(type(transformer.get_submodule(n)) is nn.Linear for n in untouched)
    for s in [*STRENGTHS, *switches, *STRENGTHS]:
        handle.set_strength(s)
        _check_adapter(transformer, originals, deltas, xs, s)

    handle.fuse()
    for s in [*STRENGTHS, *switches, *STRENGTHS]:
        handle.set_strength(s)
        _check_fused(transformer, originals, deltas, xs, s)
    handle.unfuse()
    for name in deltas:
        assert torch.equal(transformer.get_submodule(name).base.weight, originals[name].weight), name
    _check_adapter(transformer, originals, deltas, xs, handle.strength)

    for s in switches[:5]:  # fuse / unfuse round trips never drift
        handle.fuse()
        handle.set_strength(s)
        handle.unfuse()
    handle.fuse()
    handle.remove()
    for name, module in objects.items():
        assert transformer.get_submodule(name) is module, name
        assert torch.equal(module.weight, originals[name].weight), name
    assert not any(isinstance(m, LoraLinear) for m in transformer.modules())


def test_strength_zero_is_the_model_without_lora_bitwise(transformer, kohya_sd, diffusers_sd):
    inputs = _flux_inputs()
    with torch.no_grad():
        reference = transformer(**inputs)[0]
        h1 = apply_lora(parse_lora(kohya_sd, transformer), 1.0)
        h2 = apply_lora(parse_lora(diffusers_sd, transformer), 1.0)
        assert not torch.equal(transformer(**inputs)[0], reference)
        h1.set_strength(0)
        h2.set_strength(0.0)
        assert torch.equal(transformer(**inputs)[0], reference)
        h1.fuse()
        h2.fuse()
        assert torch.equal(transformer(**inputs)[0], reference)
        h1.remove()
        h2.remove()
        assert torch.equal(transformer(**inputs)[0], reference)


def test_fused_and_adapter_models_agree_and_loras_stack(transformer, kohya_sd, diffusers_sd):
    inputs = _flux_inputs()
    with torch.no_grad():
        h1 = apply_lora(parse_lora(kohya_sd, transformer), 2.5)
        h2 = apply_lora(parse_lora(diffusers_sd, transformer), -1.5)  # parsed on wrapped modules
        adapter = transformer(**inputs)[0]
        h1.fuse()
        partly = transformer(**inputs)[0]
        h2.fuse()
        fused = transformer(**inputs)[0]
        assert _rel(partly, adapter) < 1e-5 and _rel(fused, adapter) < 1e-5
        # per layer: a layer both LoRAs touch holds W0 + 2.5 * D1 - 1.5 * D2
        name = "single_transformer_blocks.0.attn.to_k"
        module = transformer.get_submodule(name)
        w0 = module._w0
        want = w0 + 2.5 * _kohya_deltas(kohya_sd)[name] - 1.5 * _diffusers_deltas(diffusers_sd)[name]
        torch.testing.assert_close(module.base.weight, want, rtol=1e-6, atol=1e-6)
        h1.unfuse()
        assert _rel(transformer(**inputs)[0], adapter) < 1e-5
        h2.remove()
        h1.remove()
        assert torch.equal(module.base.weight, w0) and transformer.get_submodule(name) is module.base


# ----------------------------------------------------------------------------------------- other bases, other models


def _to_8bit(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    q = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=linear.bias is not None, has_fp16_weights=False, threshold=6.0
    )
    q.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return q.to("cpu")  # quantizes (int8 rows + scales) on CPU too


def test_adapter_on_bitsandbytes_8bit_base(transformer, kohya_sd):
    bnb = pytest.importorskip("bitsandbytes")
    names = ["transformer_blocks.0.attn.to_k", "single_transformer_blocks.1.proj_mlp", "transformer_blocks.1.ff.net.2"]
    for name in names:
        parent, attr = name.rsplit(".", 1)
        setattr(transformer.get_submodule(parent), attr, _to_8bit(transformer.get_submodule(name)))
    quantized = {n: transformer.get_submodule(n) for n in names}
    assert all(isinstance(m, bnb.nn.Linear8bitLt) and m.weight.dtype == torch.int8 for m in quantized.values())
    deltas = _kohya_deltas(kohya_sd)
    xs = _inputs(transformer, names)
    handle = apply_lora(parse_lora(kohya_sd, transformer), 1.0)
    assert transformer.get_submodule(names[0]).weight is quantized[names[0]].weight  # .weight passes through
    with torch.no_grad():
        for s in (1.0, -3.0, 10.0, 0.0):
            handle.set_strength(s)
            for name in names:
                got = transformer.get_submodule(name)(xs[name])
                base = quantized[name](xs[name])
                if s == 0:
                    assert torch.equal(got, base), name
                else:
                    want = base + F.linear(xs[name], s * deltas[name])
                    assert _rel(got, want) < 1e-5, name
    with pytest.raises(LoraError, match="Linear8bitLt"):
        handle.fuse()
    assert not handle.fused and torch.equal(transformer.get_submodule(names[0]).base.weight, quantized[names[0]].weight)
    handle.remove()
    assert all(transformer.get_submodule(n) is m for n, m in quantized.items())


def test_kohya_text_encoder_keys_patch_clip(transformer, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            vocab_size=100,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
        )
    ).eval()
    g = torch.Generator().manual_seed(2)
    # kohya keys carry transformers-4 module names (text_model.encoder...); transformers 5 dropped "text_model."
    targets = {"encoder.layers.1.self_attn.q_proj": (32, 32), "encoder.layers.0.mlp.fc1": (32, 37)}
    sd = {
        "lora_unet_img_in.lora_down.weight": torch.randn(2, 64, generator=g),
        "lora_unet_img_in.lora_up.weight": torch.randn(32, 2, generator=g),
    }
    for name, (fan_in, fan_out) in targets.items():
        key = "lora_te1_text_model_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = torch.randn(4, fan_in, generator=g)
        sd[f"{key}.lora_up.weight"] = torch.randn(fan_out, 4, generator=g)
        sd[f"{key}.alpha"] = torch.tensor(8.0)
    path = tmp_path / "te.safetensors"
    save_file(sd, path)
    module_names = {n: n if n in dict(clip.named_modules()) else f"text_model.{n}" for n in targets}
    originals = {n: copy.deepcopy(clip.get_submodule(module_names[n])) for n in targets}
    handle = load_lora(path, transformer, clip, strength=0.75)  # the models are the patches' roots
    assert {p.component for p in handle.patches} == {"transformer", "text_encoder"} and handle.touches_text
    x = torch.randn(3, 32, generator=g)
    for name in targets:
        key = "lora_te1_text_model_" + name.replace(".", "_")
        delta = 2.0 * sd[f"{key}.lora_up.weight"] @ sd[f"{key}.lora_down.weight"]
        want = F.linear(x, originals[name].weight + 0.75 * delta, originals[name].bias)
        assert _rel(clip.get_submodule(module_names[name])(x), want) < 1e-5, name
    rekeyed = {
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(2, 32),
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": torch.zeros(37, 2),
    }  # diffusers form
    assert [p.target for p in parse_lora(rekeyed, transformer, clip)] == [module_names["encoder.layers.0.mlp.fc1"]]
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 2]])
        handle.set_strength(0)
        patched = clip(input_ids=ids).last_hidden_state
        handle.remove()
        assert torch.equal(patched, clip(input_ids=ids).last_hidden_state)
    assert isinstance(transformer.x_embedder, nn.Linear) and not isinstance(transformer.x_embedder, LoraLinear)


def test_bf16_fuse_rounds_once_from_w0_and_unfuses_bitwise(transformer, kohya_sd):
    transformer.to(torch.bfloat16)
    deltas = _kohya_deltas(kohya_sd)
    names = ["single_transformer_blocks.0.proj_mlp", "transformer_blocks.1.attn.add_v_proj"]
    w0 = {n: transformer.get_submodule(n).weight.detach().clone() for n in names}
    handle = apply_lora(parse_lora(kohya_sd, transformer), 1.0)
    handle.fuse()
    for s in (2.5, -7.0, 0.3, 2.5):
        handle.set_strength(s)
        for n in names:
            want = (w0[n].float() + s * deltas[n]).to(torch.bfloat16)
            got = transformer.get_submodule(n).base.weight
            assert got.dtype == torch.bfloat16
            assert (got.float() - want.float()).abs().max() <= want.float().abs().max() * 2**-8, n  # <= 1 bf16 ulp
    handle.unfuse()
    assert all(torch.equal(transformer.get_submodule(n).base.weight, w0[n]) for n in names)
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    out = transformer.get_submodule(names[1])(x)  # the adapter runs in the input's dtype
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_patches_must_belong_to_the_given_models(transformer, pristine, kohya_sd):
    patches = parse_lora(kohya_sd, transformer)
    with pytest.raises(LoraError, match=r"transformer\.single_transformer_blocks\.1\.proj_mlp: module not found"):
        apply_lora(patches, models=[pristine])
    assert not any(isinstance(m, LoraLinear) for m in pristine.modules())
