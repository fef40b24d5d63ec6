"""The playground page at ``/``: type a prompt, generate, look at the picture, copy the ``segmind.run(...)`` call.

One self-contained HTML file (``static/playground.html``: inline CSS and JS, no build step, no external assets) that
talks to the server through the public v2 API like any other client. Its form is built in the browser from
``contract()``, which is read from ``GenerationRequest`` (choices, defaults, bounds, the ``allowed()`` text), so the
page can never offer a value or a default that the contract does not; the JSON is embedded into the page.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Literal, get_args

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from ..models import DEMO_EXAMPLE_PROMPT, DEMO_MODEL
from ..request import ASPECT_RATIOS, EXAMPLE_PROMPT, HOSTED_FIELDS, SLUG, VECTOR_OPTIONS, GenerationRequest, allowed

# The form: the hosted fields, then the output format and the SVG options (sent only when output_format is svg).
FORM_FIELDS = (*HOSTED_FIELDS, "output_format", *VECTOR_OPTIONS)

PLACEHOLDER = "/*__CONTRACT__*/null"
# The page talks to this origin only: no CDN, no fonts, no analytics.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize().replace("Lora", "LoRA")


def _text(value: Any) -> str:
    """A default as the form shows it (floats keep their point: ``1.0``, not ``1``)."""
    return "" if value is None else str(value)


def field_spec(name: str) -> dict[str, Any]:
    """One field of the contract as the page needs it. Bounds are strings: 2**64 - 1 is beyond a JS number."""
    info = GenerationRequest.model_fields[name]
    annotation = info.annotation
    bounds = {type(m).__name__: m for m in info.metadata}
    spec: dict[str, Any] = {
        "name": name,
        "label": _label(name),
        "description": info.description or "",
        "allowed": allowed(name),
        "required": info.is_required(),
    }
    if getattr(annotation, "__origin__", None) is Literal:
        spec.update(kind="choice", choices=list(get_args(annotation)))
    elif annotation is int or annotation is float:
        spec.update(kind="integer" if annotation is int else "number", step="1" if annotation is int else "0.05")
        if "Ge" in bounds:
            spec["min"] = str(bounds["Ge"].ge)
        if "Le" in bounds:
            spec["max"] = str(bounds["Le"].le)
    elif annotation is bool:
        spec.update(kind="boolean", choices=["false", "true"])
    elif annotation is str:
        spec["kind"] = "text"
    else:
        raise TypeError(f"the playground has no input for {name}: {annotation!r}")
    if info.is_required():
        spec["default"] = None
        spec["value"] = info.examples[0] if info.examples else ""
    else:
        spec["default"] = info.default
        spec["value"] = str(info.default).lower() if annotation is bool else _text(info.default)
    if name in VECTOR_OPTIONS:
        spec["svg_only"] = True
    if name not in HOSTED_FIELDS:  # a local extension: sent only when changed, so a default form is a hosted call
        spec["extension"] = True
    if name == "aspect_ratio":
        spec["option_labels"] = {ratio: f"{ratio}  ({w}×{h})" for ratio, (w, h) in ASPECT_RATIOS.items()}
    return spec


def contract(*, slug: str = SLUG, auth: bool = False, model_name: str = "") -> dict[str, Any]:
    """What the page's JS builds its form from: the hosted fields, the size table, the slug, whether a key is due,
    and the model the server runs ("" on an API-only process: the workers elsewhere decide; "tiny": the page shows
    that its images are noise from the random-weight demo, not a bug; "demo": that it is the shipped toy model,
    not FLUX.1-dev)."""
    return {
        "slug": slug,
        "auth": auth,
        "model": model_name,
        "demo_model": model_name == "tiny",
        "shipped_demo_model": model_name == "demo",
        "fields": [field_spec(name) for name in FORM_FIELDS],
        "sizes": {ratio: list(size) for ratio, size in ASPECT_RATIOS.items()},
        "example_prompt": DEMO_EXAMPLE_PROMPT if model_name == DEMO_MODEL else EXAMPLE_PROMPT,
    }


@cache
def _template() -> str:
    text = resources.files(__package__).joinpath("static", "playground.html").read_text("utf-8")
    if PLACEHOLDER not in text:
        raise RuntimeError(f"static/playground.html lacks the {PLACEHOLDER} placeholder")
    return text


def render(*, slug: str = SLUG, auth: bool = False, model_name: str = "") -> str:
    """The page with the contract embedded (``<`` escaped, so no value can close the script element)."""
    data = json.dumps(contract(slug=slug, auth=auth, model_name=model_name), ensure_ascii=False).replace("<", "\\u003c")
    return _template().replace(PLACEHOLDER, data, 1)


def add_playground(app: FastAPI, *, slug: str = SLUG, auth: bool = False, model_name: str = "") -> None:
    """Serve the page at ``GET /`` (no API key needed to load it; its API calls send the key the user enters)."""
    page = render(slug=slug, auth=auth, model_name=model_name)
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)
