"""`flux-vector generate` end to end, as the README's first command runs it."""

import os
import subprocess
import sys

from PIL import Image


def run_cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("FLUX_VECTOR_MODEL", None)
    return subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_generate_with_no_weights_uses_tiny_and_says_so(tmp_path, tiny_dir):
    out = tmp_path / "cat.png"
    proc = run_cli(
        "generate",
        "--prompt",
        "v3ct0r style, a cat",
        "--aspect-ratio",
        "16:9",
        "--steps",
        "2",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny" in proc.stdout and "random-weight" in proc.stdout
    assert Image.open(out).size == (1344, 768)
    last = proc.stdout.strip().splitlines()[-1]
    assert "1344x768" in last and "seed 5" in last and " s " in last
    assert "step" in proc.stderr  # the per-step progress bar


def test_generate_rejects_bad_values_before_loading(tmp_path):
    proc = run_cli("generate", "--prompt", "a cat", "--steps", "0", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "steps=0" in proc.stderr and "1 to 100" in proc.stderr


def test_missing_model_says_how_to_get_it(tmp_path):
    proc = run_cli("generate", "--prompt", "a cat", "--model", "someone/not-cached", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "hf download someone/not-cached" in proc.stderr
