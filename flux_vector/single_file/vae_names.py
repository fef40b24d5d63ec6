"""The BFL autoencoder (``ae.safetensors``, the LDM naming ComfyUI keeps) <-> diffusers' ``AutoencoderKL`` names.

One rule list (``ldm_name``) drives both directions. The LDM attention's q/k/v/proj_out are 1x1 convolutions where
diffusers has linears: the same numbers, reshaped. The decoder's up blocks run in the opposite order (LDM's
``up.0`` is diffusers' last up block).
"""

from __future__ import annotations

import re

import torch

# the prefixes an all-in-one checkpoint puts before the VAE's own names
VAE_PREFIXES = ("vae.", "first_stage_model.")

_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_RESNET = {"conv_shortcut": "nin_shortcut"}


def ldm_name(name: str, num_blocks: int) -> tuple[str, bool]:
    """(the LDM name of diffusers' ``name``, whether it is an attention projection: a linear here, a 1x1 conv
    there). ``num_blocks``: ``len(block_out_channels)``, to reverse the decoder's up blocks."""
    parts = name.rsplit(".", 1)
    module, suffix = parts[0], parts[1]
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
        attr = m[2]
        return f"{m[1]}.mid.attn_1.{_ATTENTION[attr]}.{suffix}", attr != "group_norm"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)", module):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_RESNET.get(m[3], m[3])}.{suffix}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_RESNET.get(m[3], m[3])}.{suffix}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
        return f"encoder.down.{m[1]}.downsample.conv.{suffix}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
        block = num_blocks - 1 - int(m[1])
        return f"decoder.up.{block}.block.{m[2]}.{_RESNET.get(m[3], m[3])}.{suffix}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{suffix}", False
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out", module):
        return f"{m[1]}.norm_out.{suffix}", False
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)|quant_conv|post_quant_conv", module):
        return name, False
    raise ValueError(f"no LDM name for the VAE weight {name!r}")


def vae_to_ldm(diffusers_sd: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers' AutoencoderKL weights under their ``ae.safetensors`` names (what a ComfyUI user has)."""
    out = {}
    for name, tensor in diffusers_sd.items():
        target, attention = ldm_name(name, num_blocks)
        out[target] = (tensor[..., None, None] if attention and tensor.dim() == 2 else tensor).contiguous()
    return out


def strip_vae_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``ae.safetensors`` state dict: the all-in-one checkpoint's VAE prefix, when there is one, removed."""
    for prefix in VAE_PREFIXES:
        inner = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if inner:
            return inner
    return sd


def vae_from_ldm(ldm_sd: dict[str, torch.Tensor], shapes: dict[str, torch.Size], num_blocks: int) -> dict:
    """``ldm_sd`` (an ``ae.safetensors``) under the names of the AutoencoderKL whose parameter shapes are
    ``shapes``; the attention convolutions reshaped to linears. Raises ``ValueError`` naming what is missing, left
    over, or of another shape (a VAE of another size than the config says)."""
    sd = dict(strip_vae_prefix(ldm_sd))
    out, missing, wrong = {}, [], []
    for name, shape in shapes.items():
        source, _attention = ldm_name(name, num_blocks)
        if source not in sd:
            missing.append(source)
            continue
        tensor = sd.pop(source)
        if tensor.shape != shape:
            if tensor.numel() != shape.numel() or not _attention:
                wrong.append(f"{source} {tuple(tensor.shape)} (the config wants {tuple(shape)})")
                continue
            tensor = tensor.reshape(shape)
        out[name] = tensor
    if missing:
        raise ValueError(f"the VAE file lacks {len(missing)} weights, e.g. {missing[:5]}")
    if wrong:
        raise ValueError(f"{len(wrong)} VAE weights do not fit the config's shapes, e.g. {wrong[:3]}")
    if sd:
        raise ValueError(f"the VAE file has {len(sd)} weights an AutoencoderKL has no place for, e.g. {sorted(sd)[:5]}")
    return out
