"""FluxVectorPipeline on the tiny checkpoint: sizes, seeds, every sampler, 8-bit, prompt cache, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flux_vector import ASPECT_RATIOS, RequestError
from flux_vector.request import parse_request
from flux_vector.sampling import SAMPLER_NAMES

SMALL = {"width": 64, "height": 64}


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im) for im in result.images])


def test_every_aspect_ratio_maps_to_its_table_size_without_generating(tiny_pipe):
    """The size table as a table: each ratio's request and the pipeline agree with it, and each entry is an SDXL
    size (multiples of 64, about one megapixel, the named shape). One size is drawn end to end below."""
    for ratio, (width, height) in ASPECT_RATIOS.items():
        request = parse_request({"prompt": "a cat", "aspect_ratio": ratio})
        assert request.size == tiny_pipe.size_of(request) == (width, height), ratio
        assert width % 64 == 0 and height % 64 == 0, ratio
        assert 0.85 < width * height / 1024**2 < 1.1, ratio
        named_w, named_h = (int(n) for n in ratio.split(":"))
        assert abs(width / height - named_w / named_h) < 0.1 * named_w / named_h, ratio
    assert len(ASPECT_RATIOS) == 13


@pytest.mark.slow  # a hosted size (832x1216) on the CPU
def test_default_aspect_ratio_is_2_3_end_to_end(tiny_pipe):
    result = tiny_pipe("a cat", steps=1, progress=False)
    assert result.image.size == (result.width, result.height) == ASPECT_RATIOS["2:3"] == (832, 1216)


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_pipe):
    a = pixels(tiny_pipe("a cat", seed=7, steps=3, progress=False, **SMALL))
    b = pixels(tiny_pipe("a cat", seed=7, steps=3, progress=False, **SMALL))
    c = pixels(tiny_pipe("a cat", seed=8, steps=3, progress=False, **SMALL))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_width_height_override_and_batch(tiny_pipe):
    result = tiny_pipe("a cat", width=96, height=64, batch_size=2, steps=1, progress=False)
    assert [im.size for im in result.images] == [(96, 64), (96, 64)]
    single = tiny_pipe("a cat", width=96, height=64, batch_size=1, steps=1, progress=False)
    # One noise draw for the whole batch, so image 0 of a batch is the batch-of-1 image (ComfyUI's property). Only
    # "close": CPU matmuls of a [2, n] input round differently from [1, n], which can move a pixel by one level.
    diff = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(single.image, dtype=int))
    assert diff.max() <= 2


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
def test_every_sampler_runs_through_the_pipeline(tiny_pipe, sampler_name):
    result = tiny_pipe("a cat", sampler_name=sampler_name, steps=3, progress=False, **SMALL)
    assert result.image.size == (64, 64)
    assert result.timings["total_s"] > 0


def test_prompt_embeddings_are_cached(tiny_pipe):
    tiny_pipe("a unique prompt for the cache", steps=1, progress=False, **SMALL)
    hits, misses = tiny_pipe.prompt_cache.hits, tiny_pipe.prompt_cache.misses
    tiny_pipe("a unique prompt for the cache", steps=1, seed=1, progress=False, **SMALL)
    assert (tiny_pipe.prompt_cache.hits, tiny_pipe.prompt_cache.misses) == (hits + 1, misses)


def test_cfg_evaluates_the_negative_prompt(tiny_pipe):
    plain = pixels(tiny_pipe("a cat", steps=2, progress=False, **SMALL))
    guided = pixels(tiny_pipe("a cat", negative_prompt="a dog", cfg=3.0, steps=2, progress=False, **SMALL))
    assert not np.array_equal(plain, guided)


def test_models_in_eval_mode(tiny_pipe):
    for module in (tiny_pipe.transformer, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.text_encoder_2):
        assert not module.training


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": True}, "steps"),
        ({"seed": -1}, "seed"),
        ({"aspect_ratio": "7:5"}, "aspect_ratio"),
        ({"sampler_name": "euler_a"}, "sampler_name"),
        ({"lora_strength": 11}, "lora_strength"),
        ({"width": 100, "height": 64}, "width"),
        ({"scheduler": "linear"}, "scheduler"),
    ],
)
def test_invalid_parameters_name_the_field(tiny_pipe, params, field):
    with pytest.raises(RequestError) as info:
        tiny_pipe("a cat", progress=False, **params)
    assert info.value.field == field
    assert field in str(info.value)


def test_8bit_path_generates(tiny_dir):
    import bitsandbytes as bnb

    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", quantize="8bit", log=lambda *_: None)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in pipe.transformer.modules())
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.int8
    result = pipe("a cat", steps=2, progress=False, **SMALL)
    assert result.image.size == (64, 64)
    assert np.asarray(result.image).std() > 0
    pipe.set_lora_strength(-2.0)  # the LoRA works on top of the int8 layers
    other = pipe("a cat", steps=2, progress=False, lora_strength=-2.0, **SMALL)
    assert not np.array_equal(np.asarray(result.image), np.asarray(other.image))


def _lora_deltas(pipe) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]:
    """Per affected module: (module, W0, full-size delta at strength 1) computed from the LoRA's own factors."""
    out = {}
    for patch in pipe.lora.patches:
        module = pipe.transformer.get_submodule(patch.target) if patch.component == "transformer" else None
        if module is None:
            continue
        base = module.base
        if patch.target not in out:
            out[patch.target] = (module, base.weight.detach().clone(), torch.zeros_like(base.weight), base.bias)
        delta = patch.delta(1.0)
        out[patch.target][2][patch.offset : patch.offset + delta.shape[0]] += delta
    return out


@pytest.mark.parametrize("lora_file", ["tiny_lora_kohya.safetensors", "tiny_lora_diffusers.safetensors"])
def test_pipeline_lora_layers_are_exact_at_every_strength(tiny_dir, lora_file):
    from flux_vector import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("tiny", lora=tiny_dir / lora_file, log=lambda *_: None)
    assert type(pipe.transformer).__name__ == "FluxTransformer2DModel"
    layers = _lora_deltas(pipe)
    assert len(layers) >= 8
    generator = torch.Generator().manual_seed(0)
    inputs = {name: torch.randn(3, m.base.in_features, generator=generator) for name, (m, *_) in layers.items()}
    strengths = [1.0, -1.0, 2.5, -10.0, 10.0, 0.0]
    switches = [float(s) for s in torch.empty(20).uniform_(-10, 10, generator=generator)]
    for s in strengths + switches + strengths:
        pipe.set_lora_strength(s)
        for name, (module, w0, delta, bias) in layers.items():
            want = torch.nn.functional.linear(inputs[name], w0 + s * delta, bias)
            got = module(inputs[name])
            if s == 0:
                assert torch.equal(got, torch.nn.functional.linear(inputs[name], w0, bias)), name
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pipeline_strength_zero_equals_no_lora(tiny_dir):
    from flux_vector import FluxVectorPipeline

    quiet = {"log": lambda *_: None}
    with_lora = FluxVectorPipeline.from_pretrained("tiny", lora_strength=0.0, **quiet)
    without = FluxVectorPipeline.from_pretrained("tiny", lora=None, **quiet)
    a = pixels(with_lora("a cat", steps=2, progress=False, **SMALL))
    b = pixels(without("a cat", steps=2, progress=False, **SMALL))
    assert np.array_equal(a, b)
    c = pixels(with_lora("a cat", steps=2, lora_strength=3.0, progress=False, **SMALL))
    assert not np.array_equal(a, c)


def test_pipeline_unplaceable_lora_key_is_named(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from flux_vector import FluxVectorPipeline
    from flux_vector.lora import LoraError

    sd = load_file(tiny_dir / "tiny_lora_kohya.safetensors")
    sd["lora_unet_double_blocks_99_img_attn_qkv.lora_down.weight"] = torch.zeros(4, 32)
    sd["lora_unet_double_blocks_99_img_attn_qkv.lora_up.weight"] = torch.zeros(96, 4)
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(LoraError, match="lora_unet_double_blocks_99_img_attn_qkv"):
        FluxVectorPipeline.from_pretrained("tiny", lora=tmp_path / "bad.safetensors", log=lambda *_: None)


@pytest.mark.parametrize("bad", [float("nan"), 10.5, -11, "1", True, float("inf")])
def test_set_lora_strength_rejects(tiny_pipe, bad):
    with pytest.raises(ValueError, match="strength"):
        tiny_pipe.set_lora_strength(bad)
