"""A batch item's identity across runs and its file names: both a pure function of the row, so that a re-run finds
what an earlier run made."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

from ..output_formats import output_format
from .rows import BatchItem

SLUG_CHARS = 32


def item_key(item: BatchItem, model: str, lora: str | None) -> str:
    """The hash of everything that decides the image: the fully resolved request (defaults filled in) and the model
    and LoRA as named. A manifest line counts for a row only under the same key, so an edited row (or a changed
    command-line default, model or LoRA) is made again rather than wrongly skipped."""
    what = {"request": item.request.echo(), "model": model, "lora": lora}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def slug(prompt: str) -> str:
    """A short, file-system-safe reading of the prompt: ``"V3ct0r style, a red Fox!"`` -> ``v3ct0r-style-a-red-fox``."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", text)
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > SLUG_CHARS:
            break
        out = candidate
    return out or (words[0][:SLUG_CHARS] if words else "image")


def file_names(item: BatchItem) -> list[str]:
    """``0007-a-red-fox-s42.png`` (row's line, prompt slug, seed); ``..-s42-0.png``, ``-1``... for batch_size > 1."""
    request = item.request
    stem = f"{item.line:04d}-{slug(request.prompt)}-s{request.seed}"
    ext = output_format(request.output_format).extension
    if request.batch_size == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i}.{ext}" for i in range(request.batch_size)]
