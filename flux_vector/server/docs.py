"""``/docs``: Swagger UI from the installed ``swagger-ui-bundle`` files (no CDN), and the schema it can read.

The app describes itself as OpenAPI 3.1 (``/openapi.json``, what FastAPI writes). ``swagger-ui-bundle`` 1.1.0, the
newest on PyPI, ships Swagger UI 4.15, which refuses 3.1 ("Unable to render this definition"). So ``/docs`` reads
``/openapi-3.0.json``: the same document written as OpenAPI 3.0.3 by ``openapi_3_0``, which rewrites the few
JSON Schema 2020-12 forms FastAPI emits into their 3.0 equivalents. ``/openapi.json`` stays 3.1 for other tools.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

from .errors import error_response

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_SCHEMA_PATH = "/openapi-3.0.json"
_DOCS_FILES = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flux_vector API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script><script src="/docs/assets/init.js"></script></body></html>
"""
_DOCS_INIT = f'window.ui = SwaggerUIBundle({{url: "{DOCS_SCHEMA_PATH}", dom_id: "#swagger-ui"}});\n'
_SECURITY_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"}
# 3.1 root fields 3.0 does not have
_ROOT_ONLY_IN_3_1 = ("webhooks", "jsonSchemaDialect")


def openapi_3_0(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (OpenAPI 3.1) as OpenAPI 3.0.3: a new dict, the input untouched.

    Rewritten in every Schema Object: ``{"anyOf": [X, {"type": "null"}]}`` -> X with ``nullable: true``; a ``type``
    list -> one type (+ ``nullable``); ``const`` -> a one-value ``enum``; ``examples: [...]`` -> ``example``;
    numeric ``exclusiveMinimum``/``exclusiveMaximum`` -> ``minimum``/``maximum`` with the boolean form."""
    result = copy.deepcopy(document)
    result["openapi"] = "3.0.3"
    for key in _ROOT_ONLY_IN_3_1:
        result.pop(key, None)
    result.get("info", {}).get("license", {}).pop("identifier", None)
    for schema in _schemas(result):
        _downgrade_schema(schema)
    return result


def _schemas(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every top-level Schema Object: components, parameters, request bodies and responses (nested ones are walked
    by ``_downgrade_schema``)."""
    found = list(document.get("components", {}).get("schemas", {}).values())
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            found += [p["schema"] for p in operation.get("parameters", []) if "schema" in p]
            bodies = [operation.get("requestBody", {}), *operation.get("responses", {}).values()]
            for body in bodies:
                found += [media["schema"] for media in body.get("content", {}).values() if "schema" in media]
    return found


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null" and len(schema) == 1


def _downgrade_schema(schema: dict[str, Any]) -> None:
    """One Schema Object and everything below it, in place."""
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and any(_is_null(option) for option in options):
            rest = [option for option in options if not _is_null(option)]
            schema["nullable"] = True
            if len(rest) == 1 and "$ref" not in rest[0]:
                del schema[key]
                for name, value in rest[0].items():
                    schema.setdefault(name, value)
            else:
                schema[key] = rest
    kind = schema.get("type")
    if isinstance(kind, list):
        concrete = [name for name in kind if name != "null"]
        if len(concrete) < len(kind):
            schema["nullable"] = True
        if len(concrete) == 1:
            schema["type"] = concrete[0]
        else:
            del schema["type"]
            schema["anyOf"] = [{"type": name} for name in concrete]
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if isinstance(schema.get("examples"), list):
        examples = schema.pop("examples")
        if examples:
            schema.setdefault("example", examples[0])
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(schema.get(exclusive), int | float) and not isinstance(schema[exclusive], bool):
            schema[bound] = schema.pop(exclusive)
            schema[exclusive] = True
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        for child in (schema.get(key) or {}).values():
            if isinstance(child, dict):
                _downgrade_schema(child)
    for key in ("items", "additionalProperties", "not", "contains", "propertyNames"):
        if isinstance(schema.get(key), dict):
            _downgrade_schema(schema[key])
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for child in schema.get(key) or []:
            if isinstance(child, dict):
                _downgrade_schema(child)


def add_local_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI from the installed ``swagger-ui-bundle`` files) and the 3.0 schema it reads."""
    import swagger_ui_bundle

    folder = Path(swagger_ui_bundle.swagger_ui_path)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE, headers=_SECURITY_HEADERS)

    @app.get(DOCS_SCHEMA_PATH, include_in_schema=False)
    def docs_schema() -> JSONResponse:
        return JSONResponse(openapi_3_0(app.openapi()))

    @app.get("/docs/assets/init.js", include_in_schema=False)
    def docs_init() -> PlainTextResponse:
        return PlainTextResponse(_DOCS_INIT, media_type="text/javascript", headers=_SECURITY_HEADERS)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in _DOCS_FILES:
            return error_response(404, f"no docs asset {name!r}")
        return FileResponse(folder / name, media_type=_DOCS_FILES[name], headers=_SECURITY_HEADERS)
