"""LoRA patches on a model whose q/k/v projections diffusers fused (``fuse_qkv_projections``): forward then uses
``to_qkv`` / ``to_added_qkv``, so patches on ``to_q``/``to_k``/``to_v`` move onto the fused linear at their row
offsets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from .base import LoraPatch, out_features

# (unfused projections, the fused projection diffusers' fuse_projections() builds from them, rows in that order)
FUSED_PROJECTIONS = (
    (("to_q", "to_k", "to_v"), "to_qkv"),
    (("add_q_proj", "add_k_proj", "add_v_proj"), "to_added_qkv"),
    (("to_k", "to_v"), "to_kv"),
)


def unfused_projection_map(models: Iterable[nn.Module]) -> dict[int, tuple[nn.Module, str, int]]:
    """id(q/k/v linear, or its base) -> (the fused linear that replaced it in forward, its attribute, row offset), for
    every attention module whose projections diffusers fused (``fused_projections``)."""
    found: dict[int, tuple[nn.Module, str, int]] = {}
    for model in models:
        for module in model.modules():
            if not getattr(module, "fused_projections", False):
                continue
            for parts, fused_name in FUSED_PROJECTIONS:
                fused = module._modules.get(fused_name)
                subs = [sub for n in parts if (sub := module._modules.get(n)) is not None]
                if fused is None or len(subs) != len(parts):
                    continue
                if sum(out_features(sub) for sub in subs) != out_features(fused):
                    continue
                offset = 0
                for sub in subs:
                    for m in (sub, sub.base) if isinstance(getattr(sub, "base", None), nn.Module) else (sub,):
                        found.setdefault(id(m), (fused, fused_name, offset))
                    offset += out_features(sub)
    return found


def redirect_fused_projections(patches: list[LoraPatch], models: Iterable[nn.Module]) -> list[LoraPatch]:
    """Patches on q/k/v projections that forward no longer uses (fused into ``to_qkv``) moved onto the fused linear at
    their row offsets; row-adjacent pieces of one key (a BFL ``qkv`` split in three) merged back into one patch."""
    fused_map = unfused_projection_map(models)
    if not fused_map:
        return patches
    out: list[LoraPatch] = []
    moved: dict[tuple, list[LoraPatch]] = {}
    for p in patches:
        hit = fused_map.get(id(p.module))
        if hit is None:
            out.append(p)
            continue
        fused, fused_name, offset = hit
        parent = p.target.rpartition(".")[0]
        target = f"{parent}.{fused_name}" if parent else fused_name
        p = replace(p, target=target, module=fused, offset=p.offset + offset)
        moved.setdefault((id(fused), p.key, id(p.down), p.scale, p.component), []).append(p)
    for group in moved.values():
        group.sort(key=lambda q: q.offset)
        merged = [group[0]]
        for q in group[1:]:
            last = merged[-1]
            if q.offset == last.offset + last.rows and q.up.dtype == last.up.dtype and q.up.device == last.up.device:
                merged[-1] = replace(last, up=torch.cat([last.up, q.up]))
            else:
                merged.append(q)
        out.extend(merged)
    return out
