"""Callers waiting for a job: SIGTERM answers a waiting /v1 caller with a JSON 503; ``wait(interval=0)`` does not
spin; ``configure()`` while another thread waits is a SegmindError."""

from __future__ import annotations

import signal
import threading
import time

import httpx

import flux_vector
from flux_vector.facade.client import MIN_POLL_INTERVAL_S
from flux_vector.request import SLUG
from tests.fake_pipeline import FAKE_ENV, FakePipeline
from tests.server_helpers import SMALL
from tests.server_process import ServerProcess


def test_sigterm_answers_a_waiting_v1_caller_with_a_json_503(tmp_path, tiny_dir):
    server = ServerProcess(tmp_path / "jobs.sqlite3", env=FAKE_ENV).start()
    answers: list[httpx.Response] = []

    def call() -> None:
        body = {"prompt": "a cat [[fault:sleep=60]]", **SMALL}
        answers.append(httpx.post(f"{server.url}/v1/{SLUG}", json=body, timeout=120))

    caller = threading.Thread(target=call)
    try:
        caller.start()
        for _ in range(3000):
            if httpx.get(f"{server.url}/healthz").json()["current_job"]:
                break
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        caller.join(120)
    finally:
        assert server.stop(), server.log()
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"].isdigit() and "shutting down" in answer.json()["error"]
    assert answer.json()["request_id"]


def test_wait_with_interval_zero_does_not_spin(engine, monkeypatch):
    local = engine(pipeline=FakePipeline(step_s=0.01))
    pauses: list[float] = []
    original = type(local).pause
    monkeypatch.setattr(
        type(local), "pause", lambda self, job, seconds: (pauses.append(seconds), original(self, job, seconds))
    )
    job = flux_vector.submit_async(SLUG, prompt="a cat", width=64, height=64, steps=30)
    assert job.wait(timeout=60, interval=0)["status"] == "COMPLETED"
    assert pauses and min(pauses) >= MIN_POLL_INTERVAL_S


def test_configure_while_another_thread_waits_is_a_segmind_error(engine, monkeypatch):
    local = engine(pipeline=FakePipeline(step_s=0.02))
    pausing = threading.Event()
    original = type(local).pause

    def pause(self, job, seconds):
        pausing.set()
        original(self, job, seconds)

    monkeypatch.setattr(type(local), "pause", pause)
    job = flux_vector.submit_async(SLUG, prompt="a cat", width=64, height=64, steps=100)
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            job.wait(timeout=60, interval=2.0)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert pausing.wait(30)
    engine(pipeline=FakePipeline())
    waiter.join(60)
    (error,) = raised
    assert isinstance(error, flux_vector.SegmindError) and error.status == 404, repr(error)
