"""What a browser may do to the server: foreign origins and Host headers refused (DNS rebinding), CORS only for
``--allow-origin``, ``/docs`` from local files under a strict CSP."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from flux_vector.request import SLUG
from tests.server_helpers import SMALL, app_over_sqlite, post


def test_foreign_origins_are_refused_unless_allowed(tmp_path):
    store, app = app_over_sqlite(tmp_path, allow_origins=["https://app.example"])
    body = json.dumps({"prompt": "a cat", **SMALL})
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        for origin in ("https://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8000"):
            for answer in (post(client, body, origin=origin), client.get("/healthz", headers={"origin": origin})):
                assert answer.status_code == 403 and answer.json()["field"] == "Origin", (origin, answer.text)
        assert post(client, body, origin="http://127.0.0.1:8000").status_code == 200  # the server's own pages
        allowed = post(client, body, origin="https://app.example")
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        preflight = client.options(
            f"/v2/{SLUG}",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-api-key",
            },
        )
        assert preflight.status_code == 200 and "x-api-key" in preflight.headers["access-control-allow-headers"]
    store.close()


def test_foreign_host_headers_are_refused_and_public_url_makes_the_urls(tmp_path):
    store, app = app_over_sqlite(tmp_path, public_url="https://flux.example/")
    body = json.dumps({"prompt": "a cat", **SMALL})
    for base in ("http://attacker.example:8000", "http://127.0.0.1.nip.io:8000"):
        with TestClient(app, base_url=base) as client:
            answer = post(client, body)
            assert (
                answer.status_code == 400
                and answer.json()["field"] == "Host"
                and "attacker" not in str(answer.json().get("status_url"))
            )
            assert client.get("/healthz").status_code == 400
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://flux.example"):
        with TestClient(app, base_url=base) as client:
            answer = post(client, body)
            assert answer.status_code == 200, (base, answer.text)
            assert answer.json()["status_url"].startswith("https://flux.example/v2/requests/")
    store.close()


def test_docs_are_served_from_local_files_under_a_strict_csp(app_client):
    page = app_client.get("/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    sources = [part.split('"')[1] for part in page.text.split("src=")[1:] + page.text.split("href=")[1:]]
    assert sources and all(source.startswith("/docs/assets/") for source in sources), sources
    for source in sources:
        asset = app_client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 20, source
    assert "SwaggerUIBundle" in app_client.get("/docs/assets/swagger-ui-bundle.js").text
    assert app_client.get("/openapi.json").status_code == 200
    playground_csp = app_client.get("/").headers["content-security-policy"]
    assert "connect-src 'self'" in playground_csp and "form-action 'none'" in playground_csp  # the key stays here
