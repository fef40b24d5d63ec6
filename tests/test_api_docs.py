"""``/docs`` renders the whole API in a real browser, offline (issue 25, point 1).

The packaged Swagger UI (``swagger-ui-bundle``: Swagger UI 4.15) reads OpenAPI 3.0 only, so ``/docs`` reads the
3.0.3 rewrite of the app's 3.1 schema (``server/docs.py``). The browser test drives Debian's ``chromium`` through
``playwright`` as tests/test_playground.py does (skipped without them, except under CI), with every request that
leaves the server's origin refused and recorded, and checks that every operation of ``/openapi.json`` is drawn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from flux_vector.jobs.sqlite_store import SQLiteJobStore
from flux_vector.server.app import create_app
from flux_vector.server.docs import DOCS_SCHEMA_PATH, openapi_3_0
from tests.server_process import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The real app on a loopback port (API only: /docs needs no model), served by uvicorn on a thread."""
    store = SQLiteJobStore(tmp_path_factory.mktemp("docs") / "jobs.sqlite3")
    port = free_port()
    app = create_app(store, None, log=lambda message: None)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield url
    uv.should_exit = True
    thread.join(10)
    store.close()


def operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def test_the_docs_schema_is_openapi_3_0_with_every_operation(server):
    full = httpx.get(server + "/openapi.json").json()
    docs = httpx.get(server + DOCS_SCHEMA_PATH).json()
    assert full["openapi"].startswith("3.1") and docs["openapi"] == "3.0.3"
    assert operations(docs) == operations(full) and len(operations(full)) >= 7
    text = str(docs)
    assert "'type': 'null'" not in text and "'examples': [" not in text  # no 3.1-only schema forms left
    body = docs["paths"]["/v2/{model_slug}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    width = body["properties"]["width"]
    assert width["type"] == "integer" and width["nullable"] is True and width["maximum"] == 4096
    assert "example" in body["properties"]["prompt"]


def test_openapi_3_0_rewrites_the_3_1_schema_forms():
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "license": {"name": "MIT", "identifier": "MIT"}},
        "webhooks": {},
        "paths": {},
        "components": {
            "schemas": {
                "A": {
                    "type": "object",
                    "properties": {
                        "ref": {"anyOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
                        "pair": {"type": ["string", "null"]},
                        "fixed": {"const": "x"},
                        "low": {"type": "number", "exclusiveMinimum": 0},
                        "list": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                    },
                }
            }
        },
    }
    result = openapi_3_0(document)
    assert document["openapi"] == "3.1.0" and "webhooks" in document  # the input is untouched
    assert result["openapi"] == "3.0.3" and "webhooks" not in result and "identifier" not in result["info"]["license"]
    props = result["components"]["schemas"]["A"]["properties"]
    assert props["ref"] == {"anyOf": [{"$ref": "#/components/schemas/B"}], "nullable": True}
    assert props["pair"] == {"type": "string", "nullable": True}
    assert props["fixed"] == {"enum": ["x"]}
    assert props["low"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert props["list"]["items"] == {"type": "integer", "nullable": True}


def test_docs_render_every_operation_in_a_browser_offline(server, browser):
    expected = operations(httpx.get(server + "/openapi.json").json())
    foreign: list[str] = []
    page = browser.new_page()
    page.set_default_timeout(120_000)  # a loaded 2-core machine parses the 1.4 MB bundle slowly
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def only_this_server(route) -> None:
        if route.request.url.startswith(server + "/"):
            route.continue_()
        else:  # a CDN, a font, a validator badge: nothing may leave the machine
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock")
    page_text = page.inner_text("body")
    drawn = {
        (
            block.query_selector(".opblock-summary-method").inner_text().strip(),
            block.query_selector(".opblock-summary-path").get_attribute("data-path"),
        )
        for block in page.query_selector_all(".opblock")
    }
    # open the submit operation: its request body schema (the parameter contract) is drawn
    page.click("#operations-default-submit_async_v2__model_slug__post .opblock-summary")
    page.wait_for_selector("#operations-default-submit_async_v2__model_slug__post .opblock-body")
    # the body's schema example is drawn after the block opens: wait for it (a failure times out here)
    page.wait_for_function(
        "() => (document.querySelector('#operations-default-submit_async_v2__model_slug__post')"
        " ?.innerText || '').includes('lora_strength')"
    )
    opened = page.inner_text("#operations-default-submit_async_v2__model_slug__post")
    assert "Unable to render this definition" not in page_text
    assert not errors, errors
    assert drawn == expected, (drawn, expected)
    assert "prompt" in opened and "aspect_ratio" in opened and "lora_strength" in opened
    assert foreign == []
