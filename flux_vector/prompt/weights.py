"""ComfyUI's prompt-weight syntax: text -> (piece, weight) pairs. Pure Python, no tokenizer, no model.

The grammar (docs/COMFY_E2E.md sections 2.1-2.3):

* ``\\(`` and ``\\)`` are literal parentheses (the backslash disappears); no other backslash is special.
* ``(text)`` multiplies the current weight by 1.1; ``(text:1.3)`` sets it to 1.3 (the *last* colon counts, the number
  is anything Python's ``float`` reads, and it replaces the weight rather than multiplying it). Groups nest.
* An unclosed ``(`` makes the rest of its level literal text; an unmatched ``)`` stays in the text and drives the
  depth negative, so the groups after it are literal too.
* Limits (flux_vector's, not ComfyUI's; ``check_prompt`` enforces them and the server answers a 400 at submit):
  groups nest at most ``MAX_NESTING`` deep, and every weight must be finite and within ``-MAX_WEIGHT..MAX_WEIGHT``.
  Real prompts nest a handful of levels and weigh 0..2; a weight of ``inf``/``nan``/``1e308`` would only turn the
  conditioning into NaN. The parser itself never recurses, so any nesting is parsed in bounded stack.
* ``embedding:NAME`` (at the start or after a space or newline) names a textual-inversion embedding. flux_vector has
  none, so the name is dropped with a warning, as ComfyUI does when it cannot find one; the words after it stay.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

EMPHASIS = 1.1
EMBEDDING_PREFIX = "embedding:"
MAX_NESTING = 32  # groups inside groups; (((x))) is 3, real prompts stay under 10 (1.1**32 = 21x emphasis)
MAX_WEIGHT = 100.0  # |weight| of any piece, nesting included; ComfyUI workflows use 0..2, rarely a negative one
# Private-use characters stand in for escaped parentheses while the grammar is parsed.
_OPEN, _CLOSE = "\ue000", "\ue001"
_EMBEDDING_SPLIT = re.compile(f"[ \n]{EMBEDDING_PREFIX}")


class PromptError(ValueError):
    """A prompt the grammar refuses: nested deeper than ``MAX_NESTING`` or a weight that is not finite or is outside
    ``-MAX_WEIGHT..MAX_WEIGHT``. The message says which and where."""


@dataclass(frozen=True)
class WeightedPrompt:
    """The prompt as the tokenizers see it: pieces in order, each tokenized on its own with its weight."""

    pieces: tuple[tuple[str, float], ...]
    warnings: tuple[str, ...] = ()


def parse_weights(text: str) -> list[tuple[str, float]]:
    """The weighted segments of ``text`` (escapes already resolved), as ComfyUI's weight parser returns them."""
    escaped = text.replace("\\(", _OPEN).replace("\\)", _CLOSE)
    return [(_unescape(segment), weight) for segment, weight in _parse(escaped, 1.0)]


def weighted_pieces(text: str) -> WeightedPrompt:
    """Segments split at ``embedding:`` names, which are dropped (with a warning each) since none exist here.
    ``PromptError`` for a prompt over the grammar's limits (``check_prompt``)."""
    pieces: list[tuple[str, float]] = []
    warnings: list[str] = []
    for segment, weight in check_prompt(text):
        for piece in _split_embeddings(segment):
            if piece.startswith(EMBEDDING_PREFIX):
                name = piece[len(EMBEDDING_PREFIX) :].strip("\n")
                warnings.append(f"embedding:{name} does not exist, ignoring it (flux_vector loads no embeddings)")
                piece = _leftover_after_embedding(name)
                if not piece:
                    continue
            pieces.append((piece, weight))
    return WeightedPrompt(tuple(pieces), tuple(warnings))


def check_prompt(text: str) -> list[tuple[str, float]]:
    """``parse_weights(text)``, or ``PromptError`` when ``text`` nests groups deeper than ``MAX_NESTING`` or gives a
    piece a weight that is not finite or is outside ``-MAX_WEIGHT..MAX_WEIGHT``."""
    escaped = text.replace("\\(", _OPEN).replace("\\)", _CLOSE)
    segments = _parse(escaped, 1.0, max_depth=MAX_NESTING)
    for segment, weight in segments:
        if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
            shown = _unescape(segment)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            raise PromptError(
                f"the weight of {shown!r} is {weight:g}; a weight must be a finite number from {-MAX_WEIGHT:g} to "
                f"{MAX_WEIGHT:g} (nesting multiplies it by {EMPHASIS:g} a level)"
            )
    return [(_unescape(segment), weight) for segment, weight in segments]


def _parse(text: str, weight: float, max_depth: int | None = None) -> list[tuple[str, float]]:
    """ComfyUI's recursive descent, run with an explicit stack: each frame is a level's items, the next item's
    index and the level's weight. ``max_depth``: raise ``PromptError`` past that many nested groups."""
    segments: list[tuple[str, float]] = []
    stack: list[tuple[list[str], int, float]] = [(_top_level_items(text), 0, weight)]
    while stack:
        items, index, level_weight = stack[-1]
        if index == len(items):
            stack.pop()
            continue
        stack[-1] = (items, index + 1, level_weight)
        item = items[index]
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            if max_depth is not None and len(stack) > max_depth:
                raise PromptError(
                    f"groups are nested more than {max_depth} deep; at most {max_depth} levels of (...) are accepted"
                )
            inner, inner_weight = item[1:-1], level_weight * EMPHASIS
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            stack.append((_top_level_items(inner), 0, inner_weight))
        else:
            segments.append((item, level_weight))
    return segments


def _top_level_items(text: str) -> list[str]:
    """Split into text items and ``( ... )`` group items by a depth counter (unmatched parens stay in the text)."""
    items: list[str] = []
    current, depth = "", 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    items.append(current)
                current = char
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                items.append(current + char)
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        items.append(current)
    return items


def _unescape(text: str) -> str:
    return text.replace(_OPEN, "(").replace(_CLOSE, ")")


def _split_embeddings(segment: str) -> list[str]:
    """Cut before every `` embedding:`` / ``\\nembedding:`` (the separator itself is dropped); no empty pieces."""
    parts = _EMBEDDING_SPLIT.split(segment)
    pieces = parts[:1] + [EMBEDDING_PREFIX + part for part in parts[1:]]
    return [piece for piece in pieces if piece]


def _leftover_after_embedding(name: str) -> str:
    """What is tokenized after an embedding name that was not found: the words after its first word, and the
    commas the name ended with (``embedding:foo, and a dog`` leaves ``", and a dog"``)."""
    words = name.split()
    if not words:
        return ""
    first, rest = words[0], " ".join(words[1:])
    stripped = first.strip(",")
    if len(stripped) < len(first):
        return f"{first[len(stripped) :]} {rest}"
    return rest
