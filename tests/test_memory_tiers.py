"""Issue 30, "chosen by memory": the per-tier byte arithmetic of flux_vector/memory_tiers.py checked against real
byte counts (the tiny model quantized by each tier, or an independent count where the tier's code is elsewhere),
FLUX.1-dev's parameter census checked against its public configs on the meta device, the auto choice on mocked
free memory, and the README table kept equal to the generated one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from flux_vector import memory_tiers as mt
from flux_vector.offload import (
    HEADROOM,
    GiB,
    choose_offload,
    largest_group_bytes,
    mode_needs,
    module_bytes,
    offload_plan,
)
from tests.tiny_parts import tiny_parts

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")  # the estimate reads only the device's type: nothing runs on it


@pytest.fixture(scope="module")
def tiny_dir():
    from flux_vector.tiny import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


def components(parts: dict) -> dict[str, nn.Module]:
    return {name: parts[name] for name in ("transformer", "text_encoder_2", "text_encoder", "vae")}


# ----------------------------------------------------------------------------------------------- real byte counts


def quantize_8bit(module: nn.Module) -> int:
    """The project's 8-bit tier (bitsandbytes int8 on the CPU): what the transformer holds after it."""
    from flux_vector.quantize import quantize_linears_8bit

    quantize_linears_8bit(module, "cpu")
    return module_bytes(module)


def independent_count(module: nn.Module, quantize_weight, keep=None, keep_leaves=()) -> int:
    """Bytes of ``module`` with each linear weight a tier quantizes (``keep`` by name, default
    ``quantize.KEEP_FULL_PRECISION``, and ``keep_leaves`` by last name part, kept) replaced by what
    ``quantize_weight(weight)`` returns (the tensors that tier stores for it), everything else as it is."""
    from flux_vector.quantize import KEEP_FULL_PRECISION

    keep = KEEP_FULL_PRECISION if keep is None else keep
    total = module_bytes(module)
    for name, sub in module.named_modules():
        kept = name in keep or name.rsplit(".", 1)[-1] in keep_leaves
        if type(sub) is nn.Linear and not kept:
            total -= sub.weight.numel() * sub.weight.element_size()
            total += sum(t.numel() * t.element_size() for t in quantize_weight(sub.weight.data))
    return total


def nf4_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """bitsandbytes NF4, blocksize 64, no double quantization: the packed weight, absmax and the code table."""
    import bitsandbytes as bnb

    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)
    return [packed, state.absmax, state.code]


def int8_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """bitsandbytes LLM.int8 as ``Int8Params`` quantizes on a move: the int8 weight and its row scales."""
    import bitsandbytes as bnb

    param = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    return [param.data, param.SCB]


def fp8_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    return [weight.to(torch.float8_e4m3fn)]


def gguf_bytes(module: nn.Module, qtype: str) -> int:
    """Bytes of ``module`` as a city96-style GGUF transformer holds it, counted with the ``gguf`` package: every
    linear weight the type can take (rows a multiple of its block, at least 1024 values) quantized by
    ``gguf.quants.quantize`` (K types: sized by gguf's byte-shape table), everything else in the module's dtype."""
    import gguf
    import numpy as np

    kind = getattr(gguf.GGMLQuantizationType, qtype)
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    total = module_bytes(module)
    for sub in module.modules():
        if type(sub) is not nn.Linear:
            continue
        weight = sub.weight.data.float().numpy()
        if weight.shape[1] % block or weight.size < 1024:
            continue
        total -= sub.weight.numel() * sub.weight.element_size()
        if qtype.endswith("_K"):  # the gguf package quantizes no K type in Python: its byte-shape table then
            total += int(np.prod(gguf.quants.quant_shape_to_byte_shape(weight.shape, kind)))
        else:
            total += np.asarray(gguf.quants.quantize(weight, kind)).nbytes
    return total


def has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# tier -> what the tiny transformer really holds, counted independently of the project's quantizers (bitsandbytes,
# torch and gguf directly) for nf4/fp8/GGUF; the project's own tiers are checked below
# (test_the_estimate_equals_the_tiers_own_bytes).
REAL_BYTES = {
    "none": module_bytes,
    "8bit": quantize_8bit,
    "nf4": lambda m: independent_count(m, nf4_tensors),
    "fp8": lambda m: independent_count(m, fp8_tensors),
    **{
        f"gguf-{q}": (lambda m, q=q: gguf_bytes(m, q))
        for q in ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")
    },
}


@pytest.mark.parametrize("tier", list(REAL_BYTES))
def test_the_estimate_equals_the_tiny_transformers_real_bytes(tiny_dir, tier):
    if tier in ("8bit", "nf4") and not has_bitsandbytes():
        pytest.skip("bitsandbytes is not installed")
    transformer = tiny_parts(tiny_dir)["transformer"]
    counted = mt.component_census("transformer", transformer).whole  # before quantizing: the model as loaded
    estimate = mt.census_bytes(counted, tier, dtype_bytes=4)
    real = REAL_BYTES[tier](transformer)
    assert estimate.total == real
    if tier == "8bit":  # module_bytes counts the row scales beside the int8 weights too
        assert estimate.stored < estimate.total
    if tier != "none":
        assert estimate.total < mt.census_bytes(counted, "none", dtype_bytes=4).total


@pytest.mark.parametrize("tier", ["8bit", "nf4", "fp8"])
def test_the_estimate_equals_the_tiers_own_bytes(tiny_dir, tier):
    """The same estimate against the project's own quantizer (``quantize.quantize_transformer``, what
    ``from_pretrained(quantize=...)`` runs) and its byte count (``offload.module_bytes``)."""
    from flux_vector.quantize import quantize_transformer

    transformer = tiny_parts(tiny_dir)["transformer"]
    counted = mt.component_census("transformer", transformer).whole
    quantize_transformer(transformer, tier, "cpu")
    assert mt.census_bytes(counted, tier, dtype_bytes=4).total == module_bytes(transformer)


def test_every_component_and_group_of_the_tiny_model_in_the_dtype(tiny_dir):
    """Tier none: the census of each component (bf16 and fp32) is its module_bytes, and its largest group is
    offload.largest_group_bytes, for group offload's plan with and without a pinned (8-bit) transformer."""
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        modules = components(tiny_parts(tiny_dir, dtype))
        model = {name: mt.component_census(name, module) for name, module in modules.items()}
        assert mt.component_bytes(model, "none", size) == {name: module_bytes(m) for name, m in modules.items()}
        for pinned in (False, True):
            plan = offload_plan("group", resident_transformer=pinned)
            assert mt.largest_group(model, "none", size, plan=plan) == largest_group_bytes(modules, plan)


def test_the_8bit_estimate_of_the_tiny_model_feeds_the_same_offload_choice(tiny_dir):
    """What the pipeline weighs after quantizing (real module_bytes) and what auto weighs before (the census) give the
    same offload choice and the same peak, on a range of free memory."""
    if not has_bitsandbytes():
        pytest.skip("bitsandbytes is not installed")
    modules = components(tiny_parts(tiny_dir))
    model = {name: mt.component_census(name, module) for name, module in modules.items()}
    estimated = mt.component_bytes(model, "8bit", 4)
    quantize_8bit(modules["transformer"])
    real = {name: module_bytes(m) for name, m in modules.items()}
    assert estimated == real
    group = largest_group_bytes(modules, offload_plan("group", resident_transformer=True))
    assert mt.largest_group(model, "8bit", 4) == group
    needs = {m: mode_needs(m, real, largest_group=group, resident_transformer=True) for m in ("none", "model", "group")}
    for free in (*needs.values(), min(needs.values()) - 1):
        try:
            choice = choose_offload("auto", CUDA, free, real, largest_group=group, resident_transformer=True)
        except ValueError:
            choice = None
        estimate = mt.estimate("8bit", model, dtype_bytes=4, device=CUDA, free_bytes=free)
        if choice is None:
            assert not estimate.fits and "keeps the int8 transformer" in estimate.why_not
            continue
        assert estimate.offload is not None and estimate.offload.mode == choice.mode
        assert estimate.peak_bytes == needs[choice.mode] <= free


@pytest.mark.parametrize("tier", ["8bit", "nf4", "fp8"])
def test_the_text_tier_estimate_equals_t5s_real_bytes(tiny_dir, tier):
    """T5 under ``quantize_text``: its ``wo`` layers kept (quantize.T5_KEEP_FULL_PRECISION), counted independently."""
    from flux_vector.quantize import T5_KEEP_FULL_PRECISION

    if tier in ("8bit", "nf4") and not has_bitsandbytes():
        pytest.skip("bitsandbytes is not installed")
    t5 = tiny_parts(tiny_dir)["text_encoder_2"]
    model = {"text_encoder_2": mt.component_census("text_encoder_2", t5)}
    estimated = mt.component_bytes(model, "none", 4, text_tier=tier)["text_encoder_2"]
    tensors = {"8bit": int8_tensors, "nf4": nf4_tensors, "fp8": fp8_tensors}[tier]
    real = independent_count(t5, tensors, keep=(), keep_leaves=T5_KEEP_FULL_PRECISION)
    assert estimated == real < module_bytes(t5)
    assert any(kept for _o, _i, kept, _n in model["text_encoder_2"].whole.linears)  # the wo layers


def test_a_bitsandbytes_text_tier_is_resident_in_every_mode():
    plain = mt.estimate("fp8", mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=12 * GiB)
    nf4_t5 = mt.estimate("fp8", mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=12 * GiB, text_tier="nf4")
    t5 = nf4_t5.component_bytes["text_encoder_2"]
    assert t5 < plain.component_bytes["text_encoder_2"]
    assert nf4_t5.fits and nf4_t5.peak_bytes <= 12 * GiB
    # the T5 stays on the GPU, so its bytes add to the peak of the mode chosen for the rest
    rest = {k: v for k, v in nf4_t5.component_bytes.items() if k != "text_encoder_2"}
    group = nf4_t5.largest_group
    assert nf4_t5.peak_bytes == mode_needs(nf4_t5.offload.mode, rest, largest_group=group) + t5


# ----------------------------------------------------------------------------------------------- FLUX.1-dev


def flux_dev_on_meta() -> dict[str, nn.Module]:
    """FLUX.1-dev's four components from the configs shipped in the package (``single_file/configs``, themselves
    checked against the published parameter counts in tests/test_comfy_files.py), on the meta device."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_vector.single_file.load import CONFIG_DIR

    def config(name: str) -> dict:
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())

    with init_empty_weights(include_buffers=True):
        return {
            "transformer": FluxTransformer2DModel.from_config(config("transformer")),
            "text_encoder_2": T5EncoderModel(T5Config.from_dict(config("text_encoder_2"))),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))),
            "vae": AutoencoderKL.from_config(config("vae")),
        }


@pytest.mark.slow
def test_flux_dev_census_is_its_configs():
    modules = flux_dev_on_meta()
    for name, module in modules.items():
        assert mt.component_census(name, module) == mt.FLUX_DEV[name], name
        assert mt.FLUX_DEV[name].whole.parameters == sum(p.numel() for p in module.parameters())
    # the well-known sizes: 11.9 G transformer parameters, 4.76 G for T5-XXL's encoder
    assert mt.FLUX_DEV["transformer"].whole.parameters == 11_901_408_320
    assert mt.FLUX_DEV["text_encoder_2"].whole.parameters == 4_762_310_656


def test_flux_dev_figures_near_the_issues_measurements():
    """Loaded GiB per tier against diffusers' write-up (the issue's table): bf16 31.4, GGUF Q8_0 21.5, Q4_1 16.8
    (T5 and CLIP in bf16 in all three)."""
    loaded = {t: sum(mt.component_bytes(mt.FLUX_DEV, t, 2).values()) / GiB for t in ("none", "gguf-Q8_0", "gguf-Q4_1")}
    assert loaded["none"] == pytest.approx(31.4, abs=0.05)
    assert loaded["gguf-Q8_0"] == pytest.approx(21.5, abs=0.6)
    assert loaded["gguf-Q4_1"] == pytest.approx(16.8, abs=0.7)


# ----------------------------------------------------------------------------------------------- the auto choice

CARDS = (8, 12, 16, 24, 48, 80)


@pytest.mark.parametrize("free_gib", CARDS)
@pytest.mark.parametrize("tiers", [mt.AUTO_TIERS, ("none", "8bit")], ids=["all tiers", "none+8bit"])
def test_auto_picks_the_fastest_tier_that_fits(free_gib, tiers):
    free = free_gib * GiB
    choice = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=free, tiers=tiers)
    picked = choice.picked
    assert choice.tier in tiers and picked.fits and picked.peak_bytes <= free
    fitting = [e for e in choice.weighed if e.fits]
    fastest = min(e.seconds for e in fitting)
    assert picked.seconds <= fastest * (1 + mt.TIE_FRACTION)
    for other in fitting:  # nothing faster beyond the tie margin, nothing more faithful within it
        if other.seconds <= fastest * (1 + mt.TIE_FRACTION):
            assert mt.fidelity_rank(picked.tier) <= mt.fidelity_rank(other.tier)
    # the offload mode is offload.choose_offload's own for that tier's sizes
    sizes = mt.component_bytes(mt.FLUX_DEV, choice.tier, 2)
    pinned = bool(mt.FORMATS[choice.tier] and mt.FORMATS[choice.tier].pinned)
    group = mt.largest_group(mt.FLUX_DEV, choice.tier, 2)
    expected = choose_offload("auto", CUDA, free, sizes, largest_group=group, resident_transformer=pinned)
    assert picked.offload.mode == expected.mode
    assert picked.peak_bytes == mode_needs(expected.mode, sizes, largest_group=group, resident_transformer=pinned)
    assert choice.tier in choice.reason and f"{free_gib:.1f} GiB free" in choice.reason


def test_a_big_card_runs_bf16_without_offload_and_small_ones_quantize():
    big = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=80 * GiB)
    assert (big.tier, big.picked.offload.mode) == ("none", "none")
    for free_gib in (8, 12, 16, 24):
        small = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=free_gib * GiB)
        assert small.tier != "none", (free_gib, small.reason)


def test_cpu_or_unknown_free_memory_means_no_quantization():
    cpu = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=4, device=torch.device("cpu"), free_bytes=None)
    assert cpu.tier == "none" and "no accelerator" in cpu.reason
    unknown = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=torch.device("mps"), free_bytes=None)
    assert unknown.tier == "none" and "free memory unknown" in unknown.reason


def test_an_explicit_offload_mode_must_fit_too():
    # offload="none" on a 24 GiB card: bf16 (35.4 GiB peak) cannot, a quantized tier can
    choice = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=24 * GiB, offload="none")
    assert choice.tier != "none" and choice.picked.offload.mode == "none"
    assert choice.picked.peak_bytes <= 24 * GiB
    bf16 = next(e for e in choice.weighed if e.tier == "none")
    assert not bf16.fits and "needs" in bf16.why_not
    # nothing fits: the smallest peak, said so
    tiny = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=2 * GiB, offload="none")
    assert "no tier fits" in tiny.reason
    # 8-bit cannot run under sequential offload (its weights stay on the GPU): not a candidate
    seq = mt.choose_tier(mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=12 * GiB, offload="sequential")
    assert not next(e for e in seq.weighed if e.tier == "8bit").fits


def test_auto_quantize_on_the_tiny_model_reads_the_real_modules(tiny_dir):
    """``from_pretrained``'s call: the census of the loaded modules, the tiers this install has."""
    modules = components(tiny_parts(tiny_dir))
    total = sum(module_bytes(m) for m in modules.values())
    roomy = mt.auto_quantize(CUDA, total + HEADROOM + GiB, modules, torch.float32)
    assert roomy.tier == "none" and roomy.picked.offload.mode == "none"
    assert mt.auto_quantize(torch.device("cpu"), None, modules, torch.float32).tier == "none"
    assert set(mt.available_tiers()) <= set(mt.QUANTIZE_CHOICES)


def test_quantize_names_are_one_list():
    from flux_vector import quantize

    assert quantize.QUANTIZE_CHOICES is mt.QUANTIZE_CHOICES
    assert quantize.KEEP_FULL_PRECISION is mt.KEEP_FULL_PRECISION
    assert ("auto", *mt.QUANTIZE_CHOICES) == mt.QUANTIZE_OPTIONS
    assert set(mt.QUANTIZE_CHOICES) <= set(mt.FORMATS) and set(mt.AUTO_TIERS) <= set(mt.FORMATS)


def test_an_unknown_quantize_is_refused_with_the_allowed_names():
    from flux_vector.pipeline import FluxVectorPipeline

    with pytest.raises(ValueError, match=r"quantize='4bit' is not allowed.*'auto', 'none', '8bit'"):
        FluxVectorPipeline.from_pretrained("tiny", quantize="4bit", log=lambda *_: None)


def test_explicit_none_and_auto_on_the_cpu_load_without_quantizing(tiny_dir):
    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.quantize import is_quantized

    lines: list[str] = []
    for quantize in ("none", "auto"):
        pipe = FluxVectorPipeline.from_pretrained("tiny", quantize=quantize, lora="none", log=lines.append)
        assert not is_quantized(pipe.transformer)
    assert not any(line.startswith("quantize:") for line in lines)  # nothing chosen on the CPU: nothing logged


# ----------------------------------------------------------------------------------------------- README


def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert mt.readme_section(readme) == mt.readme_table(), "run: python -m flux_vector.memory_tiers"
