"""The SQLite store's files: one writer whatever the path, a clean stop leaves every row in the database file, a
lost or damaged database refused at start (nothing deleted), /healthz reporting a full disk."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest
from fastapi.testclient import TestClient

from flux_vector.jobs import SQLiteJobStore
from flux_vector.request import SLUG, parse_request
from tests.server_helpers import app_over_sqlite


# ------------------------------------------------------------------------------------------ problem 3: store
def completed_job(store) -> str:
    job = store.submit(SLUG, parse_request({"prompt": "a cat"}))
    assert store.claim().id == job.id
    store.complete(job.id, [b"png bytes"], {"ext": "png", "media_type": "image/png"})
    return job.id


def test_one_writer_per_store_whatever_the_path(tmp_path):
    from flux_vector.jobs.store import StoreLocked

    real = tmp_path / "real"
    store = SQLiteJobStore(real / "jobs.sqlite3")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (tmp_path / "file-link.sqlite3").symlink_to(real / "jobs.sqlite3")
    (tmp_path / "hard").mkdir()
    os.link(real / "jobs.sqlite3", tmp_path / "hard" / "jobs.sqlite3")
    for other in (
        tmp_path / "linked" / "jobs.sqlite3",
        tmp_path / "file-link.sqlite3",
        real / ".." / "real" / "jobs.sqlite3",
        tmp_path / "hard" / "jobs.sqlite3",
    ):
        with pytest.raises(StoreLocked):
            SQLiteJobStore(other)
    completed_job(store)  # the first store is unharmed
    store.close()


def test_a_clean_stop_leaves_every_row_in_the_database_file(tmp_path):

    store = SQLiteJobStore(tmp_path / "a" / "jobs.sqlite3")
    job_id = completed_job(store)
    reader = sqlite3.connect(tmp_path / "a" / "jobs.sqlite3")  # an operator's sqlite3 shell, a backup tool...
    reader.execute("SELECT COUNT(*) FROM jobs").fetchone()  # ...so closing the store is not the last close
    store.close()
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "jobs.sqlite3", tmp_path / "b" / "jobs.sqlite3")  # without -wal
    copy = SQLiteJobStore(tmp_path / "b" / "jobs.sqlite3")
    assert copy.get(job_id).state == "COMPLETED"
    copy.close()
    reader.close()


def test_an_empty_database_beside_images_refuses_to_start_and_deletes_nothing(tmp_path):
    from flux_vector.jobs.store import StoreUnavailable

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    completed_job(store)
    store.close()
    images = sorted((tmp_path / "jobs-images").iterdir())
    (tmp_path / "jobs.sqlite3").unlink()
    fresh = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(StoreUnavailable) as refused:
        fresh.recover()
    assert "move the images folder away" in str(refused.value)
    assert sorted((tmp_path / "jobs-images").iterdir()) == images
    fresh.close()


def test_a_damaged_database_is_refused_at_start_and_healthz_reports_a_full_disk(tmp_path, monkeypatch):
    import flux_vector.jobs.sqlite_store as sqlite_store
    from flux_vector.jobs.store import StoreUnavailable

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    for _ in range(200):
        store.submit(SLUG, parse_request({"prompt": "a cat " * 50}))
    store.close()
    path = tmp_path / "jobs.sqlite3"
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 8192] = b"\xde\xad\xbe\xef" * 2048  # 8 KB of garbage inside the database
    path.write_bytes(bytes(data))
    with pytest.raises(StoreUnavailable) as refused:
        SQLiteJobStore(path)
    assert "restore it from a backup" in str(refused.value)

    store, app = app_over_sqlite(tmp_path / "other")
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz").status_code == 200
        monkeypatch.setattr(sqlite_store, "MIN_FREE_BYTES", 1 << 62)
        answer = client.get("/healthz")
        assert answer.status_code == 503 and "free on the disk" in answer.json()["error"]
    store.close()
