"""``flux-vector serve`` as a real subprocess on the tiny model, driven by the real ``segmind`` SDK (1.3.0). The
restart and expiry tests are about the queue, not the pixels: their servers run the fake pipeline (``FAKE``)."""

import io
import json
import signal
import time

import httpx
import pytest
import segmind
from PIL import Image

import flux_vector
from tests.fake_pipeline import FAKE_ENV as FAKE
from tests.fake_pipeline import FAULTS_ENV as FAULTS
from tests.segmind_script import SLUG, SMALL, run_script
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow  # a real server process per test

KEY = "test-key-0123"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    """Auth on, fault hooks on, a queue bound of 2."""
    store = tmp_path_factory.mktemp("server") / "jobs.sqlite3"
    proc = ServerProcess(store, args=("--max-queue", "2"), env={**FAULTS, "FLUX_VECTOR_API_KEY": KEY}).start()
    yield proc
    assert proc.stop(), proc.log()


@pytest.fixture
def client(server):
    return segmind.SegmindClient(api_key=KEY, base_url=server.base_url)


def wait_state(job, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.status()["status"] == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"{job.request_id} never reached {state}: {job.status()}")


def test_the_segmind_script_with_the_real_sdk(server, monkeypatch):
    assert segmind.__version__ == "1.3.0"
    kwargs = {"api_key": KEY, "base_url": server.base_url}
    monkeypatch.setattr(segmind, "_default_client", segmind.SegmindClient(**kwargs))  # what segmind.run() uses
    run_script(segmind, kwargs, output_scheme="http://127.0.0.1")


def test_the_same_script_through_the_facade_over_http(server, monkeypatch):
    """flux_vector.SegmindClient(base_url=...) speaks to a server exactly as the SDK does."""
    kwargs = {"api_key": KEY, "base_url": server.base_url}
    monkeypatch.setattr(flux_vector.facade, "_default_client", flux_vector.SegmindClient(**kwargs))
    run_script(flux_vector, kwargs, output_scheme="http://127.0.0.1")


def test_output_url_serves_the_image(client, server):
    result = client.run(SLUG, prompt="v3ct0r style, a boat", output_format="webp", **SMALL)
    assert result["output"].endswith(".webp") and result["output"].startswith(server.url + "/v2/requests/")
    image = httpx.get(result["output"])  # like a hosted media link: no key needed, the id is the capability
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    bogus = httpx.get(result["output"].replace("/0.webp", "/7.webp"))
    assert bogus.status_code == 404 and "error" in bogus.json()


def test_401_without_or_with_a_wrong_key(server, client, monkeypatch):
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)  # the SDK's fallback for a missing key
    for key, detail in ((None, "missing API key: send it in the x-api-key header"), ("wrong-key", "invalid API key")):
        other = segmind.SegmindClient(api_key=key, base_url=server.base_url)
        for call in (lambda c: c.run(SLUG, prompt="a cat", **SMALL), lambda c: c.run_sync(SLUG, prompt="a cat")):
            with pytest.raises(segmind.SegmindError) as denied:
                call(other)
            assert (denied.value.status, denied.value.detail) == (401, detail)
    job = client.submit_async(SLUG, prompt="a cat", **SMALL)
    assert httpx.get(job.status_url).status_code == 401
    assert httpx.get(job.status_url, headers={"x-api-key": KEY}).status_code == 200
    job.wait(timeout=60, interval=0.05)


def test_400_for_bodies_that_are_not_parameter_objects(server):
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    for path in ("/v1/", "/v2/"):
        for body, needle in [
            (b"{bad json", "not valid JSON"),
            (b"[1, 2]", "JSON object"),
            (b'"text"', "JSON object"),
            (b"", "empty"),
            (b"\xff\xfe", "not valid JSON"),
            (b"null", "JSON object"),
            (b'{"prompt": "x", "cfg": NaN}', "cfg"),
            (b'{"prompt": "x", "seed": 1e400}', "seed"),
        ]:
            response = httpx.post(server.url + path + SLUG, content=body, headers=headers)
            assert response.status_code == 400, (path, body, response.text)
            assert needle in response.json()["error"], (body, response.json())
    response = httpx.post(server.url + "/v2/" + SLUG, json={"prompt": "x", "steps": 2.0}, headers=headers)
    detail = response.json()
    assert (detail["field"], detail["value"], detail["allowed"]) == ("steps", 2.0, "an integer from 1 to 100")


def test_404_for_unknown_or_malformed_request_ids_and_paths(server, client):
    for path in (
        "/v2/requests/0123456789abcdef/status",
        "/v2/requests/nope",
        "/v2/requests/x/images/0.png",
        "/v3/anything",
    ):
        response = httpx.get(server.url + path, headers={"x-api-key": KEY})
        assert response.status_code == 404 and response.json()["error"], path
    assert httpx.get(server.url + "/v1/" + SLUG).status_code == 405
    job = client.submit_async(SLUG, prompt="a cat", **SMALL)
    job.status_url = job.status_url.replace(job.request_id, "f" * 32)
    with pytest.raises(segmind.SegmindError) as gone:
        job.status()
    assert gone.value.status == 404 and "not found" in gone.value.detail


def test_failed_job_is_422_on_both_urls_and_the_server_carries_on(client, server):
    job = client.submit_async(SLUG, prompt="[[fault:oom]] a cat", **SMALL)
    with pytest.raises(segmind.InferenceFailed) as failed:
        job.wait(timeout=60, interval=0.05)
    assert "out of memory generating 64x64" in failed.value.detail
    for url in (job.status_url, job.response_url):
        response = httpx.get(url, headers={"x-api-key": KEY})
        assert response.status_code == 422 and response.json()["status"] == "FAILED" and response.json()["error"]
    assert job.result()["output"] is None
    assert client.run(SLUG, prompt="a cat", **SMALL)["status"] == "COMPLETED"


def test_429_when_the_queue_is_full_and_http_stays_responsive(client, server):
    busy = client.submit_async(SLUG, prompt="[[fault:sleep=3]] hold the worker", **SMALL)
    wait_state(busy, "PROCESSING")
    waiting = [client.submit_async(SLUG, prompt=f"queued {i}", **SMALL) for i in range(2)]
    assert [job.status()["position"] for job in waiting] == [0, 1]
    with pytest.raises(segmind.SegmindError) as full:
        client.submit_async(SLUG, prompt="one too many", **SMALL)
    assert full.value.status == 429 and "queue is full" in full.value.detail
    with pytest.raises(segmind.SegmindError) as full_sync:
        client.run_sync(SLUG, prompt="one too many", **SMALL)
    assert full_sync.value.status == 429
    # while the worker is busy, status calls answer quickly
    started = time.perf_counter()
    for _ in range(20):
        busy.status()
    assert (time.perf_counter() - started) / 20 < 0.25
    keyed = {"x-api-key": KEY}  # issue 27: with a key configured, /healthz without one says liveness only
    health = httpx.get(server.url + "/healthz", headers=keyed).json()
    assert health["worker"] == "busy" and health["jobs"]["QUEUED"] == 2 and health["auth"] is True
    metrics = httpx.get(server.url + "/metrics", headers=keyed).text  # /metrics needs the key
    assert "flux_vector_queue_depth 2.0" in metrics and 'flux_vector_jobs{state="PROCESSING"} 1.0' in metrics
    for job in (busy, *waiting):
        assert job.wait(timeout=60, interval=0.05)["status"] == "COMPLETED"
    metrics = httpx.get(server.url + "/metrics", headers=keyed).text
    assert "flux_vector_queue_depth 0.0" in metrics and "flux_vector_inference_seconds_count" in metrics
    assert 'flux_vector_jobs_finished_total{state="COMPLETED"}' in metrics


def test_progress_and_openapi(client, server):
    job = client.submit_async(SLUG, prompt="a cat", width=64, height=64, steps=40)
    seen = set()
    deadline = time.monotonic() + 60
    while (status := job.status())["status"] != "COMPLETED" and time.monotonic() < deadline:
        if status["status"] == "PROCESSING":
            seen.add(status["progress"]["total"])
            assert 0 <= status["progress"]["step"] <= 40
        time.sleep(0.02)
    assert seen <= {None, 40}
    schema = httpx.get(server.url + "/openapi.json").json()
    body = schema["paths"]["/v2/{model_slug}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in json.dumps(body) and "sampler_name" in json.dumps(body)
    assert httpx.get(server.url + "/docs").status_code == 200


# ----------------------------------------------------------------------------------------------- restart, expiry
def test_sigkill_mid_queue_loses_nothing(tmp_path, tiny_dir):
    store = tmp_path / "jobs.sqlite3"
    first = ServerProcess(store, env=FAKE).start()
    client = segmind.SegmindClient(base_url=first.base_url)
    done = client.run(SLUG, prompt="finished before the crash", **SMALL)
    running = client.submit_async(SLUG, prompt="[[fault:sleep=3]] caught running", **SMALL)
    queued = [client.submit_async(SLUG, prompt=f"queued {i}", seed=i, **SMALL) for i in range(3)]
    wait_state(running, "PROCESSING")
    first.kill(signal.SIGKILL)

    # restart on the same port (the absolute URLs the SDK holds stay valid): the interrupted job runs again...
    second = ServerProcess(store, port=first.port, env=FAKE).start()
    assert client.submit_async  # same client, same URLs
    assert httpx.get(done["output"]).status_code == 200  # finished results survive
    wait_state(running, "PROCESSING")  # attempt 2 (it keeps its place at the head of the queue)
    assert all(job.status()["status"] == "QUEUED" for job in queued)
    second.kill(signal.SIGKILL)  # ...and is caught by a crash again

    third = ServerProcess(store, port=first.port, env=FAKE).start()
    try:
        with pytest.raises(segmind.InferenceFailed) as failed:
            running.wait(timeout=30, interval=0.05)
        assert "killed" in failed.value.detail and "not retried" in failed.value.detail
        results = [job.wait(timeout=60, interval=0.05) for job in queued]
        assert [r["seed"] for r in results] == [0, 1, 2] and all(r["status"] == "COMPLETED" for r in results)
        again = segmind.SegmindClient(base_url=third.base_url)
        assert again.submit_async(SLUG, prompt="x", **SMALL).wait(timeout=60, interval=0.05)["status"] == "COMPLETED"
        assert httpx.get(done["output"]).status_code == 200
        counts = httpx.get(third.url + "/healthz").json()["jobs"]
        assert counts == {"QUEUED": 0, "PROCESSING": 0, "COMPLETED": 5, "FAILED": 1}
    finally:
        assert third.stop(), third.log()


def test_results_expire_after_the_retention(tmp_path, tiny_dir):
    server = ServerProcess(tmp_path / "jobs.sqlite3", args=("--retention", "1.5"), env=FAKE).start()
    try:
        client = segmind.SegmindClient(base_url=server.base_url)
        job = client.submit_async(SLUG, prompt="short-lived", **SMALL)
        result = job.wait(timeout=60, interval=0.05)
        assert httpx.get(result["output"]).status_code == 200
        time.sleep(1.7)
        for call in (job.status, job.result):
            with pytest.raises(segmind.SegmindError) as gone:
                call()
            assert gone.value.status == 404 and "expired" in gone.value.detail
        assert httpx.get(result["output"]).status_code == 404
        deadline = time.monotonic() + 10  # the worker's sweep (every retention/4) deletes the files too
        while list((tmp_path / "jobs-images").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list((tmp_path / "jobs-images").iterdir())
    finally:
        assert server.stop(), server.log()


def test_svg_through_v1_and_v2_with_the_real_sdk(client, server):
    import base64

    from tests.test_vectorize import assert_only_shapes

    width, height = SMALL.get("width", 64), SMALL.get("height", 64)
    response = client.run_sync(SLUG, prompt="v3ct0r style, a fox", output_format="svg", **SMALL)  # v1: the bytes
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert_only_shapes(response.content, width, height)
    result = client.run(
        SLUG,
        prompt="v3ct0r style, a fox",
        output_format="svg",
        transparent_background=True,
        detail="low",
        base64=True,
        **SMALL,
    )
    assert result["output"].endswith("/0.svg") and result["detail"] == "low"
    image = httpx.get(result["output"])
    assert image.headers["content-type"] == "image/svg+xml" and image.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in image.headers["content-security-policy"]
    assert base64.b64decode(result["image"]) == image.content
    assert_only_shapes(image.content, width, height)
    with pytest.raises(segmind.SegmindError) as info:
        client.run_sync(SLUG, prompt="v3ct0r style, a fox", detail="high", **SMALL)
    assert info.value.status == 400 and "applies to output_format 'svg' only" in str(info.value.detail)


def test_served_images_say_how_they_were_made_and_hold_no_key(client, server):
    from flux_vector.image_metadata import read_metadata

    for output_format in ("png", "jpeg", "svg"):
        result = client.run(SLUG, prompt="a red star", seed=41, output_format=output_format, **SMALL)
        data = httpx.get(result["output"]).content
        record = read_metadata(data)
        assert record["model"] == "tiny" and record["request"]["seed"] == 41
        assert record["request"]["output_format"] == output_format and record["request"]["prompt"] == "a red star"
        assert KEY.encode() not in data and str(server.store.parent).encode() not in data
