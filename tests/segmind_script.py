"""A user's Segmind script, written once against the ``segmind`` module's public API.

tests/test_server.py runs it with the real ``segmind`` SDK (1.3.0) pointed at ``flux-vector serve``;
tests/test_facade.py runs it with ``import flux_vector as segmind``, in-process. Only the module (and the
client's base_url) differ.
The server/engine must serve tests.fake_pipeline.FaultInjectingPipeline (the failing jobs use fault markers).
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

SLUG = "Simple_Vector_Flux"
SMALL = {"width": 64, "height": 64, "steps": 2}


def run_script(segmind, client_kwargs: dict, output_scheme: str) -> None:
    client = segmind.SegmindClient(**client_kwargs)

    # --- segmind.run: submit + wait, the final dict
    result = segmind.run(SLUG, prompt="v3ct0r style, simple vector art, a fox", seed=5, **SMALL)
    assert result["status"] == "COMPLETED"
    assert result["output"].startswith(output_scheme), result["output"]
    assert result["metrics"]["inference_time"] > 0 and result["metrics"]["queue_time"] >= 0
    assert len(result["request_id"]) >= 16
    # echoed parameters with the defaults filled in
    assert (result["seed"], result["steps"], result["width"], result["height"]) == (5, 2, 64, 64)
    assert (result["sampler_name"], result["scheduler"], result["aspect_ratio"]) == ("euler", "simple", "2:3")
    assert result["lora_strength"] == 1 and result["base64"] is False and "image" not in result

    # --- submit_async + wait, base64 inline
    job = client.submit_async(SLUG, prompt="v3ct0r style, a salesman", output_format="jpeg", base64=True, **SMALL)
    assert job.request_id
    status = job.status()
    assert status["status"] in ("QUEUED", "PROCESSING", "COMPLETED")
    final = job.wait(timeout=120, interval=0.05)
    assert final["request_id"] == job.request_id and final["output_format"] == "jpeg"
    image = Image.open(io.BytesIO(base64.b64decode(final["image"])))
    assert image.format == "JPEG" and image.size == (64, 64)
    assert job.result()["status"] == "COMPLETED"

    # --- run_sync: the image bytes, of the requested size
    response = client.run_sync(SLUG, prompt="v3ct0r style, a car", width=96, height=64, steps=1)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (96, 64)
    as_json = client.run_sync(SLUG, prompt="a car", base64=True, output_format="webp", **SMALL).json()
    assert as_json["status"] == "COMPLETED"
    assert Image.open(io.BytesIO(base64.b64decode(as_json["image"]))).size == (64, 64)

    # --- a failing job: InferenceFailed with the error in detail and the status body
    with pytest.raises(segmind.InferenceFailed) as failed:
        client.submit_async(SLUG, prompt="[[fault:nan]] v3ct0r style", **SMALL).wait(timeout=60, interval=0.05)
    assert "NaN" in failed.value.detail
    assert failed.value.status_body["status"] == "FAILED" and failed.value.status_body["error"] == failed.value.detail
    with pytest.raises(segmind.SegmindError) as sync_failed:
        client.run_sync(SLUG, prompt="[[fault:oom]] v3ct0r style", **SMALL)
    assert sync_failed.value.status == 500 and "out of memory" in sync_failed.value.detail

    # --- a deadline: InferenceTimeout, and the job still finishes
    slow = client.submit_async(SLUG, prompt="[[fault:sleep=0.6]] a cat", **SMALL)
    with pytest.raises(segmind.InferenceTimeout) as timed_out:
        slow.wait(timeout=0.1, interval=0.05)
    assert timed_out.value.request_id == slow.request_id and timed_out.value.elapsed_s >= 0.1
    assert slow.wait(timeout=60, interval=0.05)["status"] == "COMPLETED"

    # --- 400: every invalid parameter names the field, the value and what is allowed (strict types)
    for params, needle in [
        ({"steps": True}, "steps=True"),
        ({"seed": "1.5"}, "seed='1.5'"),
        ({"steps": 0}, "1 to 100"),
        ({"aspect_ratio": "7:5"}, "'16:9'"),
        ({"sampler_name": "euler_fast"}, "sampler_name='euler_fast'"),
        ({"lora_strength": 11}, "-10 to 10"),
        ({"width": 70, "height": 64}, "multiple of 16"),
        ({"colour": "red"}, "unknown parameter"),
    ]:
        with pytest.raises(segmind.SegmindError) as bad:
            client.submit_async(SLUG, prompt="a cat", **params)
        assert bad.value.status == 400 and needle in bad.value.detail, (params, bad.value.detail)
    with pytest.raises(segmind.SegmindError) as missing:
        client.run_sync(SLUG, steps=2)
    assert missing.value.status == 400 and "prompt is missing" in missing.value.detail

    # --- 404: another model slug
    with pytest.raises(segmind.SegmindError) as unknown:
        client.run("flux-schnell", prompt="a cat")
    assert unknown.value.status == 404 and "flux-schnell" in unknown.value.detail
    with pytest.raises(segmind.SegmindError) as unknown_sync:
        client.run_sync("flux-schnell", prompt="a cat")
    assert unknown_sync.value.status == 404
