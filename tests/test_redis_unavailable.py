"""Redis down or the password wrong: a 503 with Retry-After, and the password never in an answer or a log."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from flux_vector.jobs.redis_store import RedisJobStore, split_redis_url
from flux_vector.server.app import create_app
from tests.server_helpers import SMALL, post

PASSWORD = "p@ss/w:rd#?1"  # unencoded in the URL: '@', '/', ':', '#' and '?' all inside the password


@pytest.mark.redis
def test_redis_down_is_a_503_with_retry_after_and_never_shows_the_password(tmp_path):
    from tests.redis_cluster import RedisServer, require_redis

    require_redis()
    redis_server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    logged: list[str] = []
    try:
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
        assert split_redis_url(url) == (f"redis://127.0.0.1:{redis_server.port}/0", None, PASSWORD)
        store = RedisJobStore.from_url(url, log=logged.append)
        assert PASSWORD not in store.url and any("visible in ps" in line for line in logged)
        app = create_app(store, None, log=logged.append)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            assert post(client, json.dumps({"prompt": "a cat", **SMALL})).status_code == 200
            redis_server.stop()
            for answer in (
                post(client, json.dumps({"prompt": "a cat", **SMALL})),
                client.get("/v2/requests/0123456789abcdef0123456789abcdef/status"),
                client.get("/healthz"),
            ):
                assert answer.status_code == 503 and answer.headers["retry-after"].isdigit(), answer.text
                assert "error" in answer.json()
                for fragment in (PASSWORD, "p@ss", "w:rd", "rd#"):
                    assert fragment not in answer.text
        store.close()
    finally:
        redis_server.stop()
    for fragment in (PASSWORD, "w:rd"):
        assert not any(fragment in line for line in logged)


@pytest.mark.redis
def test_redis_password_from_a_file_and_a_wrong_one_is_not_shown(tmp_path, monkeypatch):
    from flux_vector.jobs.store import StoreUnavailable
    from tests.redis_cluster import RedisServer, require_redis

    require_redis()
    redis_server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        secret = tmp_path / "redis-password"
        secret.write_text(PASSWORD + "\n")
        monkeypatch.setenv("FLUX_VECTOR_REDIS_PASSWORD_FILE", str(secret))
        store = RedisJobStore.from_url(redis_server.url())
        assert store.counts()["QUEUED"] == 0
        store.close()
        with pytest.raises(StoreUnavailable) as denied:
            RedisJobStore.from_url(f"redis://:wrong-{PASSWORD}@127.0.0.1:{redis_server.port}/0")
        assert PASSWORD not in str(denied.value) and "wrong-" not in str(denied.value)
    finally:
        redis_server.stop()
