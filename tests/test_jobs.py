"""The job queue: SQLiteJobStore (ordering, bound, durability, recovery, expiry) and the Worker."""

import base64
import io
import threading
import time

import pytest
from PIL import Image

from flux_vector.jobs import (
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    QueueFull,
    SQLiteJobStore,
    StoreLocked,
    Worker,
    encode_image,
    result_body,
    status_body,
)
from tests.fake_pipeline import FakePipeline

P = {"prompt": "v3ct0r style, a cat", "width": 64, "height": 64, "steps": 2}


def png(size=(64, 64)):
    return encode_image(Image.new("RGB", size, (1, 2, 3)), "png", 95)


@pytest.fixture
def store(tmp_path):
    s = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def finish(store, job_id, n=1):
    return store.complete(job_id, [png()] * n, {"ext": "png", "media_type": "image/png", "echo": {"base64": False},
                                               "width": 64, "height": 64, "inference_time": 0.5})  # fmt: skip


# ----------------------------------------------------------------------------------------------- store
def test_lifecycle_fifo_and_positions(store):
    a, b, c = (store.submit("Simple_Vector_Flux", {**P, "seed": i}) for i in range(3))
    assert [j.position for j in (a, b, c)] == [0, 1, 2]
    assert store.get(c.id).state == QUEUED and store.get(c.id).position == 2
    claimed = store.claim()
    assert claimed.id == a.id and claimed.state == PROCESSING and claimed.attempts == 1
    assert store.get(c.id).position == 1
    store.progress(a.id, 1, 2)
    assert (store.get(a.id).step, store.get(a.id).total_steps) == (1, 2)
    done = finish(store, a.id, n=2)
    assert done.state == COMPLETED and done.result["count"] == 2 and done.finished_at >= done.started_at
    assert store.image(a.id, 1) == png() and store.image(a.id, 2) is None and store.image(b.id, 0) is None
    assert store.claim().id == b.id
    failed = store.fail(b.id, "boom")
    assert failed.state == FAILED and failed.error == "boom"
    assert store.counts() == {QUEUED: 1, PROCESSING: 0, COMPLETED: 1, FAILED: 1}
    assert store.get("nope") is None


def test_queue_bound_counts_waiting_jobs(store):
    store.submit("s", P, max_queue=2)
    store.submit("s", P, max_queue=2)
    with pytest.raises(QueueFull) as info:
        store.submit("s", P, max_queue=2)
    assert info.value.max_queue == 2 and "2 jobs waiting" in str(info.value)
    store.claim()  # one job leaves the queue (PROCESSING is not waiting)
    store.submit("s", P, max_queue=2)


def test_survives_reopen_and_one_server_per_store(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    s = SQLiteJobStore(path)
    with pytest.raises(StoreLocked, match="in use by another"):
        SQLiteJobStore(path)
    done = s.submit("s", P)
    s.claim()
    finish(s, done.id)
    waiting = s.submit("s", P)
    s.close()
    s = SQLiteJobStore(path)
    assert s.get(done.id).state == COMPLETED and s.image(done.id, 0) == png()
    assert s.get(waiting.id).state == QUEUED
    s.close()


def test_recover_reruns_then_fails_interrupted_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    s = SQLiteJobStore(path)
    job = s.submit("s", P)
    later = s.submit("s", P)
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


def test_requeue_keeps_place_and_attempts(store):
    a = store.submit("s", P)
    b = store.submit("s", P)
    store.claim()
    store.requeue(a.id)
    assert store.get(a.id).state == QUEUED and store.get(a.id).attempts == 0
    assert store.claim().id == a.id and store.get(b.id).position == 0


def test_expiry_hides_then_deletes(tmp_path):
    s = SQLiteJobStore(tmp_path / "jobs.sqlite3", retention_s=0.3)
    job = s.submit("s", P)
    s.claim()
    finish(s, job.id)
    waiting = s.submit("s", P)
    path = s.image_file(job.id, 0)
    assert path.exists()
    time.sleep(0.4)
    assert s.get(job.id) is None and s.image(job.id, 0) is None  # expired the moment retention passed
    assert s.counts()[COMPLETED] == 0
    assert path.exists()  # until the sweep
    assert s.expire() == 1 and not path.exists()
    assert s.get(waiting.id).state == QUEUED  # waiting jobs never expire
    s.close()
    with pytest.raises(ValueError, match="retention_s"):
        SQLiteJobStore(tmp_path / "x.sqlite3", retention_s=0)


def test_bodies(store):
    job = store.submit("s", {**P, "base64": True})
    assert status_body(store.get(job.id)) == {"request_id": job.id, "status": QUEUED, "position": 0}
    store.claim()
    store.progress(job.id, 1, 2)
    assert status_body(store.get(job.id))["progress"] == {"step": 1, "total": 2}
    meta = {"ext": "png", "media_type": "image/png", "width": 64, "height": 64, "inference_time": 0.25,
            "echo": {"prompt": "x", "base64": True}}  # fmt: skip
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


def test_worker_runs_jobs_and_notifies(store):
    seen = []
    worker = run_worker(store, FakePipeline())
    worker.add_listener(seen.append)
    try:
        job = store.submit("s", {**P, "output_format": "jpeg", "batch_size": 2, "seed": 7})
        worker.notify()
        done = worker.wait(job.id, timeout=10)
        assert done.state == COMPLETED, done.error
        assert done.result["media_type"] == "image/jpeg" and done.result["count"] == 2
        assert done.result["echo"]["seed"] == 7 and done.result["echo"]["sampler_name"] == "euler"
        assert Image.open(io.BytesIO(store.image(job.id, 1))).format == "JPEG"
        assert [j.id for j in seen] == [job.id]
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("error", "expected"),
    [(MemoryError("CUDA out of memory"), "out of memory generating 64x64"),
     (FloatingPointError("the sampler produced NaN/inf latents"), "numerical error"),
     (RuntimeError("weird"), "model error (RuntimeError): weird")],
)  # fmt: skip
def test_model_error_fails_the_job_and_worker_carries_on(store, error, expected):
    pipe = FakePipeline(error=error)
    worker = run_worker(store, pipe)
    try:
        bad = store.submit("s", P)
        worker.notify()
        failed = worker.wait(bad.id, timeout=10)
        assert failed.state == FAILED and expected in failed.error
        pipe.error = None
        good = store.submit("s", P)
        worker.notify()
        assert worker.wait(good.id, timeout=10).state == COMPLETED
    finally:
        worker.stop()


def test_without_lora_only_strength_zero(store):
    worker = run_worker(store, FakePipeline(lora=None))
    try:
        default = store.submit("s", P)
        explicit = store.submit("s", {**P, "lora_strength": 0.5})
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
        job = store.submit("s", P)
        worker.notify()
        failed = worker.wait(job.id, 10)
        assert failed.state == FAILED and "could not be loaded: no weights here" in failed.error
        assert worker.load_error and worker.running
    finally:
        worker.stop()


def test_stop_requeues_the_running_job(store):
    worker = run_worker(store, FakePipeline(step_s=0.05))
    job = store.submit("s", {**P, "steps": 100})
    worker.notify()
    deadline = time.monotonic() + 10
    while store.get(job.id).state != PROCESSING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.stop(timeout=10)
    back = store.get(job.id)
    assert back.state == QUEUED and back.attempts == 0


def test_wait_times_out_and_progress_is_recorded(store):
    worker = run_worker(store, FakePipeline(step_s=0.02), progress_every=0.0)
    try:
        job = store.submit("s", {**P, "steps": 30})
        worker.notify()
        t = time.monotonic()
        still = worker.wait(job.id, timeout=0.2)
        assert 0.15 < time.monotonic() - t < 2 and still.state in (QUEUED, PROCESSING)
        assert worker.wait(job.id, timeout=10).state == COMPLETED
    finally:
        worker.stop()


def test_store_is_thread_safe(store):
    ids, errors = [], []

    def submit():
        try:
            for _ in range(20):
                ids.append(store.submit("s", P).id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 80 and store.counts()[QUEUED] == 80


def test_worker_with_the_tiny_pipeline(store, tiny_pipe):
    worker = run_worker(store, tiny_pipe)
    try:
        job = store.submit("s", {**P, "output_format": "webp"})
        worker.notify()
        done = worker.wait(job.id, timeout=120)
        assert done.state == COMPLETED, done.error
        image = Image.open(io.BytesIO(store.image(job.id, 0)))
        assert image.format == "WEBP" and image.size == (64, 64)
        assert done.result["inference_time"] > 0 and done.result["echo"]["steps"] == 2
    finally:
        worker.stop()
