"""Token ids and weights -> the Flux conditioning (T5 sequence, CLIP-L pooled), as ComfyUI's CLIPTextEncode makes it.

* T5 runs on the whole padded id sequence with no attention mask (the pads change every output, so the padding
  length matters). If any weight is not 1, the empty sequence ``[end, pad, ...]`` of the same length is encoded in the
  same batch and each weighted position j becomes ``(z_j - e_j) * w + e_j``; positions of weight 1 stay untouched.
* CLIP-L: the pooled vector is the final-normed hidden state at the first end token of chunk 0, unprojected. Later
  chunks and the weights never reach it (ComfyUI computes and discards them), so only chunk 0 is run.
"""

from __future__ import annotations

import torch

from .tokens import PromptTokens


def encode_t5(text_encoder_2, tokens: PromptTokens, device: torch.device) -> torch.Tensor:
    """[1, L, D] T5 conditioning, in float32."""
    weights = torch.tensor(tokens.t5_weights, dtype=torch.float32, device=device)[None, :, None]
    weighted = weights != 1.0
    batch = [tokens.t5_ids, tokens.t5_empty_ids] if weighted.any() else [tokens.t5_ids]
    hidden = text_encoder_2(input_ids=torch.tensor(batch, device=device)).last_hidden_state.float()
    z = hidden[:1]
    if len(batch) == 2:
        empty = hidden[1:]
        z = torch.where(weighted, (z - empty) * weights + empty, z)
    return z


def encode_clip_pooled(text_encoder, tokens: PromptTokens, device: torch.device) -> torch.Tensor:
    """[1, P] CLIP-L pooled vector, in float32."""
    chunk = [token for token, _ in tokens.clip_chunks[0]]
    hidden = text_encoder(input_ids=torch.tensor([chunk], device=device)).last_hidden_state
    return hidden[:, chunk.index(tokens.clip_end_id)].float()
