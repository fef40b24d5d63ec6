"""The output formats, in one table: each format's name (the ``output_format`` parameter), media type, file extension,
the file suffixes the command line accepts, and how a PIL image is encoded into it (``encode_image``).

Everything that names a format reads it here: the request contract (``OutputFormat``), the worker and the server
(media types, extensions), the command line (``--out`` suffixes), batching (file names) and the image metadata
(where each format keeps the record). Pure Python: PIL and the SVG tracer are imported only when encoding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

OutputFormat = Literal["png", "jpeg", "webp", "svg"]
DEFAULT_OUTPUT_FORMAT: OutputFormat = "png"
# Where a format keeps the flux_vector record (``image_metadata``): PNG text chunks, XMP + EXIF, SVG <metadata>.
MetadataCarrier = Literal["png-text", "xmp-exif", "svg-metadata"]


@dataclass(frozen=True)
class Format:
    name: OutputFormat
    media_type: str
    extension: str  # of the files flux_vector writes
    suffixes: tuple[str, ...]  # the file suffixes ``--out`` accepts for it (lower case)
    pil_format: str | None  # PIL's writer; None: traced to SVG (``vectorize.image_to_svg``)
    uses_quality: bool  # the request's ``quality`` applies
    metadata: MetadataCarrier


FORMATS: dict[str, Format] = {
    "png": Format("png", "image/png", "png", (".png",), "PNG", False, "png-text"),
    "jpeg": Format("jpeg", "image/jpeg", "jpg", (".jpg", ".jpeg"), "JPEG", True, "xmp-exif"),
    "webp": Format("webp", "image/webp", "webp", (".webp",), "WEBP", True, "xmp-exif"),
    "svg": Format("svg", "image/svg+xml", "svg", (".svg",), None, False, "svg-metadata"),
}
assert tuple(get_args(OutputFormat)) == tuple(FORMATS)
# file suffix -> format name, for ``--out`` (``.jpg`` and ``.jpeg`` are both JPEG)
SUFFIXES: dict[str, str] = {suffix: f.name for f in FORMATS.values() for suffix in f.suffixes}


def output_format(name: str) -> Format:
    """The format called ``name``; ``ValueError`` naming the allowed ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"output_format={name!r} is not allowed; one of {', '.join(FORMATS)}") from None


def encode_image(
    image: Any,
    output_format_name: str,
    quality: int,
    *,
    metadata: Mapping[str, Any] | None = None,
    **vector_options: Any,
) -> bytes:
    """A PIL image as bytes of the format ``output_format_name`` (``quality`` applies to jpeg and webp;
    ``vector_options`` are ``image_to_svg``'s, for svg: the image is traced, seconds of CPU work), carrying
    ``metadata`` (an ``image_metadata`` record) when given."""
    fmt = output_format(output_format_name)
    if fmt.pil_format is None:
        from .image_metadata import svg_with_metadata
        from .vectorize import image_to_svg  # numpy, scipy, vtracer: only where images are traced

        svg = image_to_svg(image, **vector_options)
        return (svg if metadata is None else svg_with_metadata(svg, metadata)).encode("utf-8")
    from .image_metadata import save_options

    options: dict[str, Any] = {} if metadata is None else save_options(fmt.name, metadata)
    if fmt.uses_quality:
        options["quality"] = quality
    buffer = io.BytesIO()
    (image.convert("RGB") if fmt.name == "jpeg" else image).save(buffer, format=fmt.pil_format, **options)
    return buffer.getvalue()
