"""Disk faults while a job finishes (the images or the database unwritable): a clear FAILED, never a stuck job."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

from tests.server_helpers import SMALL, post


# ------------------------------------------------------------------------------------------ problem 2: disk faults
def run_one(client, prompt: str) -> dict:
    request_id = post(client, json.dumps({"prompt": prompt, **SMALL})).json()["request_id"]
    for _ in range(3000):
        body = client.get(f"/v2/requests/{request_id}/status").json()
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"{request_id} is stuck: {body}")


def test_disk_faults_end_in_a_clear_failed_never_a_stuck_job(app_client, monkeypatch):
    import errno

    import flux_vector.jobs.sqlite_store as sqlite_store

    store = app_client.app.state.flux.store
    shutil.rmtree(store.image_dir)  # the images folder deleted while running
    assert run_one(app_client, "a cat")["status"] == "COMPLETED"

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    original_record = store._record_failure
    attempts: list[str] = []

    def database_full_once(job_id, error):
        attempts.append(job_id)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return original_record(job_id, error)

    assert store._reserve.exists()
    monkeypatch.setattr(sqlite_store, "_write_durably", disk_full)
    monkeypatch.setattr(store, "_record_failure", database_full_once)
    failed = run_one(app_client, "a dog")
    assert failed["status"] == "FAILED" and "No space left on device" in failed["error"]
    assert len(attempts) == 2 and not store._reserve.exists()  # the reserve was spent to record it
    monkeypatch.undo()

    monkeypatch.setattr(sqlite_store, "MIN_FREE_BYTES", 1 << 62)  # below the free-space threshold: checked first
    failed = run_one(app_client, "a bird")
    assert failed["status"] == "FAILED" and "free on the disk" in failed["error"]
    assert app_client.get("/healthz").status_code == 503
