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
  EXIF UserComment (type UNDEFINED, ``UNICODE`` character set), where those tools look.
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
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from .image_chunks import jpeg_xmp, kind_of, png_text_chunks, svg_head, text_between, webp_xmp
from .output_formats import FORMATS
from .request import GenerationRequest
from .safe_files import open_regular_for_reading

RECORD_KEY = "flux_vector"
PARAMETERS_KEY = "parameters"
_XMP_NS = "urn:flux-vector:metadata:1"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"  # the EXIF character-set code for UTF-16
_TIFF_LONG, _TIFF_UNDEFINED = 4, 7


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


# the record's keys as ``image_metadata`` writes them (a plugin pipeline's identity may add its own)
RECORD_FIELDS = ("flux_vector", "model", "lora", "batch_index", "width", "height", "request")


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
    from .version import __version__

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
    from PIL import PngImagePlugin

    record_json = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    parameters = parameters_text(record)
    if FORMATS[output_format].metadata == "png-text":
        from .comfy import COMFY_KEY, graph_for_record

        info = PngImagePlugin.PngInfo()
        info.add_itxt(RECORD_KEY, record_json)
        info.add_itxt(PARAMETERS_KEY, parameters)
        graph = graph_for_record(record)  # the API-format graph, as ComfyUI's SaveImage writes it (tEXt, ASCII)
        if graph is not None:
            info.add_text(COMFY_KEY, json.dumps(graph))
        return {"pnginfo": info}
    return {"exif": exif_user_comment(parameters), "xmp": _xmp_packet(record_json, parameters)}


def exif_user_comment(text: str) -> bytes:
    """An EXIF block (``Exif\\0\\0`` + a big-endian TIFF) holding only ``text`` as the Exif IFD's UserComment.

    Written here because Pillow types a bytes value it has no type for as BYTE (1), and readers that follow the
    EXIF standard (piexif, so sd-prompt-reader) then see a list of numbers: UserComment must be UNDEFINED (7),
    its first 8 bytes naming the character set (``UNICODE\\0``: UTF-16 in the TIFF's byte order, as A1111 writes).
    Layout: header, IFD0 (one entry: the Exif IFD pointer), the Exif IFD (one entry), then the comment's bytes."""
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    ifd0 = 8
    exif_ifd = ifd0 + _ifd_size(1)
    data = exif_ifd + _ifd_size(1)
    return (
        b"Exif\x00\x00"
        + b"MM\x00\x2a"
        + struct.pack(">I", ifd0)
        + _ifd([(_EXIF_IFD, _TIFF_LONG, 1, struct.pack(">I", exif_ifd))])
        + _ifd([(_USER_COMMENT, _TIFF_UNDEFINED, len(comment), struct.pack(">I", data))])
        + comment
    )


def _ifd_size(entries: int) -> int:
    return 2 + 12 * entries + 4  # count, 12-byte entries, the next-IFD offset (0: none)


def _ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A big-endian IFD of (tag, type, count, 4-byte value or offset) entries, no next IFD."""
    body = b"".join(struct.pack(">HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return struct.pack(">H", len(entries)) + body + struct.pack(">I", 0)


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
_SVG_OPEN, _SVG_CLOSE = f'<metadata id="{RECORD_KEY}">', "</metadata>"
_XMP_OPEN, _XMP_CLOSE = "<fluxvector:record>", "</fluxvector:record>"


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The record in an image file flux_vector wrote (a path or the file's bytes); ``NoMetadata`` when it has none,
    ``ValueError`` when it is not an image at all (``safe_files.UnsafeFile`` when the path is not a regular file).

    Reading is bounded and linear in the file's size: only the metadata parts are read (``image_chunks``: at most
    ``MAX_METADATA_BYTES``), never a pixel."""
    if isinstance(source, bytes):
        return _record_in(io.BytesIO(source))
    with open_regular_for_reading(Path(source), what="image") as f:
        return _record_in(f)


def read_text_chunks(source: str | Path | bytes) -> dict[str, str]:
    """A PNG's text chunks (keyword -> text), bounded as ``read_metadata``; empty for any other file."""
    with io.BytesIO(source) if isinstance(source, bytes) else open_regular_for_reading(Path(source)) as f:
        return png_text_chunks(f) if kind_of(f.read(4096)) == "png" else {}


def _record_in(f: BinaryIO) -> dict[str, Any]:
    kind = kind_of(f.read(4096))
    if kind == "svg":
        return _parsed(_unescaped(text_between(svg_head(f), _SVG_OPEN, _SVG_CLOSE)))
    if kind == "png":
        chunks = png_text_chunks(f)
        if RECORD_KEY in chunks:
            return _parsed(chunks[RECORD_KEY])
        return _foreign_or_none({k: chunks[k] for k in ("prompt", PARAMETERS_KEY) if k in chunks})
    if kind is None:
        raise ValueError("not an image this program can read (give a PNG, JPEG, WebP or SVG)")
    xmp = jpeg_xmp(f) if kind == "jpeg" else webp_xmp(f)
    text = xmp.decode("utf-8", errors="replace") if xmp else None
    record_text = text_between(text, _XMP_OPEN, _XMP_CLOSE) if text else None
    if record_text is None:  # another tool's JPEG/WebP: A1111/Forge keep their parameters in the EXIF UserComment
        f.seek(0)
        return _foreign_or_none(_exif_parameters_of(f))
    return _parsed(_unescaped(record_text))


def _foreign_or_none(foreign: dict[str, str]) -> dict[str, Any]:
    """Another tool's image: a ComfyUI graph or an A1111/Forge parameters text as a record; else ``NoMetadata``."""
    if not foreign:
        return _parsed(None)
    from .comfy import record_from_foreign

    return record_from_foreign(foreign)


def _exif_parameters_of(f: BinaryIO) -> dict[str, str]:
    """The EXIF ``parameters`` of a JPEG/WebP: Pillow reads the header segments only (no pixel is decoded)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as image:
                return _exif_parameters(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return {}


def _unescaped(text: str | None) -> str | None:
    return None if text is None else html.unescape(text)


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
    except (ValueError, RecursionError) as exc:  # a number over 4300 digits; nesting deeper than Python recurses
        reason = "nested too deep" if isinstance(exc, RecursionError) else "a number too long"
        raise NoMetadata(f"the image's flux_vector record is damaged: {reason}") from None
    if not isinstance(record, dict) or not isinstance(record.get("request"), dict):
        raise NoMetadata("the image's flux_vector record has no request in it")
    return record
