"""The metadata parts of an image file, read without decoding a pixel and within a bound.

An image sent from elsewhere may be anything: a 13000x13000 PNG whose pixels take 711 MB, a zTXt chunk that inflates
to gigabytes, a file of nothing but chunk headers. These readers walk the file's structure (PNG chunks, JPEG
segments, RIFF chunks), seek past pixel data, and read at most ``MAX_METADATA_BYTES`` of metadata in all (chunk
bodies, inflated text, the head of an SVG), looking at no more than ``MAX_PARTS`` chunks or segments. What lies
beyond those bounds is not read. Each reader takes a seekable binary file and never raises on its content: a
damaged structure ends the walk with what was found so far.

``read_metadata`` (``image_metadata.py``) builds on these; so can any other reader of text chunks.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

MAX_METADATA_BYTES = 16 * 1024 * 1024  # the most metadata read from one file (a flux_vector record is a few KB)
MAX_PARTS = 65_536  # the most chunks or segments looked at in one file

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def kind_of(head: bytes) -> str | None:
    """``"png"``, ``"jpeg"``, ``"webp"`` or ``"svg"`` from a file's first bytes (4096 are plenty), else None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        return "svg"
    return None


class _Budget:
    """What is left of ``MAX_METADATA_BYTES``."""

    def __init__(self, total: int = MAX_METADATA_BYTES):
        self.left = total

    def read(self, f: BinaryIO, size: int) -> bytes | None:
        """``size`` bytes, or None when that is over what is left (nothing is read then)."""
        if size > self.left:
            return None
        data = f.read(size)
        self.left -= len(data)
        return data if len(data) == size else None

    def inflate(self, data: bytes) -> bytes | None:
        """``data`` inflated (zlib), or None when damaged or larger than what is left."""
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, self.left)
        except zlib.error:
            return None
        if inflater.unconsumed_tail:
            return None
        self.left -= len(out)
        return out


# ----------------------------------------------------------------------------------------------------- PNG
def png_text_chunks(f: BinaryIO) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt) as keyword -> text (a later chunk of the same keyword wins), read
    up to IEND; the image data (IDAT) is skipped by seeking."""
    budget = _Budget()
    texts: dict[str, str] = {}
    f.seek(len(PNG_SIGNATURE))
    for _ in range(MAX_PARTS):
        header = f.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            break
        if kind not in _TEXT_CHUNKS:
            f.seek(length + 4, 1)  # the body and its CRC
            continue
        body = budget.read(f, length)
        if body is None:
            break
        f.seek(4, 1)
        parsed = _text_chunk(kind, body, budget)
        if parsed is not None:
            texts[parsed[0]] = parsed[1]
    return texts


def _text_chunk(kind: bytes, body: bytes, budget: _Budget) -> tuple[str, str] | None:
    keyword, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(keyword) <= 79:
        return None
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        text = budget.inflate(rest[1:]) if rest[:1] == b"\x00" else None
        return None if text is None else (key, text.decode("latin-1"))
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2:
        return None
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _language, sep1, rest = rest.partition(b"\x00")
    _translated, sep2, text_bytes = rest.partition(b"\x00")
    if not (sep1 and sep2):
        return None
    if compressed:
        inflated = budget.inflate(text_bytes) if method == 0 else None
        if inflated is None:
            return None
        text_bytes = inflated
    return key, text_bytes.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------- JPEG
def jpeg_xmp(f: BinaryIO) -> bytes | None:
    """The XMP packet of a JPEG (its APP1 segment), read from the segments before the image data (SOS)."""
    budget = _Budget()
    f.seek(2)
    for _ in range(MAX_PARTS):
        byte = f.read(1)
        if byte != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker or marker in (b"\xda", b"\xd9"):  # start of scan, end of image: no metadata after
            return None
        if marker == b"\x01" or b"\xd0" <= marker <= b"\xd7":  # markers without a length
            continue
        size_bytes = f.read(2)
        if len(size_bytes) < 2:
            return None
        (size,) = struct.unpack(">H", size_bytes)
        if size < 2:
            return None
        if marker != b"\xe1":
            f.seek(size - 2, 1)
            continue
        body = budget.read(f, size - 2)
        if body is None:
            return None
        if body.startswith(XMP_JPEG_PREFIX):
            return body[len(XMP_JPEG_PREFIX) :]
    return None


# ---------------------------------------------------------------------------------------------------- WebP
def webp_xmp(f: BinaryIO) -> bytes | None:
    """The ``XMP `` chunk of a WebP (RIFF) file."""
    budget = _Budget()
    f.seek(12)
    for _ in range(MAX_PARTS):
        header = f.read(8)
        if len(header) < 8:
            return None
        kind, size = struct.unpack("<4sI", header)
        if kind != b"XMP ":
            f.seek(size + (size & 1), 1)
            continue
        return budget.read(f, size)
    return None


# ----------------------------------------------------------------------------------------------------- SVG
def svg_head(f: BinaryIO) -> str:
    """The first ``MAX_METADATA_BYTES`` of an SVG as text (flux_vector writes its record first inside the root)."""
    f.seek(0)
    return f.read(MAX_METADATA_BYTES).decode("utf-8", errors="replace")


def text_between(text: str, opening: str, closing: str) -> str | None:
    """The text between the first ``opening`` and the first ``closing`` after it, or None; linear in the text's
    length (a pattern like ``opening(.*?)closing`` is quadratic over many openings without a closing)."""
    start = text.find(opening)
    if start < 0:
        return None
    start += len(opening)
    end = text.find(closing, start)
    return None if end < 0 else text[start:end]
