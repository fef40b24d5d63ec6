"""diffusers' ``fuse_qkv_projections`` on a transformer that already carries LoRAs (the fast mode's fused QKV)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from torch import nn

from .adapter import LoraHandle, LoraLinear, apply_lora
from .base import LoraError, format_problems
from .projections import FUSED_PROJECTIONS


def fuse_qkv_projections(transformer: nn.Module, handles: Iterable[LoraHandle] = ()) -> int:
    """diffusers' ``transformer.fuse_qkv_projections()`` on a model that may carry LoRAs: ``handles`` (every live
    LoRA on its q/k/v projections) are taken out (W0 restored bitwise), the plain weights fused, and the same patches
    re-applied onto ``to_qkv`` / ``to_added_qkv`` at their row offsets with the same strength (and fused again if they
    were). The handle objects stay valid. Returns how many attention modules were fused. One way: unfusing the
    projections afterwards would leave the LoRA on the removed fused layers."""
    handles = [h for h in handles if not h.removed]
    known = {id(a) for h in handles for a in h._adapters}
    attention = [m for m in transformer.modules() if hasattr(m, "fuse_projections") and hasattr(m, "to_q")]
    if not attention:
        raise ValueError(f"{type(transformer).__name__} has no attention modules with fusable q/k/v projections")
    todo = [m for m in attention if getattr(m, "_supports_qkv_fusion", True) and not getattr(m, "fused_projections", 0)]
    problems: dict[str, str] = {}
    for name, module in transformer.named_modules():
        if module not in todo:
            continue
        for parts, _ in FUSED_PROJECTIONS[:2]:
            for part in parts:
                sub = module._modules.get(part)
                if sub is None:
                    continue
                base = sub.base if isinstance(sub, LoraLinear) else sub
                if type(base) is not nn.Linear:
                    problems[f"{name}.{part}"] = f"{type(base).__name__} weights cannot be concatenated"
                elif isinstance(sub, LoraLinear) and any(id(a) not in known for a in sub.adapters):
                    problems[f"{name}.{part}"] = "carries a LoRA whose handle was not passed"
    if problems:
        raise LoraError(format_problems(problems, "cannot fuse the q/k/v projections of"), keys=sorted(problems))
    if not todo:
        return 0
    states = [(h, h.strength, h.text_strength, h.fused, h._original_device, list(h.patches)) for h in handles]
    for h in handles:
        h.remove()
    cast(Any, transformer).fuse_qkv_projections()  # a diffusers model method: nn.Module types it as Tensor | Module
    for h, strength, text_strength, was_fused, device, patches in states:
        roots = {id(p.root): p.root for p in patches if p.root is not None}
        roots.setdefault(id(transformer), transformer)
        h._reinstalled(apply_lora(patches, strength, models=list(roots.values()), text_strength=text_strength))
        if was_fused:
            h.fuse(device)
    return len(todo)
