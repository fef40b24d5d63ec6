"""scripts/train_demo_model.py's building blocks: a stage resumed from its checkpoint ends exactly where an
uninterrupted one does, the schedules and bucket plans are what the docs say, and the transformer's compressed-text
forward equals the pipeline's own 256-row forward. The training itself (about an hour) is not run here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # training runs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Interrupted(Exception):
    pass


def run_stage(train, work: Path, steps: int, stop_at: int | None = None) -> torch.nn.Module:
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    target = torch.nn.Linear(4, 1)

    def batch_loss(step: int) -> torch.Tensor:
        if step == stop_at:
            raise Interrupted
        x = torch.randn(16, 4, generator=train.step_generator("test", step))
        return (model(x) - target(x).detach()).pow(2).mean()

    train.train_loop(
        "test", work, {"model": model}, list(model.parameters()), steps, train.cosine_tail(1e-2, steps), batch_loss,
        warmup=3, save_every=4, ema=0.9,
    )  # fmt: skip
    return model


def test_a_resumed_stage_ends_exactly_where_an_uninterrupted_one_does(train, tmp_path):
    whole = run_stage(train, tmp_path / "whole", 20)
    with pytest.raises(Interrupted):
        run_stage(train, tmp_path / "resumed", 20, stop_at=10)  # the last checkpoint is at step 8
    assert torch.load(tmp_path / "resumed" / "test.ckpt.pt", weights_only=False)["step"] == 8
    resumed = run_stage(train, tmp_path / "resumed", 20)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh = run_stage(train, tmp_path / "other", 12)
    assert not torch.equal(fresh[0].weight, whole[0].weight)


def test_cosine_tail_holds_the_peak_then_falls_to_the_floor(train):
    rate = train.cosine_tail(1e-3, 1000, hold=0.4, floor=0.05)
    rates = np.array([rate(s) for s in range(1000)])
    assert np.all(rates[:400] == 1e-3)
    assert np.all(np.diff(rates) <= 0) and rates[500] < 1e-3
    assert rates[-1] == pytest.approx(5e-5)


def test_the_transformer_draws_half_its_batches_at_1_1_the_rest_in_proportion(train):
    sizes = train.demo_sizes()
    buckets, even = train.bucket_plan(sizes)
    _, square_heavy = train.bucket_plan(sizes, 0.5)
    square = buckets.index((128, 128))
    assert sizes["1:1"] == [128, 128] and sizes["2:3"] == [112, 160]
    assert square_heavy.sum() == pytest.approx(1.0) and square_heavy[square] == pytest.approx(0.5)
    others = np.arange(len(buckets)) != square
    np.testing.assert_allclose(square_heavy[others] / square_heavy[others].sum(), even[others] / even[others].sum())


def test_the_compressed_text_forward_equals_the_pipelines_256_row_forward(train, tmp_path):
    from diffusers import FluxTransformer2DModel

    train.build_encoders(tmp_path / "encoders")
    torch.manual_seed(1)
    transformer = FluxTransformer2DModel(**train.TRANSFORMER_CONFIG)
    pipe = train.encoding_pipeline(tmp_path / "encoders", transformer)
    assert train.check_compressed_text(pipe, transformer) < 1e-5


def test_lora_only_mini_trains_the_lora_alone_on_the_shipped_model_and_installs_nothing(tmp_path):
    """``--lora-only --mini``: stage 4 alone, on flux_vector/demo/model, into <work>/mini/lora_only; the shipped LoRA
    file stays as it is; a second run finds the stage done and trains nothing."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from flux_vector.demo import DEMO_LORA_FILE, DEMO_MODEL_DIR
    from flux_vector.lora import load_lora_file

    shipped = (DEMO_MODEL_DIR / DEMO_LORA_FILE).read_bytes()
    command = [sys.executable, str(SCRIPT), "--work", str(tmp_path), "--lora-only", "--mini"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    work = tmp_path / "mini" / "lora_only"
    trained = load_file(work / DEMO_LORA_FILE)
    assert set(trained) == set(load_file(DEMO_MODEL_DIR / DEMO_LORA_FILE)) and load_lora_file(work / DEMO_LORA_FILE)
    assert '"styled_share"' in (work / "times.json").read_text()  # the mixed data: outlined with the trigger, plain
    assert (DEMO_MODEL_DIR / DEMO_LORA_FILE).read_bytes() == shipped
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0 and "lora loader check" not in second.stdout  # nothing trained again
