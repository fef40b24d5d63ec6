"""SQLiteJobStore's own behaviour (reopening, the one-server lock, crash recovery, image files) and the Worker's
(model errors, LoRA rule, lazy factory, progress), on SQLite. What every store does: ``test_store_contract.py``."""

import base64
import io
import time

import pytest
from PIL import Image

from flux_vector.jobs import (
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    SQLiteJobStore,
    StoreLocked,
    Worker,
    result_body,
    status_body,
)
from flux_vector.request import parse_request
from tests.fake_pipeline import FakePipeline
from tests.job_data import META, FakeClock, P, png


@pytest.fixture
def store(tmp_path):
    s = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def finish(store, job_id, n=1):
    return store.complete(job_id, [png()] * n, META)


# ----------------------------------------------------------------------------------------------- store
def test_survives_reopen_and_one_server_per_store(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    s = SQLiteJobStore(path)
    with pytest.raises(StoreLocked, match="in use by another"):
        SQLiteJobStore(path)
    done = s.submit("s", parse_request(P))
    s.claim()
    finish(s, done.id)
    waiting = s.submit("s", parse_request(P))
    s.close()
    s = SQLiteJobStore(path)
    assert s.get(done.id).state == COMPLETED and s.image(done.id, 0) == png()
    assert s.get(waiting.id).state == QUEUED
    s.close()


def test_recover_reruns_then_fails_interrupted_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    s = SQLiteJobStore(path)
    job = s.submit("s", parse_request(P))
    later = s.submit("s", parse_request(P))
    s.claim()  # PROCESSING when the "process dies"
    (s.image_dir / f"{job.id}-0.png.tmp").write_bytes(b"half")  # a crash while writing its image
    s.close()

    s = SQLiteJobStore(path)
    report = s.recover(max_attempts=2)
    assert report.requeued == [job.id] and report.failed == [] and report.queued == 2
    assert list(s.image_dir.iterdir()) == []
    again = s.claim()
    assert again.id == job.id and again.attempts == 2  # it keeps its place at the head of the queue
    s.close()

    s = SQLiteJobStore(path)
    report = s.recover(max_attempts=2)
    assert report.failed == [job.id]
    failed = s.get(job.id)
    assert failed.state == FAILED and "killed" in failed.error and "2 times" in failed.error
    assert s.get(later.id).state == QUEUED
    s.close()


def test_expired_image_files_stay_until_the_sweep(tmp_path):
    clock = FakeClock()
    s = SQLiteJobStore(tmp_path / "jobs.sqlite3", retention_s=0.3, clock=clock)
    job = s.submit("s", parse_request(P))
    s.claim()
    finish(s, job.id)
    path = s.image_file(job.id, 0)
    assert path.exists() and path.read_bytes() == png()
    clock.advance(0.29)
    assert s.image_file(job.id, 0) == path  # still within retention
    clock.advance(0.02)
    assert s.image_file(job.id, 0) is None  # hidden the moment retention passed...
    assert path.exists()  # ...but on disk until the sweep
    assert s.expire() == 1 and not path.exists()
    s.close()


def test_bodies(store):
    job = store.submit("s", parse_request({**P, "base64": True}))
    assert status_body(store.get(job.id)) == {"request_id": job.id, "status": QUEUED, "position": 0}
    store.claim()
    store.progress(job.id, 1, 2)
    assert status_body(store.get(job.id))["progress"] == {"step": 1, "total": 2}
    meta = {
        "ext": "png",
        "media_type": "image/png",
        "width": 64,
        "height": 64,
        "inference_time": 0.25,
        "echo": {"prompt": "x", "base64": True},
    }
    done = store.complete(job.id, [png()], meta)
    body = result_body(done, lambda i: f"http://h/{i}.png", lambda i: store.image(job.id, i))
    assert body["status"] == COMPLETED and body["output"] == "http://h/0.png" and body["outputs"] == ["http://h/0.png"]
    assert body["metrics"]["inference_time"] == 0.25 and body["metrics"]["queue_time"] >= 0
    assert body["prompt"] == "x" and body["width"] == 64
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (64, 64)


# ----------------------------------------------------------------------------------------------- worker
def run_worker(store, pipe, **kwargs):
    worker = Worker(store, pipe, log=lambda m: None, idle_poll=0.05, **kwargs)
    return worker.start()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MemoryError("CUDA out of memory"), "out of memory generating 64x64"),
        (FloatingPointError("the sampler produced NaN/inf latents"), "numerical error"),
        (RuntimeError("weird"), "model error (RuntimeError): weird"),
    ],
)
def test_model_error_fails_the_job_and_worker_carries_on(store, error, expected):
    pipe = FakePipeline(error=error)
    worker = run_worker(store, pipe)
    try:
        bad = store.submit("s", parse_request(P))
        worker.notify()
        failed = worker.wait(bad.id, timeout=10)
        assert failed.state == FAILED and expected in failed.error
        pipe.error = None
        good = store.submit("s", parse_request(P))
        worker.notify()
        assert worker.wait(good.id, timeout=10).state == COMPLETED
    finally:
        worker.stop()


def test_without_lora_only_strength_zero(store):
    worker = run_worker(store, FakePipeline(lora=None))
    try:
        default = store.submit("s", parse_request(P))
        explicit = store.submit("s", parse_request({**P, "lora_strength": 0.5}))
        worker.notify()
        assert worker.wait(default.id, 10).result["echo"]["lora_strength"] == 0.0
        failed = worker.wait(explicit.id, 10)
        assert failed.state == FAILED and "lora_strength=0.5 cannot be served" in failed.error
    finally:
        worker.stop()


def test_factory_built_lazily_and_load_error_fails_jobs(store):
    calls = []

    def factory():
        calls.append(1)
        raise FileNotFoundError("no weights here")

    worker = run_worker(store, factory)
    try:
        assert calls == []
        job = store.submit("s", parse_request(P))
        worker.notify()
        failed = worker.wait(job.id, 10)
        assert failed.state == FAILED and "could not be loaded: no weights here" in failed.error
        assert worker.load_error and worker.running
    finally:
        worker.stop()


def test_wait_times_out_and_progress_is_recorded(store):
    worker = run_worker(store, FakePipeline(step_s=0.02), progress_every=0.0)
    try:
        job = store.submit("s", parse_request({**P, "steps": 30}))
        worker.notify()
        t = time.monotonic()
        still = worker.wait(job.id, timeout=0.2)
        assert 0.15 < time.monotonic() - t < 2 and still.state in (QUEUED, PROCESSING)
        assert worker.wait(job.id, timeout=10).state == COMPLETED
    finally:
        worker.stop()


def test_worker_with_the_tiny_pipeline(store, tiny_pipe):
    worker = run_worker(store, tiny_pipe)
    try:
        job = store.submit("s", parse_request({**P, "output_format": "webp"}))
        worker.notify()
        done = worker.wait(job.id, timeout=120)
        assert done.state == COMPLETED, done.error
        image = Image.open(io.BytesIO(store.image(job.id, 0)))
        assert image.format == "WEBP" and image.size == (64, 64)
        assert done.result["inference_time"] > 0 and done.result["echo"]["steps"] == 2
    finally:
        worker.stop()
