"""Which file names a ComfyUI graph uses for flux_vector's weights, and back.

A graph names files only by their name in the install's model folders, so these are choices (README "ComfyUI"):

- FLUX.1-dev (``black-forest-labs/FLUX.1-dev``): the common names ``flux1-dev.safetensors`` (diffusion_models),
  ``t5xxl_fp16.safetensors`` and ``clip_l.safetensors`` (text_encoders), ``ae.safetensors`` (vae).
- A single-file BFL transformer (``--model .../my-flux.safetensors``): its own file name; the text encoders and the
  VAE are FLUX.1-dev's, named as above (its ``base``).
- Any other model (``demo``, ``tiny``, a diffusers folder or hub id ``NAME``): the folder's own files under the
  model's name, ``NAME/transformer/diffusion_pytorch_model.safetensors``, ``NAME/text_encoder_2/model.safetensors``,
  ``NAME/text_encoder/model.safetensors``, ``NAME/vae/diffusion_pytorch_model.safetensors``: link (or copy) the folder
  as ``NAME`` into ComfyUI's ``models/diffusion_models``, ``models/text_encoders`` and ``models/vae``; ComfyUI's
  loaders read the diffusers files directly.
- The LoRA: its own file name (``Simple_Vector_Flux_v2_renderartist.safetensors`` for the Simple Vector LoRA).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ..models import DEFAULT_LORA, DEFAULT_LORA_FILE, DEFAULT_MODEL, SINGLE_FILE_SUFFIXES

# DualCLIPLoader's clip_name1 is T5-XXL and clip_name2 CLIP-L, as in ComfyUI's FLUX example
FLUX_DEV_FILES: dict[str, str] = {
    "unet_name": "flux1-dev.safetensors",
    "clip_name1": "t5xxl_fp16.safetensors",
    "clip_name2": "clip_l.safetensors",
    "vae_name": "ae.safetensors",
}
DIFFUSERS_FILES: dict[str, str] = {
    "unet_name": "transformer/diffusion_pytorch_model.safetensors",
    "clip_name1": "text_encoder_2/model.safetensors",
    "clip_name2": "text_encoder/model.safetensors",
    "vae_name": "vae/diffusion_pytorch_model.safetensors",
}


def file_names(model: str | None) -> dict[str, str]:
    """The four loader file names for a model as ``identity["model"]`` names it (a public name: a hub id, "demo",
    "tiny", a folder's or a file's name)."""
    if model is None or model == DEFAULT_MODEL:
        return dict(FLUX_DEV_FILES)
    if model.endswith(SINGLE_FILE_SUFFIXES):
        return {**FLUX_DEV_FILES, "unet_name": model}
    return {key: f"{model}/{name}" for key, name in DIFFUSERS_FILES.items()}


def model_for_unet(unet_name: str) -> str | None:
    """The flux_vector model a graph's diffusion-model file stands for: FLUX.1-dev for its common name, ``NAME`` for
    ``NAME/transformer/diffusion_pytorch_model.safetensors``; None when the name is the other install's own."""
    if unet_name in (FLUX_DEV_FILES["unet_name"], "flux1-dev.sft"):
        return DEFAULT_MODEL
    suffix = "/" + DIFFUSERS_FILES["unet_name"]
    if unet_name.endswith(suffix) and len(unet_name) > len(suffix):
        return unet_name[: -len(suffix)]
    return None


def lora_file_name(identity: Mapping[str, Any]) -> str | None:
    """The LoRA's own file name for a graph: ``identity["lora_file"]`` (the file the pipeline read), else the
    Simple Vector file for its hub id, else the public name (with ``.safetensors`` when it has no suffix)."""
    lora = identity.get("lora")
    if lora is None or str(lora).lower() == "none":
        return None
    if identity.get("lora_file"):
        return str(identity["lora_file"])
    if lora == DEFAULT_LORA:
        return DEFAULT_LORA_FILE
    name = PurePosixPath(str(lora)).name
    return name if name.endswith(SINGLE_FILE_SUFFIXES) else f"{name}.safetensors"


def lora_for_file(lora_name: str) -> str | None:
    """The flux_vector LoRA a graph's LoRA file stands for: the Simple Vector LoRA for its file name (the demo
    model's stand-in too); None when the name is the other install's own."""
    from ..demo import DEMO_LORA_FILE

    return DEFAULT_LORA if PurePosixPath(lora_name).name in (DEFAULT_LORA_FILE, DEMO_LORA_FILE) else None
