"""output_format "svg": image_to_svg, the contract's fields, and every local entry point (CLI, facade, worker)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import cairosvg
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import flux_vector
from flux_vector import facade
from flux_vector.cli import main
from flux_vector.jobs import COMPLETED, FAILED, SQLiteJobStore, Worker
from flux_vector.request import RequestError, parse_request, parse_vector_options
from flux_vector.vectorize import image_to_svg
from tests.fake_pipeline import FakePipelineBase

SVG_NS = "{http://www.w3.org/2000/svg}"


def flat_art(width: int = 192, height: int = 128, generated: bool = False, seed: int = 0) -> Image.Image:
    """A small anti-aliased icon on white (drawn at 4x, downsampled); ``generated``: blurred and noisy."""
    big = Image.new("RGB", (width * 4, height * 4), (255, 255, 255))
    draw = ImageDraw.Draw(big)
    draw.ellipse((width * 0.6, height * 0.6, width * 3.2, height * 3.4), fill=(220, 50, 60))
    draw.rectangle((width * 2.2, height * 0.8, width * 3.6, height * 2.0), fill=(40, 90, 200))
    draw.polygon(
        [(width * 1.2, height * 1.2), (width * 2.0, height * 2.8), (width * 0.9, height * 2.6)], fill=(250, 200, 40)
    )
    image = big.resize((width, height), Image.Resampling.LANCZOS)
    if generated:
        rng = np.random.default_rng(seed)
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
        image = Image.fromarray(np.clip(np.rint(blurred + rng.normal(0, 4, blurred.shape)), 0, 255).astype(np.uint8))
    return image


def render(svg: str | bytes, background: bool = True) -> np.ndarray:
    data = svg.encode() if isinstance(svg, str) else svg
    image = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data))).convert("RGBA")
    if not background:
        return np.asarray(image)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, image).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


_D = re.compile(r"[MLCZ0-9., -]*")
_FILL = re.compile(r"#[0-9A-F]{6}")
_TRANSLATE = re.compile(r"translate\(-?\d+(\.\d+)?,-?\d+(\.\d+)?\)")


def assert_only_shapes(svg: str | bytes, width: int, height: int) -> None:
    """A valid SVG of that size whose every element is a path with a d, a #RRGGBB fill and maybe a translate, after
    at most one text-only ``<metadata id="flux_vector">`` first (the image's record: JSON, XML-escaped)."""
    text = svg.decode() if isinstance(svg, bytes) else svg
    root = ET.fromstring(text)
    assert root.tag == SVG_NS + "svg"
    assert root.attrib == {"width": str(width), "height": str(height), "viewBox": f"0 0 {width} {height}"}
    elements = list(root)
    if elements and elements[0].tag == SVG_NS + "metadata":
        record = elements.pop(0)
        assert record.attrib == {"id": "flux_vector"} and len(record) == 0 and json.loads(record.text)
        text = text.replace(text[text.index("<metadata") : text.index("</metadata>")], "")
    for element in elements:
        assert element.tag == SVG_NS + "path" and len(element) == 0 and not (element.text or "").strip()
        assert set(element.attrib) <= {"d", "fill", "transform"} and {"d", "fill"} <= set(element.attrib)
        assert _D.fullmatch(element.attrib["d"]) and _FILL.fullmatch(element.attrib["fill"])
        assert _TRANSLATE.fullmatch(element.attrib.get("transform", "translate(0,0)"))
    lowered = text.lower()
    for bad in ("<script", "<!", "<?", "href", "on", "url(", "foreignobject", "style", "http:", "data:"):
        assert bad not in lowered.replace('xmlns="http://www.w3.org/2000/svg"', "").replace("transform", ""), bad


# ----------------------------------------------------------------------------------------------- the contract
def test_contract_accepts_the_svg_fields_and_keeps_the_hosted_defaults():
    default = parse_request({"prompt": "a cat"})
    assert (default.output_format, default.detail, default.transparent_background) == ("png", "medium", False)
    request = parse_request(
        {"prompt": "a cat", "output_format": "svg", "detail": "high", "transparent_background": True}
    )
    assert request.vector_options() == {"detail": "high", "transparent_background": True}
    assert parse_vector_options({}) == {"detail": "medium", "transparent_background": False}


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"output_format": "gif"}, "output_format", "'svg'"),
        ({"output_format": "svg", "detail": "max"}, "detail", "'low', 'medium', 'high'"),
        ({"output_format": "svg", "detail": 2}, "detail", "one of"),
        ({"output_format": "svg", "transparent_background": "yes"}, "transparent_background", "true or false"),
        ({"detail": "low"}, "detail", "applies to output_format 'svg' only"),
        ({"output_format": "jpeg", "transparent_background": True}, "transparent_background", "'svg' only"),
    ],
)
def test_contract_rejects_bad_svg_fields_naming_them(params, field, words):
    with pytest.raises(RequestError) as info:
        parse_request({"prompt": "a cat", **params})
    assert info.value.field == field and words in str(info.value)


def test_image_to_svg_rejects_bad_options_naming_them():
    image = flat_art()
    with pytest.raises(RequestError, match=r"detail='huge' is not allowed.*'low', 'medium', 'high'"):
        image_to_svg(image, detail="huge")
    with pytest.raises(RequestError, match=r"transparent_background=1 .* true or false"):
        image_to_svg(image, transparent_background=1)
    with pytest.raises(RequestError, match=r"colours=.*unknown option.*detail, transparent_background"):
        image_to_svg(image, colours=4)
    with pytest.raises(TypeError, match="PIL"):
        image_to_svg(np.zeros((4, 4, 3), np.uint8))


# ----------------------------------------------------------------------------------------------- the tracing
@pytest.mark.parametrize("detail", ["low", "medium", "high"])
@pytest.mark.parametrize("generated", [False, True])
def test_svg_has_the_image_size_and_re_renders_close_to_the_clean_raster(detail, generated):
    clean = flat_art()
    svg = image_to_svg(flat_art(generated=generated), detail=detail)
    assert_only_shapes(svg, 192, 128)
    assert 3 <= svg.count("<path") <= 12, svg  # background, disc, rectangle, triangle: no noise specks
    assert psnr(render(svg), np.asarray(clean)) > 27.0


def test_transparent_background_leaves_the_corners_transparent():
    svg = image_to_svg(flat_art(generated=True), transparent_background=True)
    assert_only_shapes(svg, 192, 128)
    alpha = render(svg, background=False)[..., 3]
    assert all(alpha[y, x] == 0 for y in (0, 1, -1, -2) for x in (0, 1, -1, -2))
    assert alpha[64, 60] == 255  # the red disc is still there
    opaque = render(image_to_svg(flat_art(generated=True)), background=False)[..., 3]
    assert opaque.min() == 255


def test_transparent_input_pixels_stay_transparent():
    image = flat_art().convert("RGBA")
    image.putalpha(Image.new("L", image.size, 255))
    image.paste((0, 0, 0, 0), (0, 0, 192, 20))  # vtracer keys transparency out only when a fair share is transparent
    alpha = render(image_to_svg(image), background=False)[..., 3]
    assert alpha[5, 5] == 0 and alpha[5, 180] == 0 and alpha[100, 150] == 255


def test_property_random_images_give_only_shapes():
    """Noise, stripes, tiny and odd-sized images, every mode: the output is always paths and paint, nothing else."""
    rng = np.random.default_rng(1234)
    modes = ["RGB", "RGBA", "L", "P", "LA", "1"]
    for i in range(40):
        width, height = int(rng.integers(1, 48)), int(rng.integers(1, 48))
        kind = i % 4
        if kind == 0:
            pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        elif kind == 1:
            pixels = np.repeat(rng.integers(0, 256, (height, 1, 4), dtype=np.uint8), width, axis=1)
        else:
            pixels = rng.choice(
                rng.integers(0, 256, (int(rng.integers(1, 6)), 4), dtype=np.uint8), size=(height, width)
            )
        image = Image.fromarray(pixels, "RGBA").convert(modes[i % len(modes)])
        options = {"detail": ["low", "medium", "high"][i % 3], "transparent_background": bool(i % 2)}
        assert_only_shapes(image_to_svg(image, **options), width, height)


# ----------------------------------------------------------------------------------------------- entry points
def test_cli_vectorize(tmp_path, capsys):
    source = tmp_path / "in.png"
    flat_art(generated=True).save(source)
    out = tmp_path / "nested" / "out.svg"
    assert main(["vectorize", str(source), "--out", str(out), "--detail", "low"]) == 0
    assert_only_shapes(out.read_text(), 192, 128)
    assert psnr(render(out.read_text()), np.asarray(flat_art())) > 27.0
    assert main(["vectorize", str(source), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["vectorize", str(source), "--out", str(out), "--detail", "max"]) == 2
    assert "detail='max' is not allowed" in capsys.readouterr().err


def test_cli_generate_svg(tmp_path, tiny_dir):
    out = tmp_path / "cat.svg"
    args = [
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "v3ct0r style, a cat",
        "--width",
        "96",
        "--height",
        "64",
        "--steps",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert_only_shapes(out.read_text(), 96, 64)
    assert main([*args[:-1], str(tmp_path / "cat.gif")]) == 2


class FlatArtPipeline(FakePipelineBase):
    """FakePipeline's contract, drawing ``flat_art`` at the requested size; ``delay_s`` per job."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def generate(self, request, *, progress=True, on_step=None):
        time.sleep(self.delay_s)
        width, height = request.size
        images = [flat_art(width, height, generated=True, seed=request.seed) for _ in range(request.batch_size)]
        return SimpleNamespace(images=images, width=width, height=height, timings={"total_s": self.delay_s})


SMALL_SVG = {"prompt": "v3ct0r style, a cat", "width": 192, "height": 128, "steps": 1, "output_format": "svg"}


def test_facade_returns_a_file_url_of_the_svg(tmp_path):
    flux_vector.configure(store_dir=tmp_path / "store", pipeline=FlatArtPipeline())
    try:
        result = flux_vector.run("Simple_Vector_Flux", **SMALL_SVG, transparent_background=True)
        assert result["output"].startswith("file://") and result["output"].endswith("-0.svg")
        svg = Path(result["output"].removeprefix("file://")).read_text()
        assert_only_shapes(svg, 192, 128)
        assert render(svg, background=False)[0, 0, 3] == 0
        response = flux_vector.run_sync("Simple_Vector_Flux", **SMALL_SVG)
        assert response.headers["content-type"] == "image/svg+xml"
        assert psnr(render(response.content), np.asarray(flat_art())) > 27.0
        inline = flux_vector.run("Simple_Vector_Flux", **SMALL_SVG, base64=True)
        assert_only_shapes(__import__("base64").b64decode(inline["image"]), 192, 128)
    finally:
        flux_vector.configure()
    assert facade.local._engine is None


@pytest.fixture
def store(tmp_path):
    made = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield made
    made.close()


def wait_finished(store, job_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.finished:
            return job
        time.sleep(0.01)
    raise AssertionError(f"{job_id} did not finish: {store.get(job_id)}")


def test_worker_traces_off_the_gpu_thread_and_settles_each_job_once(store, monkeypatch):
    import flux_vector.vectorize as vectorize

    release, tracing = threading.Event(), threading.Event()
    real = vectorize.image_to_svg

    def slow_trace(image, **options):
        tracing.set()
        assert release.wait(30)
        return real(image, **options)

    monkeypatch.setattr(vectorize, "image_to_svg", slow_trace)
    worker = Worker(store, FlatArtPipeline(), log=lambda m: None, encode_threads=1)
    settled = []
    worker.add_listener(lambda job: settled.append(job.id))
    worker.start()
    try:
        svg_job = store.submit("Simple_Vector_Flux", parse_request(SMALL_SVG))
        png_job = store.submit("Simple_Vector_Flux", parse_request({**SMALL_SVG, "output_format": "png"}))
        worker.notify()
        assert tracing.wait(30)
        assert wait_finished(store, png_job.id).state == COMPLETED  # the GPU went on while the SVG was traced
        assert store.get(svg_job.id).state == "PROCESSING" and worker.encoding == 1
        release.set()
        done = wait_finished(store, svg_job.id)
        assert done.state == COMPLETED and done.result["media_type"] == "image/svg+xml"
        assert "vectorize_s" in done.result["timings"]
        assert_only_shapes(store.image(svg_job.id, 0), 192, 128)
    finally:
        release.set()
        assert worker.stop()
    assert sorted(settled) == sorted([svg_job.id, png_job.id])  # each job's end reported once


def test_a_tracing_error_fails_the_job_once_with_the_reason(store, monkeypatch):
    import flux_vector.vectorize as vectorize

    def broken(image, **options):
        raise vectorize.VectorizeError("the tracer emitted a path this module does not recognise")

    monkeypatch.setattr(vectorize, "image_to_svg", broken)
    worker = Worker(store, FlatArtPipeline(), log=lambda m: None)
    settled = []
    worker.add_listener(lambda job: settled.append(job.state))
    worker.start()
    try:
        job = store.submit("Simple_Vector_Flux", parse_request(SMALL_SVG))
        worker.notify()
        failed = wait_finished(store, job.id)
        assert failed.state == FAILED
        assert failed.error.startswith("encoding the image as svg failed: VectorizeError: the tracer emitted")
        again = store.submit("Simple_Vector_Flux", parse_request({**SMALL_SVG, "output_format": "png"}))
        worker.notify()
        assert wait_finished(store, again.id).state == COMPLETED  # the worker carries on
    finally:
        assert worker.stop()
    assert settled == [FAILED, COMPLETED]
