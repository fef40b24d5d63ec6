"""Bodies a client or an attacker sends the server, each a clean 4xx JSON answer: malformed JSON, lone surrogates,
deep nesting, duplicate keys, the wrong media type, a body too large while it streams; base64 results encoded once.
Most drive the app in-process (``app_client``); the connection and streaming ones run ``flux-vector serve``."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from flux_vector.request import SLUG
from tests.fake_pipeline import FAKE_ENV
from tests.server_helpers import SMALL, finished_job, post
from tests.server_process import ServerProcess


def test_image_name_with_a_unicode_digit_is_a_404(app_client):
    request_id = finished_job(app_client)
    assert app_client.get(f"/v2/requests/{request_id}/images/0.png").status_code == 200
    for name in ("².png", "٣.png", "0x1.png", "9999999.png"):
        answer = app_client.get(f"/v2/requests/{request_id}/images/{name}")
        assert answer.status_code == 404 and "images are 0..0.png" in answer.json()["error"], name


@pytest.mark.parametrize("field", ["prompt", "sampler_name", "negative_prompt"])
def test_a_lone_surrogate_is_a_400_naming_the_field(app_client, field):
    body = json.dumps({"prompt": "a cat", field: "x\ud800y"})  # ensure_ascii writes the surrogate as \ud800
    answer = post(app_client, body)
    assert answer.status_code == 400 and answer.json()["field"] == field
    assert "surrogate" in answer.json()["error"]
    key = post(app_client, '{"prompt": "a cat", "\\udc00": 1}')
    assert key.status_code == 400 and "surrogate" in key.json()["error"]


def test_deep_json_is_a_400(app_client):
    for body in ("[" * 100_000 + "]" * 100_000, '{"prompt":' * 50_000 + '"x"' + "}" * 50_000, "[" * 40 + "]" * 40):
        answer = post(app_client, body)
        assert answer.status_code == 400 and answer.json()["field"] == "body", answer.text[:200]


def test_duplicate_json_keys_are_rejected(app_client):
    answer = post(app_client, '{"prompt": "a cat", "steps": 1, "steps": 100}')
    assert answer.status_code == 400 and answer.json()["field"] == "steps"
    assert "more than once" in answer.json()["error"]


def test_malformed_bodies_keep_the_connection_alive(tmp_path, tiny_dir):
    """A 100,000-deep body is a 400 on a kept-alive connection: the client's next request on it succeeds."""
    server = ServerProcess(tmp_path / "jobs.sqlite3", env=FAKE_ENV).start()  # the HTTP layer: no model needed
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for body in ("[" * 100_000, '{"prompt": "a", "prompt": "b"}', '{"prompt": "\\ud800"}'):
            connection.request("POST", f"/v2/{SLUG}", body=body, headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            assert answer.status == 400 and "error" in json.loads(answer.read())
            assert answer.getheader("connection") != "close"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        assert server.stop(), server.log()


MIB = 1 << 20


def stream_body(port: int, total: int, *, chunked: bool) -> tuple[int, bytes]:
    """POST ``total`` bytes of JSON whitespace in 1 MiB pieces; (bytes sent before the server stopped taking them,
    the start of the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = f"POST /v2/{SLUG} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    piece = b" " * MIB
    frame = (f"{MIB:x}\r\n".encode() + piece + b"\r\n") if chunked else piece
    sent = 0
    try:
        sock.sendall(head.encode())
        while sent < total:
            sock.sendall(frame)
            sent += MIB
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed the connection: what a limit enforced while streaming does
    try:
        answer = sock.recv(65536)
    except OSError:
        answer = b""
    sock.close()
    return sent, answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_1_gib_body_is_refused_while_it_streams(tmp_path, tiny_dir, chunked):
    psutil = pytest.importorskip("psutil")
    server = ServerProcess(tmp_path / "jobs.sqlite3", env=FAKE_ENV).start()  # the HTTP layer: no model needed
    try:
        process = psutil.Process(server.proc.pid)
        before = process.memory_info().rss
        sent, answer = stream_body(server.port, 1 << 30, chunked=chunked)
        after = process.memory_info().rss
        print(
            f"server RSS {before / MIB:.0f} MiB -> {after / MIB:.0f} MiB after a 1 GiB body ({sent / MIB:.0f} MiB sent)"
        )
        assert answer.startswith(b"HTTP/1.1 413") or (answer == b"" and sent < 1 << 30), answer[:200]
        assert after - before < 64 * MIB
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        assert server.stop(), server.log()


def test_base64_results_are_encoded_once(app_client):
    store = app_client.app.state.flux.store
    body = {"prompt": "a cat", "base64": True, "batch_size": 3, **SMALL}
    request_id = post(app_client, json.dumps(body)).json()["request_id"]
    for _ in range(2000):
        if app_client.get(f"/v2/requests/{request_id}/status").json()["status"] == "COMPLETED":
            break
        time.sleep(0.01)
    reads: list[int] = []
    original = store.image
    store.image = lambda job_id, index: (reads.append(index), original(job_id, index))[1]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: app_client.get(f"/v2/requests/{request_id}"), range(16)))
    assert {len(answer.json()["images"]) for answer in answers} == {3}
    assert len({answer.text for answer in answers}) == 1
    assert sorted(reads) == [0, 1, 2]


def test_post_bodies_must_be_application_json(app_client):
    body = json.dumps({"prompt": "a cat", **SMALL})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        answer = app_client.post(f"/v2/{SLUG}", content=body, headers={"content-type": content_type})
        assert answer.status_code == 415 and answer.json()["field"] == "Content-Type", content_type
    assert post(app_client, body, **{"content-type": "application/json; charset=utf-8"}).status_code == 200
