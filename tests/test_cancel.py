"""Cancelling a job: DELETE /v2/requests/{id} and ``AsyncJob.cancel()``, queued (never runs) or running (stops at
its next step)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

import flux_vector
from flux_vector.jobs import SQLiteJobStore, Worker
from flux_vector.request import SLUG
from flux_vector.server.app import create_app
from tests.fake_pipeline import FakePipeline
from tests.server_helpers import SMALL, post, wait_status


def test_delete_cancels_a_queued_job_and_stops_a_running_one(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    pipe = FakePipeline(step_s=0.05)
    app = create_app(store, Worker(store, pipe, log=lambda m: None), log=lambda m: None)
    with TestClient(app, base_url="http://localhost") as client:
        body = json.dumps({"prompt": "a cat", "width": 64, "height": 64, "steps": 100})
        running, queued = (post(client, body).json()["request_id"] for _ in range(2))
        wait_status(client, running, "PROCESSING")
        answer = client.delete(f"/v2/requests/{queued}")
        assert answer.status_code == 200 and answer.json()["status"] == "FAILED" and "cancel" in answer.json()["error"]
        answer = client.delete(f"/v2/requests/{running}")
        assert answer.status_code == 200 and answer.json()["status"] == "FAILED"
        finished = post(client, json.dumps({"prompt": "a dog", **SMALL})).json()["request_id"]
        wait_status(client, finished, "COMPLETED")  # the worker stopped the cancelled run and carried on
        assert client.delete(f"/v2/requests/{finished}").status_code == 409
        assert client.delete("/v2/requests/0123456789abcdef0123456789abcdef").status_code == 404
        assert [request.prompt for request in pipe.calls] == ["a cat", "a dog"]  # the queued one never ran
        final = client.get(f"/v2/requests/{running}").json()
        assert final["status"] == "FAILED" and "cancel" in final["error"]
    store.close()


def test_async_job_cancel_in_process(engine):
    engine(pipeline=FakePipeline(step_s=0.05))
    running = flux_vector.submit_async(SLUG, prompt="a cat", width=64, height=64, steps=100)
    queued = flux_vector.submit_async(SLUG, prompt="a dog", width=64, height=64, steps=100)
    for _ in range(3000):
        if running.status()["status"] == "PROCESSING":
            break
        time.sleep(0.01)
    assert queued.cancel()["status"] == "FAILED" and running.cancel()["status"] == "FAILED"
    with pytest.raises(flux_vector.InferenceFailed):
        running.wait(timeout=60, interval=0.05)
    assert running.cancel()["status"] == "FAILED"  # idempotent
    done = flux_vector.submit_async(SLUG, prompt="a bird", width=64, height=64, steps=2)
    done.wait(timeout=60, interval=0.05)
    with pytest.raises(flux_vector.SegmindError) as finished:
        done.cancel()
    assert finished.value.status == 409
