"""Issue 31 points 2 and 6: what each offload mode moves. bitsandbytes int8 weights stay on the device (only the text
encoders and the VAE are offloaded); group offload groups T5 by its encoder blocks, and auto never picks a mode whose
largest group does not fit."""

import pytest
import torch

from flux_vector.offload import (
    DEVICE,
    GROUP,
    MODEL,
    GiB,
    OffloadChoice,
    apply_offload,
    block_group_bytes,
    choose_offload,
    largest_group_bytes,
    module_bytes,
    offload_plan,
)
from tests.tiny_parts import group_hooks, tiny_parts

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FLUX_DEV = {
    "transformer": int(23.8 * GiB),
    "text_encoder_2": int(9.5 * GiB),
    "vae": int(0.2 * GiB),
    "text_encoder": int(0.25 * GiB),
}
DOUBLE_BLOCK = int(0.68 * GiB)  # FLUX.1-dev's largest group (a double block) in bf16; a T5-XXL block is 0.38


# ----------------------------------------------------------------------------------------------- 8-bit (point 2)


def test_8bit_keeps_the_transformer_on_the_device_in_every_offload_plan():
    assert offload_plan("model", resident_transformer=True) == {
        "text_encoder": MODEL,
        "text_encoder_2": MODEL,
        "transformer": DEVICE,
        "vae": MODEL,
    }
    assert offload_plan("group", resident_transformer=True)["transformer"] == DEVICE
    assert offload_plan("group", resident_transformer=True)["text_encoder_2"] == GROUP
    assert offload_plan("model")["transformer"] == MODEL  # bf16 weights move with the model hook as before
    with pytest.raises(ValueError, match="8bit"):
        offload_plan("sequential", resident_transformer=True)
    with pytest.raises(ValueError, match="8bit"):
        choose_offload("sequential", CUDA, 80 * GiB, FLUX_DEV, resident_transformer=True)


def test_auto_under_8bit_counts_the_int8_transformer_as_resident():
    sizes = {**FLUX_DEV, "transformer": int(12.2 * GiB)}
    # 18 GiB (a 20 GB card): the int8 transformer stays, T5 (9.5 GiB) cannot join it: grouped by blocks
    choice = choose_offload("auto", CUDA, 18 * GiB, sizes, largest_group=int(0.38 * GiB), resident_transformer=True)
    assert choice.mode == "group" and "int8 transformer kept" in choice.reason
    # 26 GiB: 12.2 + 9.5 (the largest offloaded component) + 4 fit: model offload of the text encoders
    assert choose_offload("auto", CUDA, 26 * GiB, sizes, resident_transformer=True).mode == "model"
    with pytest.raises(ValueError, match="keeps the int8 transformer"):
        choose_offload("auto", CUDA, 10 * GiB, sizes, largest_group=int(0.38 * GiB), resident_transformer=True)


def test_8bit_model_offload_moves_only_the_text_encoders_and_vae(tiny_dir, monkeypatch):
    """The int8 layers are never moved (``Int8Params.to`` is never called) and the transformer gets no hook that
    moves it; the text encoders and the VAE get accelerate's model-offload hooks. A generation runs through them."""
    import bitsandbytes as bnb

    from flux_vector.pipeline import FluxVectorPipeline
    from flux_vector.quantize import quantize_linears_8bit

    parts = tiny_parts(tiny_dir)
    quantize_linears_8bit(parts["transformer"], CPU)
    int8 = {name: m.weight for name, m in parts["transformer"].named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    cb = {name: w.CB for name, w in int8.items()}
    moved = []
    original_to = bnb.nn.Int8Params.to

    def spy(self, *args, **kwargs):
        moved.append(args or kwargs)
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(bnb.nn.Int8Params, "to", spy)
    pipe = FluxVectorPipeline(**parts, device=CPU, dtype=torch.float32, offload=OffloadChoice("model", CPU, "test"))
    assert pipe.offload_plan["transformer"] == DEVICE
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert type(getattr(pipe, name)._hf_hook).__name__ == "CpuOffload", name
    assert "CpuOffload" not in type(getattr(pipe.transformer, "_hf_hook", None)).__name__
    result = pipe("a cat", width=64, height=64, steps=1, seed=0, progress=False)
    assert torch.isfinite(result.latents).all()
    assert moved == [], f"Int8Params.to was called {len(moved)} times"
    now = {name: m.weight for name, m in pipe.transformer.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert all(now[name] is int8[name] for name in int8)
    assert all(now[name].data.data_ptr() == cb[name].data_ptr() for name in int8 if cb[name] is not None)


# ----------------------------------------------------------------------------------------------- T5 groups (point 6)


def test_group_offload_groups_t5_by_its_encoder_blocks(tiny_dir):
    parts = tiny_parts(tiny_dir)
    t5 = parts["text_encoder_2"]
    # diffusers' block-level grouping on the T5EncoderModel itself: no block list at the top, one group of everything
    assert block_group_bytes(t5) == [module_bytes(t5)]
    pipe_modules = {k: parts[k] for k in ("text_encoder", "text_encoder_2", "transformer", "vae")}
    apply_offload(OffloadChoice("group", CPU, "test"), None, pipe_modules)
    hooks = group_hooks(t5)
    blocks = list(t5.encoder.block)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        assert hooks[f"encoder.block.{i}"].group.modules == [block]
    assert "" not in hooks, "the whole T5 is one group"
    assert not group_hooks(parts["text_encoder"]), "CLIP-L stays on the device"
    # the sizes auto weighs are those groups: each block, and the embedding + final norm as one more
    expected = [module_bytes(b) for b in blocks]
    assert block_group_bytes(t5.encoder)[: len(blocks)] == expected
    assert largest_group_bytes({"text_encoder_2": t5}) == max(block_group_bytes(t5.encoder)) < module_bytes(t5)


def test_group_offloaded_tiny_pipeline_generates_like_no_offload(tiny_dir):
    from flux_vector.pipeline import FluxVectorPipeline

    ref = FluxVectorPipeline(
        **tiny_parts(tiny_dir), device=CPU, dtype=torch.float32, offload=OffloadChoice("none", CPU, "")
    )
    grouped = FluxVectorPipeline(
        **tiny_parts(tiny_dir), device=CPU, dtype=torch.float32, offload=OffloadChoice("group", CPU, "test")
    )
    args = dict(width=64, height=64, steps=2, seed=3, progress=False)
    assert torch.equal(grouped("a fox", **args).latents, ref("a fox", **args).latents)


@pytest.mark.parametrize(
    ("free_gib", "largest_gib", "mode"),
    [
        (8, 0.68, "group"),
        (8, 9.5, "sequential"),
        (16, 9.5, "sequential"),
        (24, 9.5, "group"),
        (24, 0.68, "group"),
        (5, 0.68, "sequential"),
    ],
)
def test_auto_never_picks_group_when_its_largest_group_does_not_fit(free_gib, largest_gib, mode):
    choice = choose_offload("auto", CUDA, int(free_gib * GiB), FLUX_DEV, largest_group=int(largest_gib * GiB))
    assert choice.mode == mode, choice.reason
    if mode == "group":
        assert f"largest group {largest_gib:.2f} GiB" in choice.reason
