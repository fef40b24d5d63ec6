"""Prompt text -> Flux conditioning, exactly as ComfyUI does it (docs/COMFY_E2E.md sections 2-3).

``weights`` parses the weight syntax (pure Python), ``tokens`` turns the weighted pieces into CLIP-L chunks and the
T5 sequence with the model folder's tokenizers, ``encode`` runs the text encoders and applies the weights.
"""

from .encode import encode_clip_pooled, encode_t5
from .tokens import CLIP_CHUNK, T5_MIN_LENGTH, PromptTokens, clip_clean, tokenize_prompt
from .weights import MAX_NESTING, MAX_WEIGHT, PromptError, WeightedPrompt, check_prompt, parse_weights, weighted_pieces

__all__ = [
    "CLIP_CHUNK",
    "MAX_NESTING",
    "MAX_WEIGHT",
    "T5_MIN_LENGTH",
    "PromptError",
    "PromptTokens",
    "WeightedPrompt",
    "check_prompt",
    "clip_clean",
    "encode_clip_pooled",
    "encode_t5",
    "parse_weights",
    "tokenize_prompt",
    "weighted_pieces",
]
