"""The Python side of batches on the tiny model: ``generate_many`` (input order, the same pixels as ``generate``,
failures in place) and ``flux_vector.batch`` (files with their metadata, resume, ``overwrite``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flux_vector
from flux_vector.image_metadata import read_metadata
from flux_vector.pipeline import generate_many
from flux_vector.request import parse_request
from tests.fake_pipeline import with_fault_markers

SMALL = {"width": 32, "height": 32, "steps": 2}


def test_generate_many_yields_in_input_order_the_images_generate_makes(tiny_pipe):
    requests = [
        parse_request({"prompt": "a fox", "seed": 1, **SMALL}),
        {"prompt": "a cat", "seed": 2, "width": 48, "height": 32, "steps": 1},
        parse_request({"prompt": "a fox", "seed": 3, "sampler_name": "heun", **SMALL}),
    ]
    results = list(tiny_pipe.generate_many(requests, progress=False))
    assert [(r.request.prompt, r.request.seed, r.width) for r in results] == [
        ("a fox", 1, 32),
        ("a cat", 2, 48),
        ("a fox", 3, 32),
    ]
    for result in results:
        alone = tiny_pipe.generate(result.request, progress=False)
        assert np.array_equal(np.asarray(alone.image), np.asarray(result.image))


def test_generate_many_returns_or_raises_a_failing_request(tiny_pipe):
    pipe = with_fault_markers(tiny_pipe)
    requests = [{"prompt": "ok", **SMALL}, {"prompt": "[[fault:oom]] big", **SMALL}, {"prompt": "also ok", **SMALL}]
    outcomes = list(generate_many(pipe, requests, progress=False, errors="return"))
    assert isinstance(outcomes[1], MemoryError)
    assert [o.request.prompt for o in (outcomes[0], outcomes[2])] == ["ok", "also ok"]
    with pytest.raises(MemoryError):
        list(generate_many(pipe, requests, progress=False))
    with pytest.raises(ValueError, match="errors must be"):
        list(tiny_pipe.generate_many(requests, errors="ignore"))


def test_flux_vector_batch_writes_files_with_their_record_resumes_and_overwrites(tiny_pipe, tmp_path):
    rows = [{"prompt": "a red star"}, {"prompt": "a moon", "output_format": "svg"}, {"prompt": "x", "steps": 0}]
    first = flux_vector.batch(rows, tmp_path, pipe=tiny_pipe, progress=False, seeds=range(1, 3), **SMALL)
    assert (first.total, first.done_now, first.done_before, first.exit_code) == (4, 4, 0, 3)
    assert [(r.line, r.error.split(" ")[0]) for r in first.invalid] == [(3, "steps=0")]
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines[0]["identity"] == tiny_pipe.identity
    for line in lines:
        (record,) = line["files"]
        made = read_metadata(tmp_path / record["name"])
        assert made["request"] == line["request"] and made["model"] == "tiny"

    again = flux_vector.batch(rows, tmp_path, pipe=tiny_pipe, progress=False, seeds=range(1, 3), **SMALL)
    assert (again.done_now, again.done_before) == (0, 4)
    changed = flux_vector.batch(rows, tmp_path, pipe=tiny_pipe, progress=False, seeds=range(1, 4), **SMALL)
    assert (changed.done_now, changed.done_before) == (2, 4)  # seed 3 of each row is new
    redo = flux_vector.batch(rows, tmp_path, pipe=tiny_pipe, progress=False, seeds=range(1, 4), overwrite=True, **SMALL)
    assert (redo.done_now, redo.done_before) == (6, 0)
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 6
