"""A batch file's rows and its manifest without a model: the three formats with their line numbers, CSV text typed by
the contract, defaults and expansion, keys and names, and the manifest's crash rules."""

from __future__ import annotations

import json
import os

import pytest

from flux_vector.batching import BatchFolderBusy, Manifest, parse_seeds
from flux_vector.batching.manifest import write_durably
from flux_vector.batching.names import file_names, item_key, slug
from flux_vector.batching.rows import by_size, expand, read_rows
from flux_vector.request import GenerationRequest


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_rows_keep_their_line_numbers_and_bad_lines_are_reported_by_line(tmp_path):
    path = write(
        tmp_path,
        "r.jsonl",
        '{"prompt": "a fox", "seed": 3}\n\n# a comment\n{"prompt": "a cat", "steps": 0}\n[1, 2]\n{"prompt": oops}\n'
        '{"prompt": "a dog", "output_format": "svg", "detail": "high"}\n',
    )
    rows, bad = read_rows(path)
    assert [(r.line, r.params) for r in rows] == [
        (1, {"prompt": "a fox", "seed": 3}),
        (4, {"prompt": "a cat", "steps": 0}),
        (7, {"prompt": "a dog", "output_format": "svg", "detail": "high"}),
    ]
    assert [b.line for b in bad] == [5, 6]
    assert "not a request object" in bad[0].error and "not valid JSON" in bad[1].error
    items, invalid = expand(rows, {})
    assert [i.line for i in items] == [1, 7]
    assert [(r.line, r.error) for r in invalid] == [
        (4, "steps=0 is not allowed; steps must be an integer from 1 to 100")
    ]


def test_csv_cells_are_typed_by_the_contract_and_empty_cells_take_the_default(tmp_path):
    path = write(
        tmp_path,
        "r.csv",
        "# made by hand\nprompt,steps,guidance,output_format,transparent_background,width,height\n"
        "a fox,4,2.5,svg,true,64,64\n"
        '"a cat, sitting\nquietly",,,png,,,\n'
        "a dog,four,,png,,,\n"
        "a cow,2\n",
    )
    rows, bad = read_rows(path)
    assert [r.line for r in rows] == [3, 4]
    assert rows[0].params == {
        "prompt": "a fox",
        "steps": 4,
        "guidance": 2.5,
        "output_format": "svg",
        "transparent_background": True,
        "width": 64,
        "height": 64,
    }
    assert rows[1].params == {"prompt": "a cat, sitting\nquietly", "output_format": "png"}
    assert [(b.line, b.error) for b in bad] == [
        (6, "steps='four' is not allowed; steps must be an integer from 1 to 100"),
        (7, "2 cells, the header has 7"),
    ]
    items, invalid = expand(rows, {"steps": 9})
    assert [(i.line, i.request.steps) for i in items] == [(3, 4), (4, 9)] and invalid == []


def test_txt_is_one_prompt_per_line(tmp_path):
    rows, bad = read_rows(write(tmp_path, "p.txt", "a fox\n\n  a cat  \n# not this\n"))
    assert [(r.line, r.params) for r in rows] == [(1, {"prompt": "a fox"}), (3, {"prompt": "a cat"})]
    assert bad == []


def test_unknown_file_type_is_an_error_naming_the_formats(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl.*\.csv.*\.txt"):
        read_rows(write(tmp_path, "r.json", "{}"))


def test_defaults_are_overridden_by_rows_and_expansion_sets_seeds(tmp_path):
    rows, _ = read_rows(write(tmp_path, "r.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": 10, "steps": 3}\n'))
    items, _ = expand(rows, {"steps": 5}, repeat=3)
    default_seed = GenerationRequest.model_fields["seed"].default
    assert [(i.line, i.index, i.request.seed, i.request.steps) for i in items] == [
        (1, 0, default_seed, 5),
        (1, 1, default_seed + 1, 5),
        (1, 2, default_seed + 2, 5),
        (2, 0, 10, 3),
        (2, 1, 11, 3),
        (2, 2, 12, 3),
    ]
    items, _ = expand(rows, {}, seeds=parse_seeds("7..8"))
    assert [(i.line, i.request.seed) for i in items] == [(1, 7), (1, 8), (2, 7), (2, 8)]
    assert list(parse_seeds("4")) == [4]
    for bad in ("8..7", "a..b", "-1..3"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    # a seed the expansion pushes past the contract's bound is the row's error, reported once
    rows, _ = read_rows(write(tmp_path, "s.jsonl", json.dumps({"prompt": "a", "seed": 2**64 - 1}) + "\n"))
    items, invalid = expand(rows, {}, repeat=2)
    assert items == [] and len(invalid) == 1 and invalid[0].error.startswith("seed=")


def test_items_of_one_size_run_together_in_file_order(tmp_path):
    lines = [
        {"prompt": "a", "width": 64, "height": 64},
        {"prompt": "b", "width": 32, "height": 64},
        {"prompt": "c", "width": 64, "height": 64},
        {"prompt": "d", "aspect_ratio": "1:1"},
        {"prompt": "e", "width": 32, "height": 64},
    ]
    rows, _ = read_rows(write(tmp_path, "r.jsonl", "\n".join(map(json.dumps, lines))))
    items, _ = expand(rows, {})
    assert [i.request.prompt for i in by_size(items)] == ["a", "c", "b", "e", "d"]


def test_names_are_readable_and_the_key_follows_every_resolved_field(tmp_path):
    rows, _ = read_rows(
        write(tmp_path, "r.jsonl", '{"prompt": "V3ct0r style, a Red Fox! (jumping:1.2)", "seed": 42}\n')
    )
    (item,) = expand(rows, {})[0]
    assert slug(item.request.prompt) == "a-red-fox-jumping"  # the subject: no trigger words, no weights
    assert slug("") == "image" and slug("日本") == "image"
    # issue 25: every Simple Vector prompt starts alike; the names must differ by subject, not stop at the trigger
    assert slug("v3ct0r style, simple vector art, a red fox, clip art") == "a-red-fox-clip-art"
    assert slug("v3ct0r style, simple vector art, a lighthouse on a cliff") == "a-lighthouse-on-a-cliff"
    assert slug("v3ct0r style") == "v3ct0r-style"  # style words only: kept
    assert file_names(item) == ["0001-a-red-fox-jumping-s42.png"]
    (pair,) = expand(rows, {"batch_size": 2, "output_format": "jpeg"})[0]
    assert file_names(pair) == [f"0001-a-red-fox-jumping-s42-{i}.jpg" for i in (0, 1)]
    key = item_key(item, "tiny", None)
    assert key == item_key(expand(rows, {})[0][0], "tiny", None)
    assert key != item_key(expand(rows, {"steps": 21})[0][0], "tiny", None)  # a changed default: made again
    assert key != item_key(item, "other-model", None) != item_key(item, "tiny", "a.safetensors")


def test_manifest_done_needs_intact_files_and_the_latest_line_wins(tmp_path):
    with Manifest(tmp_path) as manifest:
        record = write_durably(tmp_path / "a.png", b"pixels")
        manifest.append({"row": 1, "key": "k1", "status": "failed", "error": "MemoryError"})
        assert not manifest.is_done(1, "k1")
        manifest.append({"row": 1, "key": "k1", "status": "done", "files": [record]})
        assert manifest.is_done(1, "k1") and not manifest.is_done(1, "k2") and not manifest.is_done(2, "k1")
    with Manifest(tmp_path) as manifest:
        assert manifest.is_done(1, "k1")
    (tmp_path / "a.png").write_bytes(b"pixelz")  # same size, other content
    with Manifest(tmp_path) as manifest:
        assert not manifest.is_done(1, "k1")
    (tmp_path / "a.png").unlink()
    with Manifest(tmp_path) as manifest:
        assert not manifest.is_done(1, "k1")


def test_a_cut_last_line_and_partial_files_are_cleared_on_open(tmp_path):
    record = write_durably(tmp_path / "a.png", b"pixels")
    good = json.dumps({"row": 1, "key": "k", "status": "done", "files": [record]})
    (tmp_path / "manifest.jsonl").write_text(good + "\n" + '{"row": 2, "key": "k", "sta')
    (tmp_path / f".b.png.{os.getpid()}.partial").write_bytes(b"half")
    with Manifest(tmp_path) as manifest:
        assert manifest.dropped == 1 and manifest.is_done(1, "k") and (2, "k") not in manifest.entries
        assert (tmp_path / "manifest.jsonl").read_text() == good + "\n"  # the next line starts clean
        assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
        manifest.append({"row": 2, "key": "k", "status": "failed", "error": "x"})
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == [1, 2]


def test_one_batch_per_folder_and_overwrite_starts_a_new_manifest(tmp_path):
    with Manifest(tmp_path) as manifest:
        manifest.append({"row": 1, "key": "k", "status": "failed", "error": "x"})
        with pytest.raises(BatchFolderBusy, match="another flux-vector batch"):
            Manifest(tmp_path).open()
    manifest = Manifest(tmp_path).open(reset=True)
    try:
        assert manifest.entries == {} and (tmp_path / "manifest.jsonl").read_bytes() == b""
    finally:
        manifest.close()
