"""PNG files written chunk by chunk for tests: huge images that take a few hundred KB on disk (their rows compress
to nearly nothing) and are never held in memory while written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_CHANNELS = {0: 1, 2: 3}  # PNG colour type -> bytes per pixel (8-bit grey, 8-bit RGB)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_big_png(
    path: Path, width: int, height: int, *, colour_type: int = 2, text_after_pixels: dict[str, str] | None = None
) -> None:
    """A PNG of ``width`` x ``height`` black pixels (grey: ``colour_type`` 0, RGB: 2), with iTXt chunks after the
    pixel data."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + _CHANNELS[colour_type] * width)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)))
        parts = [compressor.compress(row) for _ in range(height)]
        f.write(chunk(b"IDAT", b"".join(parts) + compressor.flush()))
        for key, text in (text_after_pixels or {}).items():
            f.write(chunk(b"iTXt", key.encode() + b"\x00\x00\x00\x00\x00" + text.encode()))
        f.write(chunk(b"IEND", b""))
