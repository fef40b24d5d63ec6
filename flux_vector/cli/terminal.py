"""Text from files shown on a terminal: control characters escaped, so that a record or a file name cannot move the
cursor, retitle the window, or hide what follows (``\\x1b]0;...\\x07``, a carriage return, a bidi override)."""

from __future__ import annotations

import unicodedata

KEPT = "\n\t"  # line breaks and tabs are shown as they are
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    return char not in KEPT and (unicodedata.category(char) == "Cc" or char in _BIDI or char in "\u2028\u2029")


def printable(text: str) -> str:
    """``text`` with every control character (C0 but newline and tab, DEL, C1), bidi control and line/paragraph
    separator written as ``\\xNN`` / ``\\uNNNN``."""
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def printable_json(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``: C0 already escaped) with the rest of the control
    characters as ``\\uNNNN`` escapes: still the same JSON. They can appear only inside strings."""
    return "".join(f"\\u{ord(c):04x}" if _unsafe(c) else c for c in text)
