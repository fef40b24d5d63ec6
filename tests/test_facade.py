"""``import flux_vector as segmind``: the SDK's names and signatures, running in-process."""

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import segmind as real_segmind
from PIL import Image

import flux_vector
from flux_vector import facade
from tests.fake_pipeline import FakePipeline, with_fault_markers
from tests.job_data import FakeClock
from tests.segmind_script import SLUG, SMALL, run_script


@pytest.fixture
def engine(tmp_path):
    """Configure the in-process engine for one test; back to the lazy default afterwards."""

    def setup(**kwargs):
        flux_vector.configure(store_dir=tmp_path / "store", **kwargs)
        return facade.local.local_engine()

    yield setup
    flux_vector.configure()


def test_the_segmind_script_in_process(engine, tiny_pipe):
    engine(pipeline=with_fault_markers(tiny_pipe))
    run_script(flux_vector, {}, output_scheme="file://")


def test_same_public_names_and_signatures_as_segmind():
    for name in (
        "run",
        "run_sync",
        "submit_async",
        "SegmindClient",
        "AsyncJob",
        "SegmindError",
        "InferenceFailed",
        "InferenceTimeout",
        "DEFAULT_POLL_INTERVAL_S",
        "DEFAULT_POLL_TIMEOUT_S",
    ):
        assert hasattr(flux_vector, name), name
    assert (flux_vector.DEFAULT_POLL_INTERVAL_S, flux_vector.DEFAULT_POLL_TIMEOUT_S) == (1.0, 600.0)

    def params(fn):
        return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]

    for name in ("run", "run_sync", "submit_async"):
        assert params(getattr(flux_vector, name)) == params(getattr(real_segmind, name))
        assert params(getattr(flux_vector.SegmindClient, name)) == params(getattr(real_segmind.SegmindClient, name))
    for name in ("status", "result", "wait"):
        assert (
            inspect.signature(getattr(flux_vector.AsyncJob, name)).parameters.keys()
            == inspect.signature(getattr(real_segmind.AsyncJob, name)).parameters.keys()
        )
    wait = inspect.signature(flux_vector.AsyncJob.wait).parameters
    assert (wait["timeout"].default, wait["interval"].default) == (600.0, 1.0)
    ours = inspect.signature(flux_vector.SegmindClient).parameters
    assert list(ours) == list(inspect.signature(real_segmind.SegmindClient).parameters)
    assert ours["base_url"].default is None and ours["timeout"].default == 30.0
    for cls in ("SegmindError", "InferenceFailed", "InferenceTimeout"):
        assert params(getattr(flux_vector, cls)) == params(getattr(real_segmind, cls)), cls
    assert issubclass(flux_vector.InferenceFailed, flux_vector.SegmindError)
    assert issubclass(flux_vector.InferenceTimeout, flux_vector.SegmindError)
    error = flux_vector.InferenceTimeout("abc", 1.5)
    assert (error.request_id, error.elapsed_s, error.status) == ("abc", 1.5, None) and "abc" in error.detail
    failed = flux_vector.InferenceFailed("boom", {"status": "FAILED"})
    assert (failed.detail, failed.status_body) == ("boom", {"status": "FAILED"})
    assert repr(flux_vector.SegmindError(400, "x")) == "SegmindError(status=400, detail=x)"


def test_output_is_a_file_and_expires(engine):
    local = engine(pipeline=FakePipeline(), retention_s=0.5)
    local.store.clock = clock = FakeClock()  # retention's clock, moved by hand (the worker sweeps every 0.2 s)
    result = flux_vector.run(SLUG, prompt="a cat", width=96, height=64, steps=1)
    path = Path(urlparse(result["output"]).path)
    assert Image.open(path).size == (96, 64)
    job = flux_vector.submit_async(SLUG, prompt="a dog", **SMALL)
    job.wait(timeout=10, interval=0.05)
    clock.advance(0.4)
    assert job.status()["status"] == "COMPLETED" and path.exists()
    clock.advance(0.2)
    with pytest.raises(flux_vector.SegmindError) as gone:
        job.status()
    assert gone.value.status == 404 and "expired" in gone.value.detail
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:  # the worker's sweep
        time.sleep(0.05)
    assert not path.exists()


def test_queue_bound_in_process(engine):
    engine(pipeline=FakePipeline(step_s=0.05), max_queue=1)
    client = flux_vector.SegmindClient()
    running = client.submit_async(SLUG, prompt="a cat", width=64, height=64, steps=10)
    deadline = time.monotonic() + 5
    while running.status()["status"] != "PROCESSING" and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = client.submit_async(SLUG, prompt="a cat", **SMALL)
    with pytest.raises(flux_vector.SegmindError) as full:
        client.submit_async(SLUG, prompt="a cat", **SMALL)
    assert full.value.status == 429
    assert waiting.wait(timeout=10, interval=0.05)["status"] == "COMPLETED"
    assert running.status()["status"] == "COMPLETED"
    assert repr(client) == "SegmindClient(in-process)" and running.status_url is None
    with pytest.raises(AttributeError):
        client._client  # noqa: B018 - no HTTP client in-process


def test_wait_returns_as_soon_as_the_job_ends(engine):
    engine(pipeline=FakePipeline())
    started = time.monotonic()
    flux_vector.submit_async(SLUG, prompt="a cat", **SMALL).wait()  # interval 1.0, yet no 1 s poll sleep
    assert time.monotonic() - started < 0.9


def test_a_user_script_in_a_fresh_process(tmp_path, tiny_dir):
    """The default engine: model from $FLUX_VECTOR_MODEL, built lazily; a job left running at exit is no crash."""
    script = (
        "import sys, flux_vector as segmind\n"
        "assert not {'diffusers', 'fastapi', 'uvicorn'} & set(sys.modules), 'import flux_vector must stay light'\n"
        f"r = segmind.run({SLUG!r}, prompt='v3ct0r style, a cat', width=64, height=64, steps=1)\n"
        "print(r['status'], r['output'])\n"
        f"segmind.submit_async({SLUG!r}, prompt='left running', width=64, height=64, steps=100)\n"
    )
    env = {**os.environ, "FLUX_VECTOR_MODEL": "tiny"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status, output = proc.stdout.split()
    assert status == "COMPLETED" and Path(urlparse(output).path).is_file()
    assert "tiny" in proc.stderr  # the pipeline's own log says which model


def test_final_body_reports_the_size_of_an_aspect_ratio(engine, tiny_pipe):
    engine(pipeline=tiny_pipe)
    result = flux_vector.run(SLUG, prompt="a cat", aspect_ratio="16:9", steps=1)
    assert (result["width"], result["height"], result["aspect_ratio"]) == (1344, 768, "16:9")
    assert Image.open(Path(urlparse(result["output"]).path)).size == (1344, 768)


def test_files_of_the_in_process_engine_carry_their_record(engine, tiny_pipe):
    from flux_vector.image_metadata import read_metadata

    engine(pipeline=tiny_pipe)
    result = flux_vector.run(SLUG, prompt="a green heart", seed=5, output_format="webp", **SMALL)
    record = read_metadata(Path(urlparse(result["output"]).path))
    assert record["model"] == "tiny" and record["request"]["prompt"] == "a green heart"
    assert record["request"]["seed"] == 5 and record["request"]["output_format"] == "webp"
