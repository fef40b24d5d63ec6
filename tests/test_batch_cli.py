"""`flux-vector batch` as a user runs it: real CLI processes, real files, real SIGINT and SIGKILL; the mixed batch on
the tiny model, the others on the fake pipeline (``FAKE_ENV``: they are about the rows, the manifest and the signals).

The fault-injecting pipeline (``tests/fake_pipeline.py``) makes a row fail at generation time (``[[fault:oom]]``) or
hold its image (``[[fault:sleep=S]]``), which is what lets a signal land in the middle of a run.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from flux_vector.batching.manifest import file_sha256
from flux_vector.output_formats import output_format
from tests.fake_pipeline import FAKE_ENV, FAULTS_ENV
from tests.server_process import CliProcess

pytestmark = pytest.mark.slow  # a CLI process per test

WAIT_S = 300  # a guard against a hung child, never a measured figure

SIZES = [(64, 64), (32, 48), (48, 32)]
SAMPLERS = ["euler", "dpmpp_2m", "heun", "euler_ancestral"]
FORMATS = ["png", "jpeg", "webp", "svg"]


def batch(args: list[str], log: Path, *, env: dict[str, str] = FAKE_ENV) -> CliProcess:
    proc = CliProcess(["batch", *args, "--model", "tiny", "--no-progress"], log, env=env)
    proc.spawn()
    return proc


def finish(proc: CliProcess) -> int:
    return proc.proc.wait(WAIT_S)


def manifest_lines(out: Path) -> list[dict]:
    """The complete lines (a last line a SIGKILL cut short is not one)."""
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def wait_for_lines(out: Path, count: int, proc: CliProcess) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(manifest_lines(out)) < count:
        assert proc.proc.poll() is None, f"batch exited early:\n{proc.log()}"
        assert time.monotonic() < deadline, f"no {count} manifest lines:\n{proc.log()}"
        time.sleep(0.02)


def assert_consistent(out: Path) -> list[dict]:
    """Every complete manifest line that says done names whole files (size and sha256); no partial file has a final
    name; returns the lines."""
    lines = manifest_lines(out)
    for line in lines:
        for record in line.get("files", []):
            path = out / record["name"]
            assert path.stat().st_size == record["bytes"] and file_sha256(path) == record["sha256"], record
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"manifest.jsonl", "manifest.jsonl.lock"}
    named = {r["name"] for line in lines for r in line.get("files", [])}
    assert finals - named <= set(), f"files no manifest line names: {sorted(finals - named)}"
    return lines


def mixed_rows() -> tuple[list[str], set[int]]:
    """30 valid rows of mixed sizes, samplers and formats (each holding its image 0.2 s, so that a run lasts long
    enough to be interrupted), and 2 invalid ones; returns the lines and the invalid line numbers."""
    lines = []
    for i in range(30):
        width, height = SIZES[i % 3]
        row = {
            "prompt": f"[[fault:sleep=0.2]] icon number {i}",
            "seed": 100 + i,
            "width": width,
            "height": height,
            "sampler_name": SAMPLERS[i % 4],
            "output_format": FORMATS[(i // 3) % 4],
        }
        lines.append(json.dumps(row))
    lines.insert(6, json.dumps({"prompt": "too many steps", "steps": 500}))
    lines.insert(20, json.dumps({"prompt": "svg option on a png", "detail": "high", "output_format": "png"}))
    return lines, {7, 21}


def test_a_mixed_batch_survives_sigint_and_sigkill_and_ends_with_one_intact_file_per_row(tmp_path, tiny_dir):
    lines, invalid = mixed_rows()
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = [str(requests), "--out", str(out), "--steps", "2"]

    # 1. Ctrl-C after three images: the image in progress is finished and recorded, then it stops
    first = batch(args, tmp_path / "1.log", env=FAULTS_ENV)
    wait_for_lines(out, 3, first)
    first.proc.send_signal(signal.SIGINT)
    assert finish(first) == 130, first.log()
    assert "run the same command again to resume" in first.log()
    after_sigint = assert_consistent(out)
    assert 3 <= len(after_sigint) < 30, first.log()
    named = {r["name"] for line in after_sigint for r in line["files"]}
    assert named == {p.name for p in out.iterdir()} - {"manifest.jsonl", "manifest.jsonl.lock"}  # no orphan file

    # 2. the re-run skips those; SIGKILL three images later (a file may be in place without its line, a line cut)
    second = batch(args, tmp_path / "2.log", env=FAULTS_ENV)
    wait_for_lines(out, len(after_sigint) + 3, second)
    second.kill(signal.SIGKILL)
    after_kill = manifest_lines(out)
    assert len(after_kill) < 30
    for line in after_kill:
        for record in line["files"]:
            assert file_sha256(out / record["name"]) == record["sha256"]

    # 3. the re-run completes; the invalid rows are reported by line number, exit 3 (invalid rows skipped)
    third = batch(args, tmp_path / "3.log", env=FAULTS_ENV)
    assert finish(third) == 3, third.log()
    for line in invalid:
        assert f"line {line}: skipped:" in third.log()
    assert "steps=500 is not allowed" in third.log() and "detail applies to output_format 'svg' only" in third.log()
    final = assert_consistent(out)
    assert all(line["status"] == "done" for line in final)
    valid_lines = {n for n in range(1, 33)} - invalid
    # one line per valid row: nothing already done was generated again (a redo would have appended another line)
    assert Counter(line["row"] for line in final) == {n: 1 for n in valid_lines}
    files = sorted(p.name for p in out.iterdir() if p.name.startswith(tuple(f"{n:04d}-" for n in range(1, 33))))
    assert len(files) == 30 and {f[:4] for f in files} == {f"{n:04d}" for n in valid_lines}
    by_row = {line["row"]: line for line in final}
    for n in valid_lines:
        request = by_row[n]["request"]
        (record,) = by_row[n]["files"]
        assert record["name"].startswith(f"{n:04d}-fault-sleep-0-2-icon-number-")
        assert record["name"].endswith(f"-s{request['seed']}.{output_format(request['output_format']).extension}")
        assert by_row[n]["identity"]["model"] == "tiny"
        if request["output_format"] != "svg":
            with Image.open(out / record["name"]) as image:
                assert image.size == (request["width"], request["height"])
    assert len(list(tmp_path.glob("out/.*"))) == 0  # no partial file left

    # 4. once more: everything is done, so nothing loads or runs
    fourth = batch(args, tmp_path / "4.log", env=FAULTS_ENV)
    assert finish(fourth) == 3
    assert "30/30 requests done (0 this run, 30 already)" in fourth.log()
    assert "model: tiny" not in fourth.log()
    assert manifest_lines(out) == final


def test_a_second_ctrl_c_abandons_the_image_in_progress(tmp_path, tiny_dir):
    requests = tmp_path / "requests.jsonl"
    rows = [{"prompt": "first"}, {"prompt": "[[fault:sleep=600]] held"}, {"prompt": "third"}]
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = batch(
        [str(requests), "--out", str(out), "--steps", "1", "--width", "32", "--height", "32"], tmp_path / "log"
    )
    wait_for_lines(out, 1, proc)
    proc.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + WAIT_S
    while "stopping after the image in progress" not in proc.log():
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.02)
    proc.proc.send_signal(signal.SIGINT)
    assert finish(proc) == 130, proc.log()  # the held image would take 600 s had it not been abandoned
    lines = assert_consistent(out)
    assert [line["row"] for line in lines] == [1]
    assert sorted(p.name for p in out.iterdir()) == [  # the lock file goes when the batch ends (issue 28)
        lines[0]["files"][0]["name"],
        "manifest.jsonl",
    ]


def test_a_row_failing_at_generation_is_recorded_the_rest_complete_and_a_rerun_retries_it(tmp_path, tiny_dir):
    requests = tmp_path / "requests.csv"
    requests.write_text(
        'prompt,seed,output_format\na red star,1,png\n[[fault:oom]] a huge thing,2,png\n"a blue, round moon",3,svg\n'
    )
    out = tmp_path / "out"
    args = [str(requests), "--out", str(out), "--steps", "1", "--width", "32", "--height", "32"]
    first = batch(args, tmp_path / "1.log")
    assert finish(first) == 4, first.log()
    lines = assert_consistent(out)
    assert [(line["row"], line["status"]) for line in lines] == [(2, "done"), (3, "failed"), (4, "done")]
    assert "out of memory" in lines[1]["error"] and lines[1]["error"].startswith("SimulatedOutOfMemory")
    assert "FAILED line 3 (seed 2)" in first.log()
    assert sorted(p.name for p in out.glob("0*")) == ["0002-a-red-star-s1.png", "0004-a-blue-round-moon-s3.svg"]

    second = batch(args, tmp_path / "2.log")
    assert finish(second) == 4, second.log()
    again = manifest_lines(out)
    assert again[:3] == lines and [(line["row"], line["status"]) for line in again[3:]] == [(3, "failed")]
    assert "2/3 requests done (0 this run, 2 already); 1 failed" in second.log()


def test_a_txt_of_prompts_expands_by_seeds_and_strict_stops_before_any_work(tmp_path, tiny_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\n# skipped\na green frog\n")
    out = tmp_path / "out"
    proc = batch(
        [
            str(prompts),
            "--out",
            str(out),
            "--seeds",
            "5..6",
            "--steps",
            "1",
            "--width",
            "32",
            "--height",
            "32",
            "--output-format",
            "webp",
        ],
        tmp_path / "log",
    )
    assert finish(proc) == 0, proc.log()
    names = sorted(p.name for p in out.glob("0*"))
    assert names == [
        "0001-a-red-fox-s5.webp",
        "0001-a-red-fox-s6.webp",
        "0004-a-green-frog-s5.webp",
        "0004-a-green-frog-s6.webp",
    ]
    assert [line["request"]["seed"] for line in assert_consistent(out)] == [5, 6, 5, 6]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "bad", "aspect_ratio": "7:5"}\n')
    strict = batch([str(bad), "--out", str(tmp_path / "strict"), "--strict"], tmp_path / "strict.log")
    assert finish(strict) == 2, strict.log()
    assert "line 2: invalid: aspect_ratio='7:5' is not allowed" in strict.log()
    assert "1 invalid row in the batch (lines 2) and --strict: nothing was generated" in strict.log()
    assert "model: tiny" not in strict.log() and not (tmp_path / "strict").exists()
