"""What a serving process does with its pipeline before the first job: the LoRA fused where the pipeline can, and a
warm-up at the sizes it serves (the default size and ``--warmup-size``), not at a size no client asks for."""

from __future__ import annotations

import pytest

from flux_vector.cli import main
from flux_vector.lora import NoLoraLoaded
from flux_vector.request import ASPECT_RATIOS, GenerationRequest, ModelCannot, parse_request
from flux_vector.serving import parse_size, prepare_for_serving, served_sizes


def _recording(pipe, monkeypatch) -> list[tuple[int, int]]:
    """The (width, height) of every generation ``pipe`` is asked for (drawn for real)."""
    seen: list[tuple[int, int]] = []
    real = pipe.generate

    def generate(request: GenerationRequest, **kwargs):
        result = real(request, **kwargs)
        seen.append((result.width, result.height))
        return result

    monkeypatch.setattr(pipe, "generate", generate)
    return seen


def test_serving_warms_up_at_the_default_size_and_the_sizes_configured(tiny_pipe, monkeypatch):
    monkeypatch.setattr(tiny_pipe, "aspect_sizes", {**ASPECT_RATIOS, "2:3": (48, 64)})  # small sizes: fast on a CPU
    seen = _recording(tiny_pipe, monkeypatch)
    lines: list[str] = []
    prepare_for_serving(tiny_pipe, fuse=False, warmup_sizes=[(64, 32), (48, 64)], log=lines.append)
    assert tiny_pipe.default_size() == (48, 64) == tiny_pipe.size_of(parse_request({"prompt": "a cat"}))
    assert seen == [(48, 64), (64, 32)]  # the default size first, each size once, nothing else (no 256x256)
    assert [line.split(",")[0] for line in lines] == ["warm-up: 48x64", "warm-up: 64x32"]


def test_served_sizes_without_a_default_size_are_the_configured_ones():
    class Plugin:  # a pipeline_factory plugin that does not say what its default size is
        pass

    assert served_sizes(Plugin(), [(64, 64), (64, 64), (32, 32)]) == [(64, 64), (32, 32)]


def test_warmup_size_flag_takes_a_size_or_an_aspect_ratio_and_names_what_is_allowed(capsys):
    assert parse_size("1024x1024") == (1024, 1024) and parse_size("16:9") == ASPECT_RATIOS["16:9"]
    for bad, problem in (("1000x1000", "multiple of 16"), ("big", "WIDTHxHEIGHT"), ("0x64", "width")):
        with pytest.raises(ValueError, match=problem):
            parse_size(bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--warmup-size", "1000x1000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--warmup-size='1000x1000' is not allowed" in err and "multiple of 16" in err


def test_prepare_applies_the_strength_rules_once_and_times_the_switch(tiny_dir):
    from flux_vector import FluxVectorPipeline

    bare = FluxVectorPipeline.from_pretrained("tiny", lora=None, log=lambda *_: None)
    default = parse_request({"prompt": "a cat"})
    prepared = bare.prepare(default)
    assert prepared.request.lora_strength == 0.0 and prepared.lora_switch_s is None
    assert bare.prepare(prepared.request) == prepared  # prepared again: nothing changes
    with pytest.raises(NoLoraLoaded, match=r"lora_strength=0\.5 cannot be served") as err:
        bare.prepare(parse_request({"prompt": "a cat", "lora_strength": 0.5}))
    assert isinstance(err.value, ModelCannot)  # what the worker reports as the job's error, importing no lora/

    with_lora = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
    switched = with_lora.prepare(parse_request({"prompt": "a cat", "lora_strength": 0.25}))
    assert with_lora.lora.strength == 0.25 and switched.lora_switch_s is not None and switched.lora_switch_s >= 0
    assert with_lora.prepare(switched.request).lora_switch_s is None  # already at that strength
    assert not with_lora.fuse_lora(log=lambda m: None) or with_lora.lora.fused
