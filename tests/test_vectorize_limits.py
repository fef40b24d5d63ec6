"""`flux-vector vectorize` on an image from elsewhere (issue 28): the pixel count is checked from the header, right
after opening, against the server's largest image (``request.MAX_IMAGE_PIXELS``): over it, one line and exit 2 with
a small memory footprint, never a tracer running out of memory. The same limit holds for ``output_format: "svg"``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from flux_vector import vectorize
from flux_vector.request import MAX_IMAGE_PIXELS, parse_request
from flux_vector.server.errors import ApiError
from flux_vector.server.state import check_svg_size
from flux_vector.vectorize import MAX_VECTORIZE_PIXELS, ImageTooLarge, image_to_svg
from tests.cli_measure import run_cli
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


def test_an_svg_request_over_the_limit_is_a_400_naming_output_format(monkeypatch):
    """Today's contract keeps width x height within the limit (4096 x 4096 at most), so the check is exercised with
    a lower limit: it reads ``vectorize.MAX_VECTORIZE_PIXELS`` when called."""
    request = parse_request({"prompt": "a fox", "width": 128, "height": 128, "output_format": "svg"})
    check_svg_size(request)
    monkeypatch.setattr(vectorize, "MAX_VECTORIZE_PIXELS", 64 * 64)
    with pytest.raises(ApiError) as caught:
        check_svg_size(request)
    assert caught.value.status == 400 and caught.value.extra["field"] == "output_format"
    assert "128x128 = 16,384 pixels, over the 4,096 pixels" in caught.value.message
