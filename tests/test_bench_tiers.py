"""The GPU run's tier phase (benchmarks/bench_tiers.py) on the CPU with the tiny model: every tier this checkout has
generates, its measured bytes equal memory_tiers' estimate, a tier whose code is absent is reported "not available";
and its torch GGUF quantizer writes the gguf package's bytes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_the_torch_gguf_quantizer_writes_the_gguf_packages_bytes(qtype):
    gguf = pytest.importorskip("gguf")
    import bench_tiers

    rng = np.random.default_rng(0)
    array = rng.standard_normal((48, 256)).astype(np.float32)
    array[0, :32] = 0  # an all-zero block (scale 0)
    array[1, :32] = np.linspace(-4, 4, 32)  # values on the rounding ties
    array[2] *= 1e4
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    expected = gguf.quants.quantize(array, kind)
    ours = bench_tiers.torch_gguf_quantize(array, kind)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    assert np.array_equal(ours, expected)


@pytest.mark.slow
def test_bench_tiers_runs_every_available_tier_on_the_cpu(tmp_path):
    out = tmp_path / "tiers"
    tiers = "none,nf4,fp8,gguf-Q8_0,gguf-Q4_0,8bit"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_tiers.py"),
            "--tiny",
            "--steps",
            "2",
            "--size",
            "64",
            "--tiers",
            tiers,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["tier"]: r for r in json.loads((out / "bench_tiers.json").read_text())["rows"]}
    assert list(rows) == tiers.split(",")
    assert rows["none"]["psnr_db"] == math.inf and rows["8bit"]["s_per_image"] > 0  # 8-bit is in every checkout
    for tier, row in rows.items():
        assert "error" not in row and "skipped" not in row, (tier, row)  # every tier's code is in the checkout
        assert row["s_per_image"] > 0 and row["estimated_weights_bytes"] == row["weights_bytes"], row
        if tier != "none":
            assert 20 < row["psnr_db"] < math.inf and row["weights_bytes"] < rows["none"]["weights_bytes"], row
    assert "| 8bit |" in (out / "bench_tiers.md").read_text()
