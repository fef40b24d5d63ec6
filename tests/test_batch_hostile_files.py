"""`flux-vector batch` on folders and files someone else prepared (issue 28): a planted link is refused and never
written through, a forged manifest line is not trusted, every bad input line is that line's error, the batch has a
total cap, and the lock file goes when the batch ends. Real CLI processes (on the fake pipeline, ``FAKE_ENV``: the files
are the point, not the pixels); the manifest's and the reader's rules also directly, without a model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flux_vector.batching import Manifest
from flux_vector.batching.manifest import LOCK, MANIFEST, write_durably
from flux_vector.batching.rows import MAX_BATCH_REQUESTS, MAX_LINE_BYTES, TooManyRequests, expand, read_rows
from tests.fake_pipeline import FAKE_ENV

WAIT_S = 300  # a guard against a hung child, never a measured figure
SMALL = ["--steps", "1", "--width", "32", "--height", "32", "--model", "tiny", "--no-progress"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAKE_ENV}
    env.pop("FLUX_VECTOR_MODEL", None)
    return subprocess.run(
        [sys.executable, "-m", "flux_vector.cli", *args], capture_output=True, text=True, timeout=WAIT_S, env=env
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the third-party warnings torch's import may print (``W1207 ...`` and its continuation)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- planted links
def test_a_planted_symlink_manifest_or_lock_is_refused_and_its_target_left_byte_identical(tmp_path):
    requests = tmp_path / "r.txt"
    requests.write_text("a red fox\n")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious line one\nprecious line two without a newline")
    before = victim.read_bytes()
    for planted in (MANIFEST, LOCK):
        out = tmp_path / f"out-{planted}"
        out.mkdir()
        (out / planted).symlink_to(victim)
        proc = cli("batch", str(requests), "--out", str(out), *SMALL)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        (line,) = error_lines(proc)
        assert str(out / planted) in line and "symbolic link" in line, line
        assert "model: tiny" not in proc.stdout  # refused before anything loads
        assert victim.read_bytes() == before
        assert (out / planted).is_symlink()


def test_a_fifo_or_a_hard_link_as_the_manifest_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me\n{cut")
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / MANIFEST)
    with pytest.raises(ValueError, match="hard link"):
        Manifest(out).open()
    assert victim.read_bytes() == b"keep me\n{cut" and not (out / LOCK).exists()
    (out / MANIFEST).unlink()
    os.mkfifo(out / MANIFEST)
    with pytest.raises(ValueError, match="FIFO"):
        Manifest(out).open()


# ------------------------------------------------------------------------------------------- forged manifest
def test_forged_manifest_lines_are_reported_by_line_and_their_rows_made_again_in_the_folder(tmp_path, tiny_dir):
    prompts = [f"icon number {i}" for i in range(1, 6)]
    requests = tmp_path / "r.txt"
    requests.write_text("".join(p + "\n" for p in prompts))
    out = tmp_path / "out"
    first = cli("batch", str(requests), "--out", str(out), *SMALL)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not (out / LOCK).exists()  # the lock file goes when the batch ends
    good = lines_of(out)
    assert [line["row"] for line in good] == [1, 2, 3, 4, 5]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    forged = []
    for line in good:
        (record,) = line["files"]
        copy = outside / record["name"]
        shutil.move(out / record["name"], copy)  # the folder holds no image; a copy with the right hash elsewhere
        entry = json.loads(json.dumps(line))
        forged.append((entry, record, copy))
    (e1, _, c1), (e2, r2, _), (e3, _, _), (e4, _, _), (_, r5, c5) = forged
    e1["files"][0]["name"] = str(c1)  # an absolute path with the right size and sha256
    e2["files"][0]["name"] = f"../elsewhere/{r2['name']}"  # a parent path
    e3["files"] = "abc"  # files of the wrong type
    e4["files"] = [1]
    (out / r5["name"]).symlink_to(c5)  # a plain name, but a planted link to the right bytes elsewhere
    (out / MANIFEST).write_text("".join(json.dumps(e) + "\n" for e, _, _ in forged))
    outside_before = {p.name: p.read_bytes() for p in outside.iterdir()}

    second = cli("batch", str(requests), "--out", str(out), *SMALL)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "5/5 requests done (5 this run, 0 already)" in second.stdout, second.stdout
    for number, words in ((1, "is a path"), (2, "is a path"), (3, "not a list"), (4, "not a file record")):
        reported = [x for x in second.stdout.splitlines() if f"{MANIFEST} line {number}: ignored" in x]
        assert len(reported) == 1 and words in reported[0], second.stdout
    for _, record, _ in forged:  # each row made again: a regular file in the folder, not a link
        path = out / record["name"]
        assert path.is_file() and not path.is_symlink()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]  # the tiny model is deterministic
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == outside_before
    assert not (out / LOCK).exists()


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"\n",  # nesting deeper than Python recurses
        b'{"row": 1, "key": "k", "status": "done", "files": [], "x": ' + b"1" * 5000 + b"}\n",  # a 5000-digit number
        b'{"row": 1, "key": "k", "status": "done", "files": [{"name": "a.png", "bytes": "6", "sha256": "x"}]}\n',
        b'{"row": true, "key": "k", "status": "done", "files": []}\n',
        b'{"row": 1, "key": "k", "status": "maybe"}\n',
        b'{"row": 1, "key": "k", "status": "done"}\n',
        b"\xff\xfe not utf-8\n",
        b'{"row": 1, "key": "' + b"k" * MAX_LINE_BYTES + b'", "status": "failed"}\n',
    ],
    ids=["deep", "digits", "types", "bool-row", "status", "no-files", "bytes", "long"],
)
def test_no_manifest_line_content_crashes_and_none_of_these_is_trusted(tmp_path, line):
    record = write_durably(tmp_path / "a.png", b"pixels")
    good = json.dumps({"row": 2, "key": "k", "status": "done", "files": [record]}).encode() + b"\n"
    (tmp_path / MANIFEST).write_bytes(good + line + good.replace(b'"row": 2', b'"row": 3'))
    with Manifest(tmp_path) as manifest:
        assert [number for number, _ in manifest.untrusted] == [2]
        assert (1, "k") not in manifest.entries and manifest.is_done(2, "k") and manifest.is_done(3, "k")
    assert not (tmp_path / LOCK).exists()


# -------------------------------------------------------------------------------------------------- input
def test_bad_input_lines_are_each_reported_by_line_and_the_other_rows_run(tmp_path, tiny_dir):
    requests = tmp_path / "r.jsonl"
    lines = [
        b'{"prompt": "first good row"}',
        b'{"prompt": "huge", "seed": ' + b"9" * 4301 + b"}",  # line 2: int's 4300-digit limit (a ValueError)
        b'{"prompt": "caf\xe9"}',  # line 3: a latin-1 byte
        b'{"prompt": "\\u0000\\u0000"}',  # line 4: only NUL characters
        b"[" * 50_000,  # line 5: nested too deep
        b'{"prompt": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}',  # line 6: longer than the bound
        b'{"prompt": "last good row"}',
    ]
    requests.write_bytes(b"".join(line + b"\n" for line in lines))
    proc = cli("batch", str(requests), "--out", str(tmp_path / "out"), *SMALL)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # invalid rows skipped, the rest done
    log = proc.stderr
    assert "line 2: skipped: not a request: Exceeds the limit (4300 digits)" in log, log
    assert "line 3: skipped: not UTF-8 text (byte 0xe9 at column 16)" in log, log
    assert "line 4: skipped: prompt='\\x00\\x00' is not allowed: prompt must not be blank" in log, log
    assert "line 5: skipped: not a request: JSON nested too deep" in log, log
    assert f"line 6: skipped: longer than {MAX_LINE_BYTES:,} bytes" in log, log
    assert "2/2 requests done (2 this run, 0 already); 5 invalid rows skipped (lines 2, 3, 4, 5, 6)" in proc.stdout
    assert [line["row"] for line in lines_of(tmp_path / "out")] == [1, 7]
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_txt_line_of_nul_bytes_and_a_latin1_csv_cell_are_their_lines_errors(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"a fox\n\x00\x00\x00\ncaf\xe9\na cat\n")
    rows, bad = read_rows(txt)
    items, invalid = expand(rows, {})
    assert [i.line for i in items] == [1, 4]
    assert [b.line for b in bad] == [3] and [b.line for b in invalid] == [2]
    assert "prompt must not be blank" in invalid[0].error
    csv_file = tmp_path / "r.csv"
    csv_file.write_bytes(b"prompt,seed\na fox,1\ncaf\xe9,2\na cat," + b"9" * 4301 + b"\na cow,4\n")
    rows, bad = read_rows(csv_file)
    assert [r.line for r in rows] == [2, 5]
    assert [b.line for b in bad] == [3, 4] and bad[0].error.startswith("not UTF-8 text (byte 0xe9 at column 4)")
    assert bad[1].error.startswith("seed='999") and "is not allowed; seed must be an integer" in bad[1].error


def test_the_expanded_batch_has_a_total_cap_checked_before_any_work(tmp_path):
    requests = tmp_path / "r.txt"
    requests.write_text("a fox\na cat\n")
    proc = cli("batch", str(requests), "--out", str(tmp_path / "out"), "--repeat", str(MAX_BATCH_REQUESTS), *SMALL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = error_lines(proc)
    assert f"more than {MAX_BATCH_REQUESTS:,} requests in one batch (2 rows so far x 100,000" in line, line
    assert not (tmp_path / "out").exists()
    many = tmp_path / "many.txt"
    with open(many, "w") as f:
        f.writelines(f"prompt {i}\n" for i in range(MAX_BATCH_REQUESTS + 5))
    with pytest.raises(TooManyRequests, match=f"{MAX_BATCH_REQUESTS + 1:,} rows so far"):
        read_rows(many)
