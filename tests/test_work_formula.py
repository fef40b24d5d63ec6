"""The work measure (``request.work_of``): image tokens + text tokens per model call, model calls per step (cfg,
the samplers' own count from the registry), steps and batch; and the registry's counts against real sampler runs."""

from __future__ import annotations

import pytest
import torch

from flux_vector.prompt.tokens import T5_MIN_LENGTH
from flux_vector.request import (
    DEFAULT_MAX_WORK,
    T5_MIN_TOKENS,
    OverBudget,
    TextTokens,
    WorkBudget,
    parse_request,
    uses_negative,
    work_of,
)
from flux_vector.sampling.sample import ksampler_sigmas
from flux_vector.sampling.samplers import SAMPLERS


def request(**params):
    return parse_request({"prompt": "a cat", "width": 128, "height": 128, "steps": 20, **params})


def test_the_padded_t5_length_is_defined_once():
    assert T5_MIN_LENGTH == T5_MIN_TOKENS == 256


def test_the_formula():
    image = (128 // 16) * (128 // 16)  # 64 image tokens
    assert work_of(request()) == 20 * (image + 256)
    assert work_of(request(), TextTokens(300)) == 20 * (image + 301)  # 300 tokens + the end token
    assert work_of(request(batch_size=3), TextTokens(10)) == 3 * 20 * (image + 256)  # padded to 256
    # cfg != 1: the negative prompt is a second model call every step, at its own length
    assert work_of(request(cfg=2.0), TextTokens(10, 600)) == 20 * ((image + 256) + (image + 601))
    # heun calls the model twice a step, heunpp2 three times (from the sampler registry)
    assert work_of(request(sampler_name="heun")) == 2 * 20 * (image + 256)
    assert work_of(request(sampler_name="heunpp2", cfg=3.0)) == 3 * 20 * 2 * (image + 256)
    # the cfg_pp samplers evaluate the negative prompt at cfg 1; euler_pp is euler at twice the cfg
    assert uses_negative(request(sampler_name="euler_cfg_pp")) and uses_negative(request(sampler_name="euler_pp"))
    assert not uses_negative(request(cfg=1.0))


def test_the_default_limit_admits_the_hosted_apis_largest_cfg1_request():
    largest = parse_request({"prompt": "a cat", "aspect_ratio": "1:1", "steps": 100, "batch_size": 8})
    WorkBudget(max_image_pixels=4096**2, max_batch_pixels=8 * 1024**2).check(largest, TextTokens(511))
    assert work_of(largest, TextTokens(511)) == DEFAULT_MAX_WORK


def test_over_the_work_names_the_fields_count_limit_and_setting():
    budget = WorkBudget(max_work=100_000)
    with pytest.raises(OverBudget) as raised:
        budget.check(request(sampler_name="heun", cfg=2.0, steps=100), TextTokens(400, 10))
    exc = raised.value
    assert exc.setting == "max_work" and exc.limit == 100_000 and exc.amount == 2 * 100 * (64 + 401 + 64 + 256)
    assert exc.fields == ("width", "height", "batch_size", "steps", "sampler_name", "cfg", "prompt")
    assert "--max-work" in str(exc) and f"{exc.amount:,}" in str(exc)


def test_over_the_prompt_tokens_names_the_field():
    budget = WorkBudget(max_prompt_tokens=100)
    budget.check(request(), TextTokens(100))
    for text, field in ((TextTokens(101), "prompt"), (TextTokens(5, 24002), "negative_prompt")):
        with pytest.raises(OverBudget) as raised:
            budget.check(request(cfg=2.0), text)
        assert raised.value.fields == (field,) and raised.value.setting == "max_prompt_tokens"
        assert "--max-prompt-tokens" in str(raised.value) and "T5 tokens" in str(raised.value)


class CountingModel:
    """A denoiser stand-in that counts its calls (the samplers read ``mu`` and ``uncond`` from it)."""

    mu = 1.15

    def __init__(self):
        self.calls, self.uncond = 0, None

    def __call__(self, x, sigma):
        self.calls += 1
        self.uncond = x * 0.9
        return x * 0.9


@pytest.mark.parametrize("name", sorted(n for n in SAMPLERS if n != "dpm_adaptive"))
def test_the_registry_counts_every_samplers_model_calls(name):
    """``SamplerSpec.model_calls`` bounds the calls a step makes, and is reached (not an over-charge)."""
    spec = SAMPLERS[name]
    ratios = []
    for steps in (1, 2, 3, 5, 10, 30):
        sigmas = ksampler_sigmas(name, "simple", steps, 1.15, 1.0)
        model = CountingModel()
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        noise = None if spec.noise == "none" else (lambda a, b: torch.zeros(1, 4, 4, 4))
        spec.fn(model, x * sigmas[0], sigmas, noise=noise, callback=None)
        assert model.calls <= spec.model_calls * steps, (steps, model.calls)
        ratios.append(model.calls / steps)
    assert max(ratios) > spec.model_calls - 1


def test_dpm_adaptive_is_priced_at_its_three_calls_an_attempt():
    assert SAMPLERS["dpm_adaptive"].model_calls == 3
