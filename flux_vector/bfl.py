"""BFL's original FLUX layout (``flux1-dev.safetensors``, what ComfyUI users keep) <-> diffusers' layout.

One table (``layout``) drives both directions, and the LoRA name tables (``lora/names.py``) read the same one.
diffusers' own single-file converter hard-codes the 12B model's split sizes (3072 x 3 + 12288), so fused ``qkv`` /
``linear1`` weights are split here by the target model's real sizes and any width loads (the tiny checkpoint
included).
"""

from __future__ import annotations

from typing import Any, cast

import torch

# (bfl name, diffusers names, kind): "linear" concatenates weight/bias rows, "scale" is an RMSNorm scale,
# "swap" is the final modulation whose (shift, scale) halves diffusers stores as (scale, shift).
Entry = tuple[str, tuple[str, ...], str]
PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def layout(num_layers: int, num_single_layers: int) -> list[Entry]:
    table: list[Entry] = [
        ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), "linear"),
        ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), "linear"),
        ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), "linear"),
        ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), "linear"),
        ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), "linear"),
        ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), "linear"),
        ("txt_in", ("context_embedder",), "linear"),
        ("img_in", ("x_embedder",), "linear"),
        ("final_layer.linear", ("proj_out",), "linear"),
        ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
    ]
    for i in range(num_layers):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        table += [
            (f"{b}.img_mod.lin", (f"{d}.norm1.linear",), "linear"),
            (f"{b}.txt_mod.lin", (f"{d}.norm1_context.linear",), "linear"),
            (f"{b}.img_attn.qkv", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), "linear"),
            (f"{b}.txt_attn.qkv", (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"), "linear"),
            (f"{b}.img_attn.proj", (f"{d}.attn.to_out.0",), "linear"),
            (f"{b}.txt_attn.proj", (f"{d}.attn.to_add_out",), "linear"),
            (f"{b}.img_attn.norm.query_norm", (f"{d}.attn.norm_q",), "scale"),
            (f"{b}.img_attn.norm.key_norm", (f"{d}.attn.norm_k",), "scale"),
            (f"{b}.txt_attn.norm.query_norm", (f"{d}.attn.norm_added_q",), "scale"),
            (f"{b}.txt_attn.norm.key_norm", (f"{d}.attn.norm_added_k",), "scale"),
            (f"{b}.img_mlp.0", (f"{d}.ff.net.0.proj",), "linear"),
            (f"{b}.img_mlp.2", (f"{d}.ff.net.2",), "linear"),
            (f"{b}.txt_mlp.0", (f"{d}.ff_context.net.0.proj",), "linear"),
            (f"{b}.txt_mlp.2", (f"{d}.ff_context.net.2",), "linear"),
        ]
    for i in range(num_single_layers):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        table += [
            (f"{b}.linear1", (f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"), "linear"),
            (f"{b}.linear2", (f"{d}.proj_out",), "linear"),
            (f"{b}.modulation.lin", (f"{d}.norm.linear",), "linear"),
            (f"{b}.norm.query_norm", (f"{d}.attn.norm_q",), "scale"),
            (f"{b}.norm.key_norm", (f"{d}.attn.norm_k",), "scale"),
        ]
    return table


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2)
    return torch.cat([second, first])


def to_bfl(diffusers_sd: dict[str, torch.Tensor], num_layers: int, num_single_layers: int) -> dict[str, torch.Tensor]:
    sd, out = dict(diffusers_sd), {}
    for bfl, names, kind in layout(num_layers, num_single_layers):
        if kind == "scale":
            out[f"{bfl}.scale"] = sd.pop(f"{names[0]}.weight")
            continue
        for suffix in ("weight", "bias"):
            if f"{names[0]}.{suffix}" not in sd:
                continue
            tensor = torch.cat([sd.pop(f"{n}.{suffix}") for n in names])
            out[f"{bfl}.{suffix}"] = _swap_halves(tensor) if kind == "swap" else tensor
    if sd:
        raise ValueError(f"weights with no BFL name: {sorted(sd)[:10]}")
    return {k: v.contiguous() for k, v in out.items()}


def from_bfl(bfl_sd: dict[str, torch.Tensor], target: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert to ``target``'s diffusers names, splitting fused weights by the target's own parameter sizes."""
    sd = {k.removeprefix(p): v for k, v in bfl_sd.items() for p in PREFIXES if k.startswith(p)} or dict(bfl_sd)
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    # a diffusers model's config (a FrozenDict); torch's Module.__getattr__ would type it as Tensor | Module
    config = cast(Any, target).config
    out: dict[str, torch.Tensor] = {}
    missing = []
    for bfl, names, kind in layout(config.num_layers, config.num_single_layers):
        if kind == "scale":
            if f"{bfl}.scale" in sd:
                out[f"{names[0]}.weight"] = sd.pop(f"{bfl}.scale")
            else:
                missing.append(f"{bfl}.scale")
            continue
        for suffix in ("weight", "bias"):
            key = f"{bfl}.{suffix}"
            if f"{names[0]}.{suffix}" not in shapes:
                continue
            if key not in sd:
                missing.append(key)
                continue
            tensor = sd.pop(key)
            if kind == "swap":
                tensor = _swap_halves(tensor)
            sizes = [shapes[f"{n}.{suffix}"][0] for n in names]
            if tensor.shape[0] != sum(sizes):
                raise ValueError(f"{key}: {tuple(tensor.shape)} does not fit the model's {sizes} rows")
            for name, part in zip(names, tensor.split(sizes), strict=True):
                out[f"{name}.{suffix}"] = part.contiguous()
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} transformer weights, e.g. {missing[:5]}")
    unused = [k for k in sd if not k.startswith(("vae.", "text_encoders.", "first_stage_model.", "cond_stage_model."))]
    if unused:
        raise ValueError(f"the checkpoint has {len(unused)} weights this model has no place for, e.g. {unused[:5]}")
    return out
