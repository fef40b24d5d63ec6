"""The fast mode on CPU: the plan's choice for every device (GPU branches included), fused QKV with a LoRA, regional
torch.compile of the tiny model (same image as eager, no recompile when the LoRA strength changes), the step cache,
``--fast`` on the CLI, and the GPU benchmark script as a CPU smoke test."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flux_vector.fast import DEFAULT_STEP_CACHE_THRESHOLD, SWITCHES, FastEnv, FastPlan, choose_fast_plan, detect_env

ROOT = Path(__file__).resolve().parent.parent
CUDA_ALL = frozenset({"flash_attn_3", "torchao", "triton", "cudnn_attention"})


def cuda(sm: tuple[int, int], *have: str, without: tuple[str, ...] = ()) -> FastEnv:
    available = (CUDA_ALL if not have else frozenset(have)) - set(without)
    return FastEnv("cuda", sm, frozenset(available))


# ----------------------------------------------------------------------------------------------- the plan


def test_cpu_plan_compiles_regionally_without_fp8_or_graphs():
    plan = choose_fast_plan(FastEnv("cpu", None, frozenset({"cxx_compiler", "torchao"})))
    assert (plan.fuse_qkv, plan.attention, plan.compile, plan.fp8, plan.cuda_graphs, plan.step_cache) == (
        True,
        "native",
        True,
        False,
        False,
        None,
    )
    assert plan.fullgraph
    assert "CUDA" in plan.why["fp8"] and "cpu" in plan.why["fp8"]
    assert [name for name, _ in plan.reasons] == list(SWITCHES)


def test_cpu_without_a_compiler_does_not_compile():
    plan = choose_fast_plan(FastEnv("cpu"))
    assert not plan.compile and "C++ compiler" in plan.why["compile"]
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        choose_fast_plan(FastEnv("cpu"), {"compile": True})


def test_sm80_without_fa3_uses_sdpa_and_no_fp8():
    plan = choose_fast_plan(cuda((8, 0), "triton", "torchao", "cudnn_attention"))
    assert plan.attention == "native" and "sm80" in plan.why["attention"]
    assert plan.compile and plan.fuse_qkv
    assert not plan.fp8 and "sm89+" in plan.why["fp8"] and "sm80" in plan.why["fp8"]
    with pytest.raises(ValueError, match="sm89"):
        choose_fast_plan(cuda((8, 0)), {"fp8": True})


def test_sm90_with_fa3_and_torchao_is_the_full_plan():
    plan = choose_fast_plan(cuda((9, 0)))
    assert (plan.fuse_qkv, plan.attention, plan.compile, plan.fp8) == (True, "_flash_3", True, True)
    assert "flash-attention 3" in plan.why["attention"] and "torchao" in plan.why["fp8"]
    assert not plan.cuda_graphs and "opt-in" in plan.why["cuda_graphs"]
    assert plan.step_cache is None


def test_sm90_without_fa3_falls_back_to_cudnn_then_native():
    assert choose_fast_plan(cuda((9, 0), without=("flash_attn_3",))).attention == "_native_cudnn"
    plan = choose_fast_plan(cuda((9, 0), without=("flash_attn_3", "cudnn_attention")))
    assert plan.attention == "native" and "neither" in plan.why["attention"]
    with pytest.raises(ValueError, match="flash-attention 3"):
        choose_fast_plan(cuda((9, 0), without=("flash_attn_3",)), {"attention": "_flash_3"})


def test_sm90_without_torchao_says_so():
    plan = choose_fast_plan(cuda((9, 0), without=("torchao",)))
    assert not plan.fp8 and "pip install torchao" in plan.why["fp8"]
    assert plan.compile and plan.attention == "_flash_3"
    with pytest.raises(ValueError, match="pip install torchao"):
        choose_fast_plan(cuda((9, 0), without=("torchao",)), {"fp8": True})


def test_sm89_gets_fp8_with_sdpa():
    plan = choose_fast_plan(cuda((8, 9)))
    assert plan.fp8 and plan.attention == "native"  # FA3 is Hopper only


def test_cuda_without_triton_does_not_compile():
    plan = choose_fast_plan(cuda((9, 0), without=("triton",)))
    assert not plan.compile and "triton" in plan.why["compile"]
    assert plan.fp8 and "unfused" in plan.why["fp8"]


def test_quantized_base_gets_no_fusion_no_fp8_and_no_auto_compile():
    plan = choose_fast_plan(cuda((9, 0)), quantized=True)
    assert not plan.fuse_qkv and "quantized weights" in plan.why["fuse_qkv"]
    assert not plan.fp8 and "already quantized" in plan.why["fp8"]
    assert not plan.compile and "quantized layers" in plan.why["compile"]
    assert plan.attention == "_flash_3"
    with pytest.raises(ValueError, match="quantized weights cannot be concatenated"):
        choose_fast_plan(cuda((9, 0)), {"fuse_qkv": True}, quantized=True)
    forced = choose_fast_plan(cuda((9, 0)), {"compile": True}, quantized=True)
    assert forced.compile and not forced.fullgraph


def test_group_or_sequential_offload_turns_compile_off():
    for offload in ("group", "sequential"):
        plan = choose_fast_plan(cuda((9, 0)), offload=offload)
        assert not plan.compile and offload in plan.why["compile"]
    assert choose_fast_plan(cuda((9, 0)), offload="model").compile


def test_explicit_switches():
    env = cuda((9, 0))
    only_qkv = choose_fast_plan(env, {"fuse_qkv": True}, full=False)
    assert (only_qkv.fuse_qkv, only_qkv.attention, only_qkv.compile, only_qkv.fp8) == (True, "native", False, False)
    no_fp8 = choose_fast_plan(env, {"fp8": False})
    assert no_fp8.compile and not no_fp8.fp8 and no_fp8.why["fp8"] == "off as requested"
    assert choose_fast_plan(env, {"attention": "_native_cudnn"}).attention == "_native_cudnn"
    assert choose_fast_plan(env, {"attention": False}).attention == "native"
    graphs = choose_fast_plan(env, {"cuda_graphs": True})
    assert graphs.cuda_graphs and "reduce-overhead" in graphs.why["cuda_graphs"]
    cached = choose_fast_plan(env, {"step_cache": True})
    assert cached.step_cache == DEFAULT_STEP_CACHE_THRESHOLD and not cached.fullgraph
    assert "output changes" in cached.why["step_cache"]
    assert choose_fast_plan(env, {"step_cache": 0.2}, full=False).step_cache == 0.2
    cpu = FastEnv("cpu", None, frozenset({"cxx_compiler"}))
    for bad, match in (
        ({"warp": True}, "unknown fast switch"),
        ({"cuda_graphs": True}, "CUDA"),
        ({"attention": "_native_cudnn"}, "CUDA"),
        ({"fp8": "yes"}, "True, False or 'auto'"),
        ({"step_cache": 2}, "threshold"),
    ):
        with pytest.raises(ValueError, match=match):
            choose_fast_plan(cpu, bad)
    with pytest.raises(ValueError, match="needs compile"):
        choose_fast_plan(env, {"cuda_graphs": True, "compile": False})
    assert not choose_fast_plan(env, full=False).enabled


def test_detect_env_on_this_machine():
    env = detect_env("cpu")
    assert env.device_type == "cpu" and env.capability is None
    assert "cudnn_attention" not in env.available
    assert isinstance(choose_fast_plan(env), FastPlan)


# ----------------------------------------------------------------------------------------------- fused QKV + LoRA


def _tiny_transformer(tiny_dir):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer").eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 16, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([3.5]),
        txt_ids=torch.zeros(7, 3),
        img_ids=torch.randn(16, 3, generator=g),
        return_dict=False,
    )


@pytest.mark.parametrize("lora_file", ["tiny_lora_kohya.safetensors", "tiny_lora_diffusers.safetensors"])
@pytest.mark.parametrize("fuse_lora_first", [False, True])
def test_fused_qkv_with_lora_equals_unfused(tiny_dir, lora_file, fuse_lora_first):
    from flux_vector.lora import LoraLinear, fuse_qkv_projections, load_lora

    strengths = (1.0, 0.5, -1.5, 0.0, 2.0)
    plain = _tiny_transformer(tiny_dir)
    handle = load_lora(tiny_dir / lora_file, plain)
    with torch.no_grad():
        expected = {}
        for s in strengths:
            handle.set_strength(s)
            expected[s] = plain(**_inputs())[0]

    fused = _tiny_transformer(tiny_dir)
    fused_handle = load_lora(tiny_dir / lora_file, fused, strength=0.3)
    if fuse_lora_first:
        fused_handle.fuse()
    assert fuse_qkv_projections(fused, [fused_handle]) == 4  # 2 double + 2 single blocks
    assert not fused_handle.removed and fused_handle.strength == 0.3 and fused_handle.fused == fuse_lora_first
    attn = fused.transformer_blocks[0].attn
    assert attn.fused_projections and isinstance(attn.to_qkv, LoraLinear) and isinstance(attn.to_added_qkv, LoraLinear)
    assert not isinstance(attn.to_q, LoraLinear)  # the unused projections carry no LoRA
    targets = {p.target for p in fused_handle.patches}
    assert "transformer_blocks.0.attn.to_qkv" in targets and "transformer_blocks.0.attn.to_q" not in targets
    with torch.no_grad():
        for s in strengths:
            fused_handle.set_strength(s)
            got = fused(**_inputs())[0]
            torch.testing.assert_close(got, expected[s], rtol=1e-5, atol=1e-5, msg=f"strength {s}")
    if fuse_lora_first:  # unfusing the LoRA gives back the fused base weights bitwise
        fused_handle.unfuse()
        base = _tiny_transformer(tiny_dir)
        base.fuse_qkv_projections()
        assert torch.equal(attn.to_qkv.weight, base.transformer_blocks[0].attn.to_qkv.weight)


def test_kohya_qkv_pieces_merge_into_one_patch_and_a_later_lora_lands_on_the_fused_rows(tiny_dir):
    from flux_vector.lora import fuse_qkv_projections, load_lora

    model = _tiny_transformer(tiny_dir)
    handle = load_lora(tiny_dir / "tiny_lora_kohya.safetensors", model)
    fuse_qkv_projections(model, [handle])
    qkv = [p for p in handle.patches if p.target == "transformer_blocks.0.attn.to_qkv"]
    assert len(qkv) == 1 and qkv[0].rows == 96 and qkv[0].offset == 0  # q, k, v rows of the BFL qkv key, merged
    # a LoRA parsed and applied after the fusion targets to_q... and must still take effect
    reference = _tiny_transformer(tiny_dir)
    load_lora(tiny_dir / "tiny_lora_diffusers.safetensors", reference, strength=0.7)
    load_lora(tiny_dir / "tiny_lora_kohya.safetensors", reference)
    second = load_lora(tiny_dir / "tiny_lora_diffusers.safetensors", model, strength=0.7)
    assert any(p.target.endswith("to_added_qkv") and p.offset == 32 for p in second.patches)
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs())[0], reference(**_inputs())[0], rtol=1e-5, atol=1e-5)


def test_fused_projections_share_storage_and_strength_buffer_stays_float32(tiny_dir):
    from flux_vector.fast import share_unfused_weights
    from flux_vector.lora import fuse_qkv_projections, load_lora

    model = _tiny_transformer(tiny_dir)
    handle = load_lora(tiny_dir / "tiny_lora_kohya.safetensors", model, strength=0.7)
    fuse_qkv_projections(model, [handle])
    assert share_unfused_weights(model) == 2 * 6 + 2 * 3
    attn = model.transformer_blocks[1].attn
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight[32:].data_ptr()
    model.to(torch.bfloat16)
    adapter = attn.to_qkv.adapters[0]
    assert adapter.strength.dtype == torch.float32 and adapter.strength.item() == pytest.approx(0.7)
    handle.set_strength(-0.25)
    assert adapter.strength.item() == -0.25


def test_fp8_quantizes_the_block_linears_only(tiny_dir):
    """Which linears torchao would get (the selection logic of a GPU-only path, checked on CPU)."""
    from flux_vector.fast import fp8_filter
    from flux_vector.lora import fuse_qkv_projections, load_lora

    model = _tiny_transformer(tiny_dir)
    fuse_qkv_projections(model, [load_lora(tiny_dir / "tiny_lora_kohya.safetensors", model)])
    keep = fp8_filter(model)
    chosen = {name for name, m in model.named_modules() if keep(m, name)}
    for name in (
        "transformer_blocks.0.attn.to_qkv.base",
        "transformer_blocks.0.attn.to_added_qkv.base",
        "transformer_blocks.0.attn.to_out.0.base",
        "transformer_blocks.1.ff.net.2.base",
        "transformer_blocks.1.ff_context.net.0.proj.base",
        "single_transformer_blocks.1.proj_mlp.base",
        "single_transformer_blocks.0.proj_out.base",
        "transformer_blocks.0.attn.to_q",
    ):
        assert name in chosen, name
    for name in (
        "transformer_blocks.0.norm1.linear.base",
        "single_transformer_blocks.0.norm.linear.base",
        "proj_out.base",
        "norm_out.linear.base",
        "x_embedder.base",
        "context_embedder.base",
        "time_text_embed.timestep_embedder.linear_1.base",
        "transformer_blocks.0.attn.to_qkv",
    ):
        assert name not in chosen, name


def test_fuse_refuses_an_unknown_lora_or_8bit_layers(tiny_dir):
    from flux_vector.lora import LoraError, fuse_qkv_projections, load_lora

    model = _tiny_transformer(tiny_dir)
    load_lora(tiny_dir / "tiny_lora_kohya.safetensors", model)
    with pytest.raises(LoraError, match="handle was not passed"):
        fuse_qkv_projections(model, [])


# ----------------------------------------------------------------------------------------------- compile


@pytest.fixture(scope="module")
def eager_and_compiled(tiny_dir):
    """Eager references at several strengths, then the same pipeline with the full CPU fast plan (compiled)."""
    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
    strengths = (1.0, 0.5, -1.0, 0.0)
    eager = {s: _generate(pipe, s) for s in strengths}
    lines = []
    plan = pipe.enable_fast(log=lines.append)
    assert plan.compile and plan.fuse_qkv and not plan.fp8
    warm = pipe.warmup([(64, 64)], steps=2)[(64, 64)]  # compiles
    print(f"\ntiny CPU regional compile: {warm}")
    assert warm["compile_s"] > 0 and warm["first_s"] > warm["warm_s"]
    first = _generate(pipe, 1.0)
    return pipe, eager, first, lines


def _generate(pipe, strength):
    return pipe("v3ct0r style, a cat", width=64, height=64, steps=2, seed=3, lora_strength=strength, progress=False)


def test_compiled_tiny_pipeline_matches_eager(eager_and_compiled):
    pipe, eager, first, lines = eager_and_compiled
    assert any("compile: regional" in line for line in lines)
    torch.testing.assert_close(first.latents, eager[1.0].latents, rtol=1e-4, atol=1e-4)
    assert pipe.fast_timings.keys() >= {"fuse_qkv_s", "compile_setup_s"}
    cache = Path(os.environ["FLUX_VECTOR_CACHE"]) / "flux_vector" / "inductor"  # the per-run test cache
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and any(cache.rglob("*.py"))  # compiled code on disk


def test_strength_switches_do_not_recompile(eager_and_compiled):
    from torch._dynamo.utils import counters

    pipe, eager, _, _ = eager_and_compiled
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        for strength in (0.5, -1.0, 0.0):
            started = time.perf_counter()
            pipe.set_lora_strength(strength)
            assert time.perf_counter() - started < 0.3
            result = _generate(pipe, strength)
            torch.testing.assert_close(result.latents, eager[strength].latents, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs
    with pytest.raises(RuntimeError, match="already applied"):
        pipe.enable_fast()


# ----------------------------------------------------------------------------------------------- step cache


def test_step_cache_is_deterministic_and_reports_its_error(tiny_dir):
    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
    exact = pipe("v3ct0r style, a car", width=64, height=64, steps=6, seed=2, progress=False).latents
    cached = FluxVectorPipeline.from_pretrained("tiny", fast={"step_cache": 0.9}, log=lambda *_: None)
    assert cached.fast_plan.step_cache == 0.9 and not cached.fast_plan.compile
    a = cached("v3ct0r style, a car", width=64, height=64, steps=6, seed=2, progress=False).latents
    b = cached("v3ct0r style, a car", width=64, height=64, steps=6, seed=2, progress=False).latents
    assert torch.equal(a, b)  # the cache state is reset per generation
    error = float((a - exact).norm() / exact.norm())
    assert 0 < error < 1  # approximate: skipped steps change the result, but not into noise


# ----------------------------------------------------------------------------------------------- CLI, bench


def test_cli_fast_flag_asks_for_the_fast_mode(monkeypatch, tmp_path):
    from flux_vector import cli
    from flux_vector.pipeline import FluxVectorPipeline

    seen = {}

    def fake_from_pretrained(model, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(FluxVectorPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    args = ["generate", "--prompt", "a cat", "--model", "tiny", "--out", str(tmp_path / "x.png")]
    assert cli.main([*args, "--fast"]) == 2 and seen["fast"] is True
    assert cli.main(args) == 2 and seen["fast"] is False


def test_bench_gpu_smoke_on_cpu(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gpu.py"),
            "--tiny",
            "--steps",
            "2",
            "--size",
            "64",
            "--repeats",
            "1",
            "--modes",
            "diffusers,ours,ours-512tok,ours-fused,fast,fast-fp8,8bit,8bit-offload,offload-model",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench_gpu.json").read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    modes = {"diffusers", "ours", "ours-512tok", "ours-fused", "fast", "fast-fp8", "8bit", "8bit-offload"}
    modes.add("offload-model")
    assert rows.keys() == modes
    for mode in ("diffusers", "ours", "ours-512tok", "fast", "8bit"):
        assert rows[mode]["total_s"] > 0 and rows[mode]["per_step_s"] > 0, rows[mode]
    assert rows["ours"]["rel_error"] == 0.0 and rows["fast"]["rel_error"] < 1e-4
    assert rows["fast"]["compile_s"] is not None and rows["fast"]["recompiles_on_switch"] == 0
    assert "sm89" in rows["fast-fp8"]["skipped"]
    # model offload runs on the CPU too (the hooks are exercised, nothing moves): the same latent as ours
    assert rows["offload-model"]["rel_error"] == 0.0
    assert rows["8bit-offload"]["total_s"] > 0 and rows["8bit-offload"]["offload_plan"]["transformer"] == "device"
    assert len(rows["ours-fused"]["fused_switch_ms"]) == 3 and rows["ours-fused"]["w0_home"] == "device"
    assert rows["ours-fused"]["rel_error"] < 1e-5  # fused at strength 1 = the runtime adapter
    # 512 instead of 256 T5 tokens: a different (longer) conditioning, so a different latent
    assert rows["ours-512tok"]["text_tokens"] == 512 and rows["ours-512tok"]["rel_error"] > 0
    table = (out / "bench_gpu.md").read_text()
    assert "| fast |" in table and "vs diffusers" in table
    from PIL import Image

    assert Image.open(out / "bench_gpu.png").size[0] > 100


def test_compile_is_the_deprecated_name_of_the_whole_fast_mode():
    from flux_vector.fast import FULL
    from flux_vector.pipeline import _fast_from_deprecated_compile

    assert _fast_from_deprecated_compile({"fuse_qkv": True}, None) == {"fuse_qkv": True}
    with pytest.warns(DeprecationWarning, match="use fast=True"):
        assert _fast_from_deprecated_compile(None, True) is True
    with pytest.warns(DeprecationWarning):
        assert _fast_from_deprecated_compile({"fp8": False}, True) == {**FULL, "fp8": False}
    with pytest.warns(DeprecationWarning):
        assert _fast_from_deprecated_compile(None, False) is None
