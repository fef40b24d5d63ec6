"""`flux-vector` as a new user meets it: the README's first command end to end, every path and the weights checked
before any model work, one-line errors that say what to do, no third-party noise, help with defaults."""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flux_vector import cli
from flux_vector.models import not_downloaded
from flux_vector.sampling.names import HOSTED_SAMPLER_NAMES, SAMPLER_NAMES

pytestmark = pytest.mark.slow  # a CLI process per test

ROOT = Path(__file__).resolve().parents[1]
# A check that fails before any model work returns well inside this (the issue's "under 2 s", measured at about
# 0.6 s here); a loaded tiny model alone takes longer on this machine, and the tests also check that nothing loaded.
FAST_FAILURE_S = 4.0
NOISE = ("kernels", "torchvision", "Loading weights", "Traceback")


def run_cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("FLUX_VECTOR_MODEL", None)
    return subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def timed_cli(*args, **kwargs):
    started = time.perf_counter()
    proc = run_cli(*args, **kwargs)
    return proc, time.perf_counter() - started


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_generate_tiny_when_asked_says_so_without_library_noise(tmp_path, tiny_dir):
    out = tmp_path / "cat.png"
    proc = run_cli(
        "generate",
        "--model",
        "tiny",
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
    assert "model tiny (the random-weight demo: noise" in last  # the summary line says what the image is
    assert "step" in proc.stderr  # the per-step progress bar
    for noise in NOISE:  # bitsandbytes' kernels warning, transformers' torchvision warnings and loading bars
        assert noise not in proc.stdout + proc.stderr, noise


def test_generate_flux_dev_not_downloaded_fails_at_once_with_the_download_commands(tmp_path):
    """--model FLUX.1-dev asked for and not downloaded: an error, not the demo model's picture. (With no --model and
    no weights at all, generate uses the shipped demo model: tests/test_demo_model.py.)"""
    out = tmp_path / "salesman.png"
    proc, elapsed = timed_cli(
        "generate",
        "--model",
        "black-forest-labs/FLUX.1-dev",
        "--prompt",
        "a salesman",
        "--out",
        str(out),
        env_extra={"HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    line = assert_one_line_error(
        proc,
        "hf download black-forest-labs/FLUX.1-dev",
        "hf download renderartist/simplevectorflux Simple_Vector_Flux_v2_renderartist.safetensors",
        "--model demo",
    )
    assert "huggingface-cli" not in line and "model='demo'" not in line
    assert not out.exists() and proc.stdout == "" and elapsed < FAST_FAILURE_S


def test_generate_rejects_bad_values_before_loading(tmp_path):
    proc = run_cli("generate", "--prompt", "a cat", "--steps", "0", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "steps=0" in proc.stderr and "1 to 100" in proc.stderr


def test_missing_model_says_how_to_get_it(tmp_path):
    proc = run_cli("generate", "--prompt", "a cat", "--model", "someone/not-cached", "--out", str(tmp_path / "x.png"))
    line = assert_one_line_error(proc, "hf download someone/not-cached", "--model demo")
    assert "model='demo'" not in line


def test_missing_weights_are_worded_for_python_and_for_the_cli():
    model, lora = not_downloaded("someone/model"), not_downloaded("someone/lora", "lora")
    assert "model='demo'" in str(model) and "--model" not in str(model)
    assert "--model demo" in model.cli_message and "model='demo'" not in model.cli_message
    assert "lora='none'" in str(lora) and "--lora none" in lora.cli_message
    for exc in (model, lora):
        assert "`hf download someone/" in str(exc) and "huggingface-cli" not in str(exc)


def bad_outputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """--out values a user gets wrong, with what the one error line must say."""
    a_file = tmp_path / "README.md"
    a_file.write_text("a file, not a folder")
    (tmp_path / "folder.png").mkdir()
    return {
        "file used as a folder": (str(a_file / "x.png"), "is a file, not a folder"),
        "unknown suffix": (str(tmp_path / "out" / "x.txt"), "unknown file type '.txt'"),
        "no suffix": (str(tmp_path / "out"), "unknown file type"),
        "/proc": ("/proc/nope/x.png", "cannot create files in /proc"),
        "a folder": (str(tmp_path / "folder.png"), "is a folder"),
    }


@pytest.mark.parametrize("case", ["file used as a folder", "unknown suffix", "no suffix", "/proc", "a folder"])
def test_bad_out_fails_in_one_line_before_any_model_work(tmp_path, case):
    out, message = bad_outputs(tmp_path)[case]
    proc, elapsed = timed_cli("generate", "--model", "tiny", "--prompt", "a cat", "--steps", "1", "--out", out)
    assert_one_line_error(proc, "--out", message)
    assert proc.stdout == ""  # no "model: tiny ..." line: nothing was loaded
    assert elapsed < FAST_FAILURE_S


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its mode")
def test_out_in_a_read_only_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = run_cli("generate", "--model", "tiny", "--prompt", "a cat", "--out", str(locked / "x.png"))
    assert_one_line_error(proc, "cannot create files in")


def test_every_subcommand_checks_its_paths_first(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not an image")
    cases = [
        (("vectorize", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.svg")), "no such file"),
        (("vectorize", str(tmp_path), "--out", str(tmp_path / "x.svg")), "is a folder"),
        (("vectorize", str(a_file), "--out", str(tmp_path / "x.png")), "unknown file type '.png'"),
        (("vectorize", str(a_file), "--out", "/proc/nope/x.svg"), "cannot create files in /proc"),
        (("vectorize", str(a_file), "--out", str(tmp_path / "x.svg")), "not an image this program can read"),
        (("serve", "--model", "tiny", "--store", str(a_file / "jobs.sqlite3")), "is a file, not a folder"),
        (("serve", "--model", "tiny", "--store", str(tmp_path)), "--store"),
        (("serve", "--model", "someone/not-cached", "--store", str(tmp_path / "j.sqlite3")), "hf download someone"),
        (("worker", "--model", "tiny", "--store", str(tmp_path / "jobs.sqlite3")), "redis://HOST:PORT/DB"),
        (("worker", "--model", "someone/not-cached", "--store", "redis://127.0.0.1:9/0"), "hf download someone"),
        (("batch", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "b")), "no such file"),
        (("batch", str(a_file), "--out", str(a_file)), "is a file; give a folder"),
        (("batch", str(a_file), "--out", "/proc/nope/b"), "cannot create files in /proc"),
        (("batch", str(a_file), "--out", str(tmp_path / "b"), "--seeds", "9..1"), "--seeds '9..1': 1 is below 9"),
        (("batch", str(a_file), "--out", str(tmp_path / "b"), "--model", "someone/not-cached"), "hf download someone"),
        (("batch", str(tmp_path / "x.py"), "--out", str(tmp_path / "b"), "--model", "tiny"), "unknown batch file"),
    ]
    (tmp_path / "x.py").write_text("")
    for args, message in cases:
        proc, elapsed = timed_cli(*args)
        assert_one_line_error(proc, message)
        assert elapsed < FAST_FAILURE_S, args
    assert not (tmp_path / "j.sqlite3").exists()  # the store was not opened for a model that is missing
    assert not (tmp_path / "b").exists()  # nor a batch's folder


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli.COMMANDS, "doctor", broken)
    assert cli.main(["doctor"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: RuntimeError: something inside broke (unexpected: run again with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="inside broke"):
        cli.main(["doctor", "--debug"])


def test_quiet_silences_the_libraries_unless_verbose(monkeypatch):
    import logging

    from flux_vector.quiet import QUIET_ENVIRONMENT, quiet_third_party

    for name in QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # a user's own setting wins
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")  # the kernels-community warning, at import
    monkeypatch.setattr(logging.getLogger("bitsandbytes"), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger("transformers"), "level", logging.NOTSET)
    monkeypatch.setattr("warnings.filters", list(__import__("warnings").filters))
    quiet_third_party()
    assert not noisy.isEnabledFor(logging.WARNING) and noisy.isEnabledFor(logging.ERROR)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["generate", "batch", "serve", "worker", "vectorize", "info", "doctor"])
def test_every_option_has_help_with_its_default(command):
    parser = subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        name = action.option_strings[0]
        assert action.help, f"{command} {name} has no help"
        if not action.required:
            assert "default" in action.help, f"{command} {name}: {action.help!r} does not say its default"


def test_generate_help_shows_the_defaults_the_issue_missed():
    text = " ".join(subcommands()["generate"].format_help().split())
    for default in ("(default: 20)", "(default: 6652105)", "(default: 1.0)", "(default: 3.5)", "(default: 'euler')"):
        assert default in text, default
    assert all(name in text for name in SAMPLER_NAMES)


def test_sampler_counts_agree_everywhere():
    assert (len(HOSTED_SAMPLER_NAMES), len(SAMPLER_NAMES)) == (26, 29)
    for doc in ("README.md", "BENCHMARKS.md"):
        text = (ROOT / doc).read_text()
        for match in re.finditer(r"(hosted )?\b(\d+) (?:sampler )?names\b", text):
            expected = len(HOSTED_SAMPLER_NAMES) if match.group(1) else len(SAMPLER_NAMES)
            assert int(match.group(2)) == expected, f"{doc}: {match.group(0)!r}"
        assert "huggingface-cli" not in text


def test_doctor_runs_on_this_machine_without_loading_anything(tmp_path):
    proc = run_cli("doctor", env_extra={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode == 0, proc.stderr
    assert "hf download black-forest-labs/FLUX.1-dev" in proc.stdout and "--offload auto" in proc.stdout
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, noise
