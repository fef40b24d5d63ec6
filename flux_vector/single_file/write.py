"""A loaded pipeline's components written as the files a ComfyUI user has (the other direction of ``load.py``):
``flux1-dev.safetensors`` (BFL names, optionally fp8, optionally with ComfyUI's prefix or as an all-in-one
checkpoint), ``clip_l.safetensors``, ``t5xxl_*.safetensors`` and ``ae.safetensors``. The tests make their files with
these from the tiny model; a user can turn a diffusers folder into ComfyUI files with them."""

from __future__ import annotations

import torch

from ..bfl import to_bfl
from .find import CLIP_PREFIXES, T5_PREFIXES, VAE_PREFIXES
from .vae_names import vae_to_ldm


def _plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights without LoRA wrappers' ``.base`` level (the weights the file had)."""
    return {k.replace(".base.", "."): v.detach() for k, v in module.state_dict().items()}


def transformer_tensors(transformer, dtype: torch.dtype | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """The transformer in BFL names; ``dtype`` float8: its linear (2-D) weights in float8, the rest in bf16 (as
    ComfyUI's fp8 checkpoints store them)."""
    config = transformer.config
    bfl = to_bfl(_plain(transformer), config.num_layers, config.num_single_layers)
    if dtype is not None:
        fp8 = dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
        bfl = {k: v.to(dtype if (not fp8 or v.dim() == 2) else torch.bfloat16) for k, v in bfl.items()}
    return {f"{prefix}{k}": v.contiguous() for k, v in bfl.items()}


def clip_l_tensors(text_encoder, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """CLIP-L under the names of ``clip_l.safetensors`` (HF CLIPTextModel's, ``text_model.`` included)."""
    sd = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in _plain(text_encoder).items()}
    return {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}


def t5_tensors(text_encoder_2, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The T5 encoder under the names of ``t5xxl_fp16.safetensors`` (the embedding stored once, as shared.weight)."""
    sd = _plain(text_encoder_2)
    sd.pop("encoder.embed_tokens.weight", None)
    return {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}


def ae_tensors(vae, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The VAE in the BFL autoencoder's (LDM) names: ``ae.safetensors``."""
    sd = vae_to_ldm(_plain(vae), len(vae.config.block_out_channels))
    return {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}


def checkpoint_tensors(transformer, text_encoder, text_encoder_2, vae, dtype=None) -> dict[str, torch.Tensor]:
    """An all-in-one checkpoint: the transformer under ``model.diffusion_model.``, the text encoders under
    ``text_encoders.clip_l.transformer.`` / ``text_encoders.t5xxl.transformer.`` and the VAE under ``vae.``."""
    out = transformer_tensors(transformer, dtype, prefix="model.diffusion_model.")
    plain = None if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype
    out |= {f"{CLIP_PREFIXES[0]}{k}": v for k, v in clip_l_tensors(text_encoder, plain).items()}
    out |= {f"{T5_PREFIXES[0]}{k}": v for k, v in t5_tensors(text_encoder_2, plain).items()}
    out |= {f"{VAE_PREFIXES[0]}{k}": v for k, v in ae_tensors(vae, plain).items()}
    return out
