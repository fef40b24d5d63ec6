"""The tiny checkpoint's components, loaded as ``FluxVectorPipeline.from_pretrained`` loads them, for tests that build
a pipeline with a placement ``from_pretrained`` would refuse on the CPU (an offload mode, a forced fast plan)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_parts(tiny_dir: Path, dtype: torch.dtype = torch.float32) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    return dict(
        transformer=FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer", dtype=dtype).eval(),
        vae=AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae", dtype=dtype).eval(),
        text_encoder=CLIPTextModel.from_pretrained(tiny_dir, subfolder="text_encoder", dtype=dtype).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tiny_dir, subfolder="tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(tiny_dir, subfolder="text_encoder_2", dtype=dtype).eval(),
        tokenizer_2=T5TokenizerFast.from_pretrained(tiny_dir, subfolder="tokenizer_2"),
    )


def tiny_lora(tiny_dir: Path, parts: dict, strength: float = 1.0):
    from flux_vector.lora import apply_lora, load_lora_file, parse_lora
    from flux_vector.tiny import KOHYA_LORA

    patches = parse_lora(load_lora_file(tiny_dir / KOHYA_LORA), parts["transformer"], parts["text_encoder"])
    return apply_lora(patches, strength=strength)


def group_hooks(module: torch.nn.Module) -> dict[str, object]:
    """Submodule name -> the diffusers group-offload hook on it."""
    hooks = {}
    for name, sub in module.named_modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        if hook is not None:
            hooks[name] = hook
    return hooks
