"""Issue 31 point 4 and the fp8 load checks: torchao's fp8 setup leaves the process's inductor settings alone, fp8
with float16 weights is refused at load with the reason, and auto offload weighs the fp8 transformer's size."""

import pytest
import torch

from flux_vector.fast import FastEnv, choose_fast_and_offload, choose_fast_plan, fp8_saved_bytes
from flux_vector.offload import GiB

SM89 = FastEnv("cuda", (8, 9), frozenset({"torchao", "triton"}))
CUDA = torch.device("cuda")
FLUX_DEV = {
    "transformer": int(23.8 * GiB),
    "text_encoder_2": int(9.5 * GiB),
    "vae": int(0.2 * GiB),
    "text_encoder": int(0.25 * GiB),
}
INDUCTOR_KEYS = (
    "coordinate_descent_tuning",
    "coordinate_descent_check_all_directions",
    "force_fuse_int_mm_with_mul",
    "fx_graph_cache",
)


def _inductor_settings() -> dict:
    import torch._inductor.config as inductor

    return {
        **{k: getattr(inductor, k) for k in INDUCTOR_KEYS},
        "unique_kernel_names": inductor.triton.unique_kernel_names,
    }


def test_fp8_setup_leaves_the_inductor_config_alone(tiny_dir, monkeypatch):
    pytest.importorskip("torchao")
    from diffusers import FluxTransformer2DModel
    from torchao.quantization import quant_api

    from flux_vector.fast import quantize_fp8

    # The CPU cannot make float8 weights (torchao asserts sm89+ in the tensor conversion): that one CUDA-only step
    # is replaced by a passthrough; the rest of torchao's quantize_ (where it would change inductor's settings) runs.
    converted = []
    monkeypatch.setattr(
        quant_api,
        "_float8_dynamic_activation_float8_weight_quantize_tensor",
        lambda weight, config: converted.append(weight.shape) or weight,
    )
    model = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer", dtype=torch.bfloat16)
    before = _inductor_settings()
    count = quantize_fp8(model)
    assert count == len(converted) > 0
    assert _inductor_settings() == before


def test_fp8_with_float16_weights_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs bfloat16 weights; this pipeline loads float16"):
        choose_fast_plan(SM89, {"fp8": True}, dtype=torch.float16)
    plan = choose_fast_plan(SM89, dtype=torch.float16)
    assert not plan.fp8 and "bfloat16" in plan.why["fp8"]
    assert choose_fast_plan(SM89, dtype=torch.bfloat16).fp8


def test_fp8_at_load_under_float16_is_a_clear_error(tiny_dir, monkeypatch):
    """from_pretrained refuses before any weight is touched (on the CPU the plan's CUDA branch is forced)."""
    import flux_vector.fast as fast
    from flux_vector.pipeline import FluxVectorPipeline

    monkeypatch.setattr(fast, "detect_env", lambda device: SM89)
    with pytest.raises(ValueError, match="bfloat16"):
        FluxVectorPipeline.from_pretrained("tiny", dtype=torch.float16, fast={"fp8": True}, log=lambda *_: None)


def test_auto_offload_weighs_the_fp8_transformer(tiny_dir):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer", dtype=torch.bfloat16)
    saved = fp8_saved_bytes(model)
    assert 0 < saved < sum(p.numel() * 2 for p in model.parameters())
    # FLUX.1-dev on a 20 GiB card: bf16 needs group offload (no compile); fp8 (~11.5 GB smaller) fits model offload
    common = dict(offload="auto", device=CUDA, free_bytes=20 * GiB, component_bytes=FLUX_DEV, dtype=torch.bfloat16)
    plan, choice = choose_fast_and_offload(SM89, True, fp8_saved_bytes=int(11.5 * GiB), **common)
    assert choice.mode == "model" and plan.fp8 and plan.compile
    plan, choice = choose_fast_and_offload(SM89, {"fp8": False}, full=True, **common)
    assert choice.mode == "group" and not plan.fp8 and not plan.compile
    plan, choice = choose_fast_and_offload(SM89, None, **common)
    assert plan is None and choice.mode == "group"
