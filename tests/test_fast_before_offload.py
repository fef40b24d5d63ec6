"""Issue 31 point 1: the fast mode's weight transforms (fused QKV, fp8: new parameters) run before offload, so the
offload hooks hold the parameters the model computes with; where they cannot, the plan or the pipeline refuses with
the reason."""

import pytest
import torch

from flux_vector.fast import FastEnv, choose_fast_plan
from flux_vector.offload import OffloadChoice
from flux_vector.pipeline import FluxVectorPipeline
from tests.tiny_parts import group_hooks, tiny_lora, tiny_parts

CPU = torch.device("cpu")
SM90 = FastEnv("cuda", (9, 0), frozenset({"torchao", "triton", "cudnn_attention"}))


@pytest.fixture
def stream_snapshot(monkeypatch):
    """Group offload with a CUDA stream snapshots every tensor of a group into a dict keyed by the tensor object
    (diffusers ``ModuleGroup._init_cpu_param_dict``, pinned) and looks each parameter up in it on every onload. On the
    CPU diffusers uses no stream and keeps no dict; this builds the dict as the stream path does, unpinned (pinning
    needs CUDA): the one fake."""
    from diffusers.hooks import group_offloading

    def snapshot(self):
        held = {}
        for module in self.modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                held[tensor] = tensor.data
        for tensor in [*self.parameters, *self.buffers]:
            held[tensor] = tensor.data
        return held

    monkeypatch.setattr(group_offloading.ModuleGroup, "_init_cpu_param_dict", snapshot)


def _group_pipeline(tiny_dir, plan):
    parts = tiny_parts(tiny_dir)
    lora = tiny_lora(tiny_dir, parts)
    return FluxVectorPipeline(
        **parts, device=CPU, dtype=torch.float32, offload=OffloadChoice("group", CPU, "test"), lora=lora, fast_plan=plan
    )


def test_group_offload_holds_the_fused_qkv_parameters(tiny_dir, stream_snapshot):
    plan = choose_fast_plan(FastEnv("cpu"), {"fuse_qkv": True}, full=False, offload="group")
    assert plan.fuse_qkv
    pipe = _group_pipeline(tiny_dir, plan)
    held = {id(t) for hook in group_hooks(pipe.transformer).values() for t in hook.group.cpu_param_dict}
    params = {id(p): name for name, p in pipe.transformer.named_parameters()}
    assert any("to_qkv" in name for name in params.values()), "QKV fusion did not run"
    missing = sorted(name for key, name in params.items() if key not in held)
    assert not missing, f"parameters no offload hook holds (a KeyError on the first CUDA onload): {missing[:5]}"
    result = pipe("a cat", width=64, height=64, steps=1, seed=0, progress=False)
    assert torch.isfinite(result.latents).all()


def test_fast_after_group_offload_is_refused_with_the_reason(tiny_dir):
    pipe = _group_pipeline(tiny_dir, None)
    with pytest.raises(ValueError, match="before offload"):
        pipe.enable_fast({"fuse_qkv": True}, full=False, log=lambda *_: None)


def test_fp8_under_sequential_offload_is_off_with_the_reason():
    plan = choose_fast_plan(SM90, offload="sequential", dtype=torch.bfloat16)
    assert not plan.fp8 and "sequential" in plan.why["fp8"]
    with pytest.raises(ValueError, match="sequential"):
        choose_fast_plan(SM90, {"fp8": True}, offload="sequential")
    # group offload carries torchao tensors (diffusers swaps them whole) once fp8 runs first
    assert choose_fast_plan(SM90, offload="group", dtype=torch.bfloat16).fp8
