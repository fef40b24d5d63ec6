"""The work budget (``--max-image-pixels`` / ``--max-batch-pixels`` / ``--max-step-pixels``): requests over it are a 400
naming the fields, on the server and in the facade; memory stays bounded (one-image VAE decode, tiles above 2048^2)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import flux_vector
from flux_vector.request import SLUG, WorkBudget
from tests.fake_pipeline import FakePipeline
from tests.server_helpers import SMALL, app_over_sqlite, post
from tests.server_process import ServerProcess


# ------------------------------------------------------------------------------------------ problem 1: work
def test_the_issue_request_is_over_the_budget_of_an_8_gib_device(tmp_path):
    budget = WorkBudget.for_memory(8 << 30)
    assert budget.max_image_pixels == 8 << 20 and WorkBudget.for_memory(80 << 30).max_image_pixels == 4096 * 4096
    store, app = app_over_sqlite(tmp_path, budget=budget)
    with TestClient(app, base_url="http://localhost") as client:
        body = {"prompt": "a cat", "width": 4096, "height": 4096, "batch_size": 8, "steps": 1}
        answer = post(client, json.dumps(body)).json()
        assert (answer["fields"], answer["limit"], answer["setting"]) == (
            ["width", "height"],
            8 << 20,
            "max_image_pixels",
        )
        body.update(width=2048, height=2048)
        answer = post(client, json.dumps(body)).json()
        assert answer["fields"] == ["width", "height", "batch_size"] and answer["setting"] == "max_batch_pixels"
        body.update(batch_size=3, steps=100)
        answer = post(client, json.dumps(body)).json()
        # issue 27: the work is priced in token-calls (image + text tokens x model calls x steps x batch)
        assert answer["fields"] == ["width", "height", "batch_size", "steps"] and "token-calls" in answer["error"]
        body.update(steps=20, width=64, height=64)
        assert post(client, json.dumps(body)).status_code == 200
    store.close()


ISSUE_REQUEST = {"prompt": "a cat", "width": 4096, "height": 4096, "batch_size": 8, "steps": 1}


def test_the_facade_applies_the_work_budget(engine):
    engine(pipeline=FakePipeline(), budget=WorkBudget(max_image_pixels=128 * 128, max_batch_pixels=2 * 128 * 128))
    with pytest.raises(flux_vector.SegmindError) as raised:
        flux_vector.run(SLUG, **ISSUE_REQUEST)
    assert raised.value.status == 400
    assert "width x height = 16,777,216 pixels per image" in raised.value.detail
    assert "limit of 16,384 (max_image_pixels)" in raised.value.detail
    assert flux_vector.run(SLUG, prompt="a cat", width=64, height=64, batch_size=2, steps=2)["status"] == "COMPLETED"


def test_the_facade_budget_defaults_to_the_device_memory_once_loaded(engine):
    from flux_vector.serving import device_memory_bytes

    local = engine(pipeline=FakePipeline())
    assert local.budget() == WorkBudget.for_memory(device_memory_bytes(FakePipeline()))
    with pytest.raises(flux_vector.SegmindError) as raised:  # 8 x 4096^2 is over twice any image limit
        flux_vector.run(SLUG, **ISSUE_REQUEST)
    assert raised.value.status == 400 and "width x height" in raised.value.detail


# RLIMIT_AS for the tiny server only (measured here with 2 malloc arenas and 2 threads: 1.2 GiB of address space
# after a small request, 0.55 GiB RSS); the issue's request without a budget grew past 2.4 GiB within two minutes.
TINY_SERVER_ADDRESS_SPACE = 3 << 30


def test_the_issue_request_under_a_memory_limit_is_a_400_and_the_server_lives(tmp_path, tiny_dir):
    server = ServerProcess(
        tmp_path / "jobs.sqlite3",
        args=("--max-image-pixels", str(1024 * 1024), "--max-batch-pixels", str(2 * 1024 * 1024)),
        env={"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"},  # address space independent of the core count
        address_space=TINY_SERVER_ADDRESS_SPACE,
    ).start()
    try:
        answer = httpx.post(f"{server.base_url}/{SLUG}", json=ISSUE_REQUEST, timeout=60)
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert (body["fields"], body["limit"], body["setting"]) == (
            ["width", "height"],
            1024 * 1024,
            "max_image_pixels",
        )
        assert "1,048,576" in body["error"]
        assert server.proc.poll() is None
        assert httpx.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"
        small = httpx.post(f"{server.base_url}/{SLUG}", json={"prompt": "a cat", **SMALL}, timeout=120)
        assert small.status_code == 200 and small.headers["content-type"].startswith("image/")
        assert server.proc.poll() is None
    finally:
        server.stop()


_DECODE_PEAK = """
import re, sys, torch
from flux_vector import FluxVectorPipeline


def status_kib(name):
    return int(re.search(name + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))


pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
size, batch = int(sys.argv[1]), int(sys.argv[2])
x = torch.randn(batch, pipe.vae.config.latent_channels, size // scale, size // scale)
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status_kib("VmRSS")
assert len(pipe.decode(x)) == batch
print(status_kib("VmHWM") - before)
"""


def test_vae_decode_peak_memory_grows_with_one_image_not_the_batch(tiny_dir):
    def growth_kib(batch: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _DECODE_PEAK, "1024", str(batch)], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    one, four = growth_kib(1), growth_kib(4)
    assert four < 1.5 * one, (one, four)  # a whole-batch decode needs about 4x


def test_large_images_are_decoded_in_tiles_and_small_ones_exactly(tiny_pipe, monkeypatch):
    import torch

    import flux_vector.pipeline as pipeline_module

    x = torch.randn(2, tiny_pipe.vae.config.latent_channels, 16, 16)
    reference = tiny_pipe.vae.decode(pipeline_module.to_latent(x).to(tiny_pipe.vae.dtype), return_dict=False)[0]
    expected = (255.0 * ((reference.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()).astype("uint8")
    images = tiny_pipe.decode(x)
    assert [image.size for image in images] == [(expected.shape[2], expected.shape[1])] * 2
    assert (
        max(
            int(abs(np.asarray(image).astype(int) - e.astype(int)).max())
            for image, e in zip(images, expected, strict=True)
        )
        <= 1
    )
    tilings: list[bool] = []
    monkeypatch.setattr(pipeline_module, "TILED_DECODE_PIXELS", 16)
    monkeypatch.setattr(type(tiny_pipe.vae), "enable_tiling", lambda self, *a, **k: tilings.append(True))
    tiled = tiny_pipe.decode(x[:1])
    assert tilings == [True] and tiled[0].size == images[0].size
