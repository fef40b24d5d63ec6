"""An image another tool made, as the record ``image_metadata.read_metadata`` returns for flux_vector's own: from
ComfyUI's ``prompt`` chunk (exact: the graph) or else an A1111/Forge ``parameters`` text.

The record has ``source`` ("ComfyUI" / "parameters"), the request echoed with its defaults, ``width``/``height``,
``model``/``lora`` as flux_vector names them when the file names are ones it knows (``names.py``; else None, so the
command line asks for ``--model``/``--lora``) and the names the image gives (``model_file``, ``lora_file``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..models import DEFAULT_LORA, DEFAULT_MODEL
from ..request import RequestError, parse_request
from .a1111 import ParametersRefused, parse_parameters
from .names import lora_for_file, model_for_unet
from .read import read_graph

COMFY_KEY = "prompt"  # the PNG text chunk ComfyUI's SaveImage writes the API-format graph in
PARAMETERS_KEY = "parameters"
SOURCE_COMFY, SOURCE_PARAMETERS = "ComfyUI", "parameters"


class ForeignMetadataError(ValueError):
    """Another tool's metadata that is damaged or cannot be turned into a request (one line)."""


def record_from_foreign(texts: Mapping[str, str]) -> dict[str, Any]:
    """The record of an image carrying a ComfyUI graph (``texts["prompt"]``) or a ``parameters`` text. Raises
    ``read.Unreproducible`` for a graph flux_vector cannot reproduce, ``ForeignMetadataError`` for damaged data."""
    graph: Any = None
    if COMFY_KEY in texts:
        try:
            graph = json.loads(texts[COMFY_KEY])
        except json.JSONDecodeError as exc:
            if PARAMETERS_KEY not in texts:  # another tool's "prompt" text: its parameters, when it has them
                raise ForeignMetadataError(
                    f"the image's ComfyUI graph (PNG chunk 'prompt') is damaged: {exc}"
                ) from None
    if graph is not None and (isinstance(graph, dict) or PARAMETERS_KEY not in texts):
        image = read_graph(graph)
        model = model_for_unet(image.unet_name)
        return _record(
            SOURCE_COMFY,
            image.request.echo(),
            model=model,
            model_file=image.unet_name,
            lora=(lora_for_file(image.lora_name) if image.lora_name else "none"),
            lora_file=image.lora_name,
        )
    try:
        parsed = parse_parameters(texts[PARAMETERS_KEY])
        request = parse_request(parsed.params)
    except (ParametersRefused, RequestError) as exc:
        raise ForeignMetadataError(str(exc)) from None
    model = parsed.model
    known_model = DEFAULT_MODEL if model is not None and model.split(".")[0] in ("flux1-dev", DEFAULT_MODEL) else None
    if model == DEFAULT_MODEL or model in ("demo", "tiny"):
        known_model = model
    lora = parsed.lora
    known_lora = (
        "none" if lora is None else (DEFAULT_LORA if lora == DEFAULT_LORA else lora_for_file(f"{lora}.safetensors"))
    )
    return _record(
        SOURCE_PARAMETERS, request.echo(), model=known_model, model_file=model, lora=known_lora, lora_file=lora
    )


def _record(source: str, request: dict[str, Any], **names: Any) -> dict[str, Any]:
    parsed = parse_request(request)
    width, height = parsed.size
    return {"source": source, **names, "width": width, "height": height, "request": request}
