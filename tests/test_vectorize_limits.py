"""`flux-vector vectorize` on an image from elsewhere (issue 28): the pixel count is checked from the header, right
after opening, against the server's largest image (``request.MAX_IMAGE_PIXELS``): over it, one line and exit 2 with
a small memory footprint, never a tracer running out of memory. The same limit holds for ``output_format: "svg"``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flux_vector import vectorize
from flux_vector.jobs import SQLiteJobStore, Worker
from flux_vector.request import MAX_IMAGE_PIXELS, SLUG
from flux_vector.server.app import create_app
from flux_vector.vectorize import MAX_VECTORIZE_PIXELS, ImageTooLarge, image_to_svg
from tests.cli_measure import run_cli
from tests.fake_pipeline import FakePipeline
from tests.png_files import write_big_png


def test_the_limit_is_the_servers_largest_image():
    assert MAX_VECTORIZE_PIXELS == MAX_IMAGE_PIXELS


def test_vectorize_of_a_12000_px_png_is_one_line_exit_2_in_little_memory(tmp_path):
    source = tmp_path / "huge.png"
    write_big_png(source, 12000, 12000)
    assert source.stat().st_size < 1_000_000
    out = tmp_path / "huge.svg"
    run = run_cli("vectorize", str(source), "--out", str(out))
    assert run.rc == 2, run
    (line,) = run.errors
    assert f"12000x12000 = 144,000,000 pixels, over the {MAX_VECTORIZE_PIXELS:,} pixels" in line, line
    assert run.max_rss_mb < 500, run.max_rss_mb
    assert not out.exists()


def test_vectorize_past_pillows_own_bomb_limit_is_the_same_one_line(tmp_path):
    source = tmp_path / "bomb.png"
    write_big_png(source, 20000, 20000, colour_type=0)  # 400 Mpx: Pillow refuses to open it at all
    run = run_cli("vectorize", str(source), "--out", str(tmp_path / "bomb.svg"))
    assert run.rc == 2, run
    (line,) = run.errors
    assert f"far over the {MAX_VECTORIZE_PIXELS:,} that can be traced" in line and "unexpected" not in line, line
    assert "DecompressionBomb" not in run.err


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_vectorize_refuses_a_device_or_a_fifo(tmp_path, kind):
    path = Path(kind)
    if kind == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    run = run_cli("vectorize", str(path), "--out", str(tmp_path / "x.svg"), timeout=60)
    assert run.rc == 2, run
    (line,) = run.errors
    assert "not a regular file" in line, line


def test_image_to_svg_checks_the_size_before_tracing():
    image = Image.new("L", (MAX_IMAGE_PIXELS // 4096 + 1, 4096))
    with pytest.raises(ImageTooLarge, match="over the"):
        image_to_svg(image)


def test_an_svg_request_over_the_limit_is_a_400_naming_output_format(tmp_path, monkeypatch):
    """Today's contract keeps width x height within the limit (4096 x 4096 at most), so the server's check is
    exercised with a lower limit (it reads ``vectorize.MAX_VECTORIZE_PIXELS`` when called), through the real app
    in-process."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    worker = Worker(store, FakePipeline(), log=lambda message: None)
    body = {"prompt": "a fox", "width": 128, "height": 128, "steps": 1, "output_format": "svg"}
    try:
        with TestClient(create_app(store, worker, log=lambda message: None), base_url="http://localhost") as client:
            assert client.post(f"/v2/{SLUG}", json=body).status_code == 200  # within the limit: queued
            monkeypatch.setattr(vectorize, "MAX_VECTORIZE_PIXELS", 64 * 64)
            answer = client.post(f"/v2/{SLUG}", json=body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["field"] == "output_format" and answer.json()["limit"] == 64 * 64
            assert "128x128 = 16,384 pixels, over the 4,096 pixels" in answer.json()["error"]
            assert client.post(f"/v2/{SLUG}", json={**body, "output_format": "png"}).status_code == 200
    finally:
        store.close()
