"""How an image was made, written into the file itself and read back (``flux-vector info``, ``generate --like``).

The record is one JSON object::

    {"flux_vector": "0.1.0", "model": "black-forest-labs/FLUX.1-dev", "lora": "...", "lora_file": "...",
     "lora_hash": "...", "batch_index": 0, "width": 832, "height": 1216,
     "request": {<every request parameter, defaults filled in>}}

and a ``parameters`` text in the form other tools write and read (AUTOMATIC1111, Forge, ComfyUI loaders)::

    a red star
    Steps: 20, Sampler: euler, Schedule type: simple, CFG scale: 1.0, Distilled CFG Scale: 3.5, Seed: 1, ...

Where each format keeps them:

- PNG: text chunks ``flux_vector`` (the JSON), ``parameters`` and ``prompt``: the ComfyUI API-format graph that makes
  the same image (``comfy.graph_for``; ComfyUI loads it when the PNG is dropped on its page).
- JPEG and WebP: an XMP packet with both (``fluxvector:record`` holds the JSON) and the ``parameters`` text in the
  EXIF UserComment, where those tools look.
- SVG: ``<metadata id="flux_vector">`` with the JSON, XML-escaped.

Reading also accepts other tools' images (``comfy/record.py``): a ComfyUI PNG's ``prompt`` graph, else an
A1111/Forge ``parameters`` text (PNG chunk or EXIF UserComment).

Nothing private goes in: the request's own fields, the model and LoRA names (a local path is reduced to its last
component), the version. No key, no folder.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .request import GenerationRequest

RECORD_KEY = "flux_vector"
PARAMETERS_KEY = "parameters"
_XMP_NS = "urn:flux-vector:metadata:1"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"


@runtime_checkable
class IdentifiedPipeline(Protocol):
    """A pipeline that names what it runs (``FluxVectorPipeline.identity``), for the record in every image file."""

    @property
    def identity(self) -> dict[str, Any]: ...


def identity_of(pipe: Any) -> dict[str, Any]:
    """``pipe.identity``, or nothing for a plugin pipeline that does not name itself."""
    return dict(pipe.identity) if isinstance(pipe, IdentifiedPipeline) else {}


class NoMetadata(ValueError):
    """The file carries no flux_vector record (not made by flux_vector, or its metadata was stripped)."""


def public_name(name: str | Path | None) -> str | None:
    """A model or LoRA name fit to publish: hub ids and built-in names as they are, a local path as its last
    component (``/home/me/models/flux-dev`` -> ``flux-dev``)."""
    if name is None:
        return None
    text = str(name)
    looks_local = Path(text).expanduser().exists() or text.startswith(("/", "~", ".")) or "\\" in text
    return Path(text).name if looks_local else text


def image_metadata(
    request: GenerationRequest,
    identity: Mapping[str, Any],
    *,
    batch_index: int = 0,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The record of one image: ``identity`` (``FluxVectorPipeline.identity``: model, lora, version) and the request
    echoed with its defaults; ``batch_index`` is the image's place in its request's batch; ``size``: the image's own
    (width, height) when the model draws at sizes of its own (the demo model), else the request's."""
    from . import __version__

    record: dict[str, Any] = {"flux_vector": __version__}
    record.update({k: v for k, v in identity.items() if k != "flux_vector"})
    record["batch_index"] = batch_index
    record["width"], record["height"] = size or request.size
    record["request"] = request.echo()
    return record


def parameters_text(record: Mapping[str, Any]) -> str:
    """The record as the ``parameters`` text of AUTOMATIC1111/Forge (prompt, negative, then ``Key: value`` pairs)."""
    request = record.get("request", {})
    foreign = bool(record.get("source"))  # another tool's image: the file names it gives
    lora = record.get("lora_file") if foreign else record.get("lora")
    lora = None if lora == "none" else lora
    lines = [str(request.get("prompt", ""))]
    if request.get("negative_prompt"):
        lines.append(f"Negative prompt: {request['negative_prompt']}")
    width, height = record.get("width"), record.get("height")
    pairs = {
        "Steps": request.get("steps"),
        "Sampler": request.get("sampler_name"),
        "Schedule type": request.get("scheduler"),
        "CFG scale": request.get("cfg"),
        "Distilled CFG Scale": request.get("guidance"),
        "Seed": request.get("seed"),
        "Size": f"{width}x{height}" if width else None,
        "Model hash": record.get("model_hash"),
        "Model": record.get("model_file") if foreign else record.get("model"),
        "Lora": lora,
        "Lora strength": request.get("lora_strength") if lora else None,
        "Lora strength clip": request.get("lora_strength_clip") if lora else None,
        "Lora hashes": f"{Path(record['lora_file']).stem}: {record['lora_hash']}" if record.get("lora_hash") else None,
        "Batch size": request.get("batch_size") if request.get("batch_size", 1) != 1 else None,
        "Batch pos": record.get("batch_index") if request.get("batch_size", 1) != 1 else None,
        "Version": f"flux_vector {record['flux_vector']}" if record.get("flux_vector") else None,
        "Source": record.get("source"),  # another tool's image (comfy/record.py)
    }
    lines.append(", ".join(f"{key}: {_quoted(value)}" for key, value in pairs.items() if value is not None))
    return "\n".join(lines)


def _quoted(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


# ----------------------------------------------------------------------------------------------- writing
def save_options(output_format: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The extra ``PIL.Image.save`` keywords that embed ``record`` in a png, jpeg or webp file."""
    from PIL import Image, PngImagePlugin

    record_json = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    parameters = parameters_text(record)
    if output_format == "png":
        from .comfy import COMFY_KEY, graph_for_record

        info = PngImagePlugin.PngInfo()
        info.add_itxt(RECORD_KEY, record_json)
        info.add_itxt(PARAMETERS_KEY, parameters)
        graph = graph_for_record(record)  # the API-format graph, as ComfyUI's SaveImage writes it (tEXt, ASCII)
        if graph is not None:
            info.add_text(COMFY_KEY, json.dumps(graph))
        return {"pnginfo": info}
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + parameters.encode("utf-16-be")
    return {"exif": exif.tobytes(), "xmp": _xmp_packet(record_json, parameters)}


def _xmp_packet(record_json: str, parameters: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:fluxvector="{_XMP_NS}">'
        f"<fluxvector:record>{html.escape(record_json, quote=False)}</fluxvector:record>"
        f"<fluxvector:parameters>{html.escape(parameters, quote=False)}</fluxvector:parameters>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def svg_with_metadata(svg: str, record: Mapping[str, Any]) -> str:
    """``svg`` (flux_vector's own: one ``<svg ...>`` root) with the record as its first child."""
    record_json = html.escape(json.dumps(record, ensure_ascii=False, separators=(",", ":")), quote=False)
    root_end = svg.index(">", svg.index("<svg")) + 1
    return f'{svg[:root_end]}<metadata id="{RECORD_KEY}">{record_json}</metadata>{svg[root_end:]}'


# ----------------------------------------------------------------------------------------------- reading
_SVG_RECORD = re.compile(rf'<metadata id="{RECORD_KEY}">(.*?)</metadata>', re.DOTALL)
_XMP_RECORD = re.compile(r"<fluxvector:record>(.*?)</fluxvector:record>", re.DOTALL)


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The record in an image file flux_vector wrote (a path or the file's bytes); ``NoMetadata`` when it has none,
    ``ValueError`` when it is not an image at all."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    head = data[:4096].lstrip()
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        match = _SVG_RECORD.search(data.decode("utf-8", errors="replace"))
        return _parsed(html.unescape(match.group(1)) if match else None)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            text = getattr(image, "text", None) or {}  # PNG text chunks
            if RECORD_KEY in text:
                return _parsed(text[RECORD_KEY])
            xmp = image.info.get("xmp")
            foreign = {k: text[k] for k in ("prompt", PARAMETERS_KEY) if k in text} or _exif_parameters(image)
    except UnidentifiedImageError:
        raise ValueError("not an image this program can read (give a PNG, JPEG, WebP or SVG)") from None
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", errors="replace")
    match = _XMP_RECORD.search(xmp) if xmp else None
    if match is None and foreign:  # another tool's image: a ComfyUI graph or an A1111/Forge parameters text
        from .comfy import record_from_foreign

        return record_from_foreign(foreign)
    return _parsed(html.unescape(match.group(1)) if match else None)


def _exif_parameters(image: Any) -> dict[str, str]:
    """The ``parameters`` text A1111/Forge keep in a JPEG/WebP's EXIF UserComment (none: empty)."""
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if not isinstance(comment, bytes) or len(comment) <= 8:
        return {}
    prefix, body = comment[:8], comment[8:]
    if prefix == _UNICODE_PREFIX:
        # the standard is big-endian; some tools write little-endian: keep the reading that is mostly ASCII
        readings = [body.decode(codec, errors="replace") for codec in ("utf-16-be", "utf-16-le")]
        text = max(readings, key=lambda t: sum(c < "\x80" for c in t))
    elif prefix.startswith(b"ASCII"):
        text = body.decode("ascii", errors="replace")
    else:
        return {}
    text = text.rstrip("\x00")
    return {PARAMETERS_KEY: text} if "Steps: " in text else {}


def _parsed(record_json: str | None) -> dict[str, Any]:
    if record_json is None:
        raise NoMetadata(
            "the image carries no flux_vector record, ComfyUI graph or parameters text (not made by flux_vector, "
            "ComfyUI or A1111/Forge, or its metadata was stripped)"
        )
    try:
        record = json.loads(record_json)
    except json.JSONDecodeError as exc:
        raise NoMetadata(f"the image's flux_vector record is damaged: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("request"), dict):
        raise NoMetadata("the image's flux_vector record has no request in it")
    return record
