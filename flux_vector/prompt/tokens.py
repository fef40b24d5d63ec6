"""Weighted pieces -> token ids and weights for CLIP-L (77-token chunks) and T5 (one sequence), as ComfyUI packs them.

No model code: the tokenizers are the model folder's own (``tokenizer/`` and ``tokenizer_2/``). Each piece is
tokenized on its own, its start/end ids are dropped, and every token carries the piece's weight (docs/COMFY_E2E.md
sections 2.4-2.5).

* CLIP-L: chunks of 77 = start + up to 75 tokens + end, padded with the end id. A piece that does not fit the current
  chunk is split across chunks when it has 8 tokens or more; a shorter one closes the chunk and moves whole.
* T5: all pieces, then the end id, padded with the pad id to at least 256 tokens. Never truncated.

ComfyUI's CLIP tokenizer is transformers 4's Python ``CLIPTokenizer`` without ftfy, which runs a BERT-style cleaner
before the CLIP regex; ``clip_clean`` is that cleaner, so the folder's fast tokenizer gives the same ids for CJK text
and for control or zero-width characters as well.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from ..request import T5_MIN_TOKENS
from .weights import WeightedPrompt

CLIP_CHUNK = 77
LONG_PIECE = 8  # pieces of at least this many tokens are split across CLIP chunks; shorter ones move whole
T5_MIN_LENGTH = T5_MIN_TOKENS  # defined with the work budget that prices it

Token = tuple[int, float]


@dataclass(frozen=True)
class PromptTokens:
    clip_chunks: tuple[tuple[Token, ...], ...]  # each CLIP_CHUNK long
    t5: tuple[Token, ...]  # at least T5_MIN_LENGTH long
    clip_end_id: int
    t5_end_id: int
    t5_pad_id: int
    warnings: tuple[str, ...] = ()

    @property
    def t5_ids(self) -> list[int]:
        return [token for token, _ in self.t5]

    @property
    def t5_weights(self) -> list[float]:
        return [weight for _, weight in self.t5]

    @property
    def t5_empty_ids(self) -> list[int]:
        """The empty prompt at this sequence's length: what weights interpolate towards."""
        return [self.t5_end_id] + [self.t5_pad_id] * (len(self.t5) - 1)


def tokenize_prompt(prompt: WeightedPrompt, clip_tokenizer, t5_tokenizer) -> PromptTokens:
    pieces = [text for text, _ in prompt.pieces]
    weights = [weight for _, weight in prompt.pieces]
    clip_ids = _piece_ids(clip_tokenizer, [clip_clean(p) for p in pieces], strip_start=True)
    t5_ids = _piece_ids(t5_tokenizer, pieces, strip_start=False)
    clip_groups = [[(t, w) for t in ids] for ids, w in zip(clip_ids, weights, strict=True)]
    t5_groups = [[(t, w) for t in ids] for ids, w in zip(t5_ids, weights, strict=True)]
    return PromptTokens(
        clip_chunks=pack_clip(clip_groups, clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id),
        t5=pack_t5(t5_groups, t5_tokenizer.eos_token_id, t5_tokenizer.pad_token_id),
        clip_end_id=clip_tokenizer.eos_token_id,
        t5_end_id=t5_tokenizer.eos_token_id,
        t5_pad_id=t5_tokenizer.pad_token_id,
        warnings=prompt.warnings,
    )


def _piece_ids(tokenizer, pieces: list[str], *, strip_start: bool) -> list[list[int]]:
    """Each piece's ids without the tokenizer's own start (CLIP) and end tokens."""
    if not pieces:
        return []
    start = 1 if strip_start else 0
    return [ids[start:-1] for ids in tokenizer(pieces, verbose=False)["input_ids"]]


def pack_clip(groups: list[list[Token]], start_id: int, end_id: int) -> tuple[tuple[Token, ...], ...]:
    """ComfyUI's CLIP packing; the end id is also the pad id (CLIP-L pads with its end token)."""
    room = CLIP_CHUNK - 1  # tokens a chunk may hold before its end token
    chunks: list[list[Token]] = []
    chunk: list[Token] = [(start_id, 1.0)]
    for group in groups:
        is_long = len(group) >= LONG_PIECE
        while group:
            if len(chunk) + len(group) <= room:
                chunk += group
                break
            if is_long:
                free = room - len(chunk)
                chunk += group[:free]
                group = group[free:]
            chunks.append(_close_chunk(chunk, end_id))
            chunk = [(start_id, 1.0)]
    chunks.append(_close_chunk(chunk, end_id))
    return tuple(tuple(c) for c in chunks)


def _close_chunk(chunk: list[Token], end_id: int) -> list[Token]:
    return chunk + [(end_id, 1.0)] * (CLIP_CHUNK - len(chunk))


def pack_t5(groups: list[list[Token]], end_id: int, pad_id: int) -> tuple[Token, ...]:
    tokens = [token for group in groups for token in group] + [(end_id, 1.0)]
    tokens += [(pad_id, 1.0)] * (T5_MIN_LENGTH - len(tokens))
    return tuple(tokens)


def clip_clean(text: str) -> str:
    """The cleaner transformers 4's CLIPTokenizer runs without ftfy (a BERT basic tokenizer that keeps accents and
    punctuation): drop control/format characters, NUL and U+FFFD, turn whitespace into spaces, put spaces around CJK
    ideographs, NFC, lowercase, and join the words with single spaces."""
    kept = []
    for char in text:
        if char in "\x00\ufffd" or _is_control(char):
            continue
        if _is_whitespace(char):
            kept.append(" ")
        elif _is_cjk(ord(char)):
            kept.append(f" {char} ")
        else:
            kept.append(char)
    words = unicodedata.normalize("NFC", "".join(kept)).split()
    return " ".join(word.lower() for word in words)


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(codepoint: int) -> bool:
    return any(lo <= codepoint <= hi for lo, hi in _CJK_RANGES)
