"""Issue 13: what an attacker or an unlucky operator did to the server, each now a clean 4xx/503 JSON answer.

Most tests drive the app in-process (``create_app`` over a SQLite store and a fake pipeline); the ones about
connections, signals and memory run ``flux-vector serve --model tiny`` as a subprocess."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import flux_vector
from flux_vector import facade
from flux_vector.facade.client import MIN_POLL_INTERVAL_S
from flux_vector.jobs import SQLiteJobStore, Worker
from flux_vector.jobs.redis_store import RedisJobStore, split_redis_url
from flux_vector.request import SLUG, WorkBudget
from flux_vector.server.app import create_app
from tests.fake_pipeline import FAULTS_ENV, FakePipeline
from tests.server_process import ServerProcess

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def app_client(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    worker = Worker(store, FakePipeline(), log=lambda message: None)
    with TestClient(create_app(store, worker, log=lambda message: None), base_url="http://localhost") as client:
        yield client
    store.close()


def post(client, body: str | bytes, path: str = f"/v2/{SLUG}", **headers):
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def finished_job(client) -> str:
    request_id = post(client, json.dumps({"prompt": "a cat", **SMALL})).json()["request_id"]
    for _ in range(2000):
        if client.get(f"/v2/requests/{request_id}/status").json()["status"] == "COMPLETED":
            return request_id
        time.sleep(0.01)
    raise AssertionError("the job did not complete")


# ------------------------------------------------------------------------------------------ problem 6: small 500s
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
    server = ServerProcess(tmp_path / "jobs.sqlite3").start()
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


def test_sigterm_answers_a_waiting_v1_caller_with_a_json_503(tmp_path, tiny_dir):
    server = ServerProcess(tmp_path / "jobs.sqlite3", env=FAULTS_ENV).start()
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


@pytest.fixture
def engine(tmp_path):
    def setup(**kwargs):
        flux_vector.configure(store_dir=tmp_path / f"store-{time.monotonic_ns()}", **kwargs)
        return facade.local.local_engine()

    yield setup
    flux_vector.configure()


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


# ------------------------------------------------------------------------------------------ problem 4: memory
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
    server = ServerProcess(tmp_path / "jobs.sqlite3").start()
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


# ------------------------------------------------------------------------------------------ problem 5: browsers
def browser_app(tmp_path, **options):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    return store, create_app(store, Worker(store, FakePipeline(), log=lambda m: None), log=lambda m: None, **options)


def test_post_bodies_must_be_application_json(app_client):
    body = json.dumps({"prompt": "a cat", **SMALL})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        answer = app_client.post(f"/v2/{SLUG}", content=body, headers={"content-type": content_type})
        assert answer.status_code == 415 and answer.json()["field"] == "Content-Type", content_type
    assert post(app_client, body, **{"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_foreign_origins_are_refused_unless_allowed(tmp_path):
    store, app = browser_app(tmp_path, allow_origins=["https://app.example"])
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
    store, app = browser_app(tmp_path, public_url="https://flux.example/")
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


# ------------------------------------------------------------------------------------------ problem 1: work
def test_the_issue_request_is_over_the_budget_of_an_8_gib_device(tmp_path):
    budget = WorkBudget.for_memory(8 << 30)
    assert budget.max_image_pixels == 8 << 20 and WorkBudget.for_memory(80 << 30).max_image_pixels == 4096 * 4096
    store, app = browser_app(tmp_path, budget=budget)
    with TestClient(app, base_url="http://localhost") as client:
        body = {"prompt": "a cat", "width": 4096, "height": 4096, "batch_size": 8, "steps": 1}
        answer = post(client, json.dumps(body)).json()
        assert (answer["fields"], answer["limit"], answer["setting"]) == (
            ["width", "height"],
            8 << 20,
            "max_image_pixels",
        )
        body.update(width=2048, height=2048)
        answer = post(client, json.dumps(body)).json()
        assert answer["fields"] == ["width", "height", "batch_size"] and answer["setting"] == "max_batch_pixels"
        body.update(batch_size=3, steps=100)
        answer = post(client, json.dumps(body)).json()
        # issue 27: the work is priced in token-calls (image + text tokens x model calls x steps x batch)
        assert answer["fields"] == ["width", "height", "batch_size", "steps"] and "token-calls" in answer["error"]
        body.update(steps=20, width=64, height=64)
        assert post(client, json.dumps(body)).status_code == 200
    store.close()


ISSUE_REQUEST = {"prompt": "a cat", "width": 4096, "height": 4096, "batch_size": 8, "steps": 1}


def test_the_facade_applies_the_work_budget(engine):
    engine(pipeline=FakePipeline(), budget=WorkBudget(max_image_pixels=128 * 128, max_batch_pixels=2 * 128 * 128))
    with pytest.raises(flux_vector.SegmindError) as raised:
        flux_vector.run(SLUG, **ISSUE_REQUEST)
    assert raised.value.status == 400
    assert "width x height = 16,777,216 pixels per image" in raised.value.detail
    assert "limit of 16,384 (max_image_pixels)" in raised.value.detail
    assert flux_vector.run(SLUG, prompt="a cat", width=64, height=64, batch_size=2, steps=2)["status"] == "COMPLETED"


def test_the_facade_budget_defaults_to_the_device_memory_once_loaded(engine):
    from flux_vector.serving import device_memory_bytes

    local = engine(pipeline=FakePipeline())
    assert local.budget() == WorkBudget.for_memory(device_memory_bytes(FakePipeline()))
    with pytest.raises(flux_vector.SegmindError) as raised:  # 8 x 4096^2 is over twice any image limit
        flux_vector.run(SLUG, **ISSUE_REQUEST)
    assert raised.value.status == 400 and "width x height" in raised.value.detail


# RLIMIT_AS for the tiny server only (measured here with 2 malloc arenas and 2 threads: 1.2 GiB of address space
# after a small request, 0.55 GiB RSS); the issue's request without a budget grew past 2.4 GiB within two minutes.
TINY_SERVER_ADDRESS_SPACE = 3 << 30


def test_the_issue_request_under_a_memory_limit_is_a_400_and_the_server_lives(tmp_path, tiny_dir):
    server = ServerProcess(
        tmp_path / "jobs.sqlite3",
        args=("--max-image-pixels", str(1024 * 1024), "--max-batch-pixels", str(2 * 1024 * 1024)),
        env={"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"},  # address space independent of the core count
        address_space=TINY_SERVER_ADDRESS_SPACE,
    ).start()
    try:
        answer = httpx.post(f"{server.base_url}/{SLUG}", json=ISSUE_REQUEST, timeout=60)
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert (body["fields"], body["limit"], body["setting"]) == (
            ["width", "height"],
            1024 * 1024,
            "max_image_pixels",
        )
        assert "1,048,576" in body["error"]
        assert server.proc.poll() is None
        assert httpx.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"
        small = httpx.post(f"{server.base_url}/{SLUG}", json={"prompt": "a cat", **SMALL}, timeout=120)
        assert small.status_code == 200 and small.headers["content-type"].startswith("image/")
        assert server.proc.poll() is None
    finally:
        server.stop()


_DECODE_PEAK = """
import re, sys, torch
from flux_vector import FluxVectorPipeline


def status_kib(name):
    return int(re.search(name + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))


pipe = FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)
scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
size, batch = int(sys.argv[1]), int(sys.argv[2])
x = torch.randn(batch, pipe.vae.config.latent_channels, size // scale, size // scale)
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status_kib("VmRSS")
assert len(pipe.decode(x)) == batch
print(status_kib("VmHWM") - before)
"""


def test_vae_decode_peak_memory_grows_with_one_image_not_the_batch(tiny_dir):
    def growth_kib(batch: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _DECODE_PEAK, "1024", str(batch)], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    one, four = growth_kib(1), growth_kib(4)
    assert four < 1.5 * one, (one, four)  # a whole-batch decode needs about 4x


def test_large_images_are_decoded_in_tiles_and_small_ones_exactly(tiny_pipe, monkeypatch):
    import torch

    import flux_vector.pipeline as pipeline_module

    x = torch.randn(2, tiny_pipe.vae.config.latent_channels, 16, 16)
    reference = tiny_pipe.vae.decode(pipeline_module.to_latent(x).to(tiny_pipe.vae.dtype), return_dict=False)[0]
    expected = (255.0 * ((reference.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()).astype("uint8")
    images = tiny_pipe.decode(x)
    assert [image.size for image in images] == [(expected.shape[2], expected.shape[1])] * 2
    assert (
        max(
            int(abs(np.asarray(image).astype(int) - e.astype(int)).max())
            for image, e in zip(images, expected, strict=True)
        )
        <= 1
    )
    tilings: list[bool] = []
    monkeypatch.setattr(pipeline_module, "TILED_DECODE_PIXELS", 16)
    monkeypatch.setattr(type(tiny_pipe.vae), "enable_tiling", lambda self, *a, **k: tilings.append(True))
    tiled = tiny_pipe.decode(x[:1])
    assert tilings == [True] and tiled[0].size == images[0].size


def wait_status(client, request_id: str, wanted: str) -> dict:
    for _ in range(3000):
        body = client.get(f"/v2/requests/{request_id}/status").json()
        if body["status"] == wanted:
            return body
        time.sleep(0.01)
    raise AssertionError(f"{request_id} never reached {wanted}: {body}")


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


# ------------------------------------------------------------------------------------------ problem 3: store
def completed_job(store) -> str:
    job = store.submit(SLUG, {"prompt": "a cat"})
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
    import sqlite3

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
        store.submit(SLUG, {"prompt": "a cat " * 50})
    store.close()
    path = tmp_path / "jobs.sqlite3"
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 8192] = b"\xde\xad\xbe\xef" * 2048  # 8 KB of garbage inside the database
    path.write_bytes(bytes(data))
    with pytest.raises(StoreUnavailable) as refused:
        SQLiteJobStore(path)
    assert "restore it from a backup" in str(refused.value)

    store, app = browser_app(tmp_path / "other")
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz").status_code == 200
        monkeypatch.setattr(sqlite_store, "MIN_FREE_BYTES", 1 << 62)
        answer = client.get("/healthz")
        assert answer.status_code == 503 and "free on the disk" in answer.json()["error"]
    store.close()


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
