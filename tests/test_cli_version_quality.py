"""``flux-vector --version`` and ``generate --quality`` (issue 25, point 8), on the real command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from PIL import Image

from flux_vector import __version__
from flux_vector.image_metadata import read_metadata


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FLUX_VECTOR_MODEL", None)
    return subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"flux-vector {__version__}", proc.stdout + proc.stderr


def test_generate_quality_sets_the_jpeg_quality_and_is_recorded(tmp_path, tiny_dir):
    out = tmp_path / "low.jpg"
    args = ["generate", "--model", "tiny", "--prompt", "a cat", "--width", "32", "--height", "32", "--steps", "1"]
    proc = run_cli(*args, "--quality", "30", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert read_metadata(out)["request"]["quality"] == 30
    reference = io.BytesIO()
    Image.new("RGB", (32, 32)).save(reference, format="JPEG", quality=30)
    with Image.open(out) as written, Image.open(reference) as expected:
        assert written.quantization == expected.quantization  # the tables Pillow makes at quality 30
    bad = run_cli(*args, "--quality", "0", "--out", str(tmp_path / "bad.jpg"))
    assert bad.returncode == 2 and "quality" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
