"""What the in-process server tests share: a small request, posting a raw body, waiting for a job (the
``app_client`` and ``engine`` fixtures are in conftest.py)."""

from __future__ import annotations

import json
import time

from flux_vector.jobs import SQLiteJobStore, Worker
from flux_vector.request import SLUG
from flux_vector.server.app import create_app
from tests.fake_pipeline import FakePipeline

SMALL = {"width": 64, "height": 64, "steps": 2}


def post(client, body: str | bytes, path: str = f"/v2/{SLUG}", **headers):
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def finished_job(client) -> str:
    request_id = post(client, json.dumps({"prompt": "a cat", **SMALL})).json()["request_id"]
    for _ in range(2000):
        if client.get(f"/v2/requests/{request_id}/status").json()["status"] == "COMPLETED":
            return request_id
        time.sleep(0.01)
    raise AssertionError("the job did not complete")


def wait_status(client, request_id: str, wanted: str) -> dict:
    for _ in range(3000):
        body = client.get(f"/v2/requests/{request_id}/status").json()
        if body["status"] == wanted:
            return body
        time.sleep(0.01)
    raise AssertionError(f"{request_id} never reached {wanted}: {body}")


def app_over_sqlite(tmp_path, **options):
    """(store, app): ``create_app`` over a fresh SQLite store in ``tmp_path`` and a ``FakePipeline`` worker."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    return store, create_app(store, Worker(store, FakePipeline(), log=lambda m: None), log=lambda m: None, **options)
