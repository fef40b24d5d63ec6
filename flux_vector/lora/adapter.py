"""The runtime LoRA: each patched linear becomes a ``LoraLinear`` (the base layer plus adapters), and one
``apply_lora`` call returns a ``LoraHandle`` to switch its strength, fuse/unfuse it or remove it.

* ``LoraLinear(base)``: ``base(x) + sum s * scale * (x A^T) B^T`` into each patch's row range; ``base`` is any module
  mapping ``in -> out`` (nn.Linear, bitsandbytes' Linear8bitLt, ...). Eager strength 0 skips the branch: bitwise the
  base output.
* ``set_strength`` is a float assignment. Under ``torch.compile`` the adapter reads its strength from a 0-dim float32
  buffer updated in place, so switching strength never recompiles.
* ``fuse`` writes ``(W0.float() + s * scale * B @ A).to(dtype)`` into plain ``nn.Linear`` weights from a kept copy of
  W0 (``fuse.py``), so switching strength while fused never drifts; ``unfuse`` restores W0 bitwise; ``remove``
  restores the modules. peft's fuse/unfuse is deliberately not used (it mis-scales on repeated fuses and drifts on
  unfuse).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import LoraError, LoraPatch, check_strength, format_problems, in_features, out_features
from .fuse import FUSABLE_DTYPES, W0_DEVICE, choose_w0_home, fuse_error, keep_w0, stage_w0, write_fused_weight
from .projections import redirect_fused_projections


class _Strength:
    """One float shared by every adapter of a handle: switching strength is one assignment (eager code reads it;
    compiled code reads each adapter's ``strength`` buffer, which ``LoraHandle.set_strength`` updates in place)."""

    __slots__ = ("value",)

    def __init__(self, value: float):
        self.value = value


class _Adapter(nn.Module):
    """One handle's factors on one layer, as non-persistent buffers (they follow ``.to()``, stay out of state_dict)."""

    strength: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, patches: list[LoraPatch], cell: _Strength, device, dtype):
        super().__init__()
        self.cell = cell
        self.fused = False
        self.patches = patches  # the originals (file precision), for fusing in float32
        # the strength as a tensor for compiled code: a graph input, so a new value is no recompile
        self.register_buffer("strength", torch.tensor(float(cell.value), dtype=torch.float32, device=device), False)
        self.layout: list[tuple[str, list[tuple[str, int, int, float]]]] = []
        by_down: dict[int, list[LoraPatch]] = {}
        for p in patches:
            by_down.setdefault(id(p.down), []).append(p)
        for g, group in enumerate(by_down.values()):
            self.register_buffer(f"down{g}", group[0].down.to(device=device, dtype=dtype or group[0].down.dtype), False)
            terms = []
            for t, p in enumerate(group):
                self.register_buffer(f"up{g}_{t}", p.up.to(device=device, dtype=dtype or p.up.dtype), False)
                terms.append((f"up{g}_{t}", p.offset, p.rows, p.scale))
            self.layout.append((f"down{g}", terms))

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        # compiled: the strength buffer (a graph input); eager: the shared float
        strength = self.strength if torch.compiler.is_compiling() else self.cell.value
        full = out.shape[-1]
        for down_name, terms in self.layout:
            hidden = F.linear(x, self._factor(down_name).to(device=x.device, dtype=x.dtype))
            for up_name, offset, rows, scale in terms:
                delta = F.linear(hidden, self._factor(up_name).to(device=x.device, dtype=x.dtype))
                if isinstance(strength, torch.Tensor):  # compiling: float32 math, fused by inductor, no value guard
                    delta = (delta.float() * (strength.to(delta.device) * scale)).to(out.dtype)
                else:
                    delta = (delta * (strength * scale)).to(out.dtype)
                if offset == 0 and rows == full:
                    out += delta
                else:
                    out[..., offset : offset + rows] += delta

    def _factor(self, name: str) -> torch.Tensor:
        """The factor buffer ``name`` (one of ``layout``'s, registered in __init__ as a tensor, never set to None)."""
        return cast(torch.Tensor, self._buffers[name])

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.strength.dtype != torch.float32:  # module.to(bfloat16) must not round the strength
            self.strength = torch.tensor(float(self.cell.value), dtype=torch.float32, device=self.strength.device)
        return self

    def extra_repr(self) -> str:
        return f"patches={len(self.patches)}, fused={self.fused}"


def _fill_strength(adapters: Iterable[_Adapter], value: float) -> None:
    """Write ``value`` into every adapter's strength buffer in place (what compiled code reads): a few kernels per
    device (foreach), no reallocation, so compiled graphs and CUDA graphs keep reading the same memory."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for adapter in adapters:
        t = adapter.strength
        groups.setdefault((t.device, t.is_inference()), []).append(t)
    for (_device, inference), tensors in groups.items():
        with torch.inference_mode() if inference else torch.no_grad():
            torch._foreach_zero_(tensors)
            torch._foreach_add_(tensors, value)


class LoraLinear(nn.Module):
    """A linear with LoRA branches: ``base(x) + sum_s s * scale * (x A^T) B^T`` into each patch's row range.

    ``base`` is any module mapping ``[..., in] -> [..., out]`` (nn.Linear, bitsandbytes Linear8bitLt, ...).
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base: nn.Module = base
        self.in_features = in_features(base)
        self.out_features = out_features(base)
        self.adapters = nn.ModuleList()  # _Adapter modules only (``each_adapter``)
        self._w0: torch.Tensor | None = None  # original weight while any adapter is fused
        self._home: tuple[nn.Module, str] | None = None  # (parent, attribute) it replaced base in

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (W0, or the fused weight while fused), for code that inspects ``.weight``."""
        return cast(torch.Tensor, self.base.weight)  # every linear kind wrapped has a tensor weight

    @property
    def bias(self) -> torch.Tensor | None:
        return cast(torch.Tensor | None, self.base.bias)

    def each_adapter(self) -> Iterable[_Adapter]:
        """``adapters`` as what it holds (``apply_lora`` appends only ``_Adapter`` modules)."""
        return cast(Iterable[_Adapter], self.adapters)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        if torch.compiler.is_compiling():  # no branch on the strength's value: it would be guarded on, recompiling
            active = [a for a in self.each_adapter() if not a.fused]
        else:  # eager: strength 0 skips the branch (bitwise the base output)
            active = [a for a in self.each_adapter() if not a.fused and a.cell.value != 0.0]
        if not active:
            return out
        if torch.is_grad_enabled() and out.requires_grad:
            out = out.clone()
        for adapter in active:
            adapter.add_to(out, x)
        return out

    def fuse_error(self) -> str | None:
        """Why fusing into ``base`` is impossible, or None."""
        return fuse_error(self.base)

    @torch.no_grad()
    def refresh_fused(self, original_device: torch.device | str = W0_DEVICE) -> None:
        """Rewrite ``base.weight`` as W0 plus every fused adapter's delta (or W0 itself, bitwise). W0 is kept at
        ``original_device`` (``fuse.keep_w0``: "device", "pinned" or a device)."""
        fused = [a for a in self.each_adapter() if a.fused]
        weight = self.weight
        if not fused:
            if self._w0 is not None:
                weight.copy_(stage_w0(self._w0, weight.device))
                self._w0 = None
            return
        if self._w0 is None:
            self._w0 = keep_w0(weight, original_device)
        write_fused_weight(weight, self._w0, [(a.cell.value, a.patches) for a in fused])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self._w0 is not None}"


class LoraHandle:
    """The LoRA installed by one ``apply_lora`` call: switch its strength, fuse/unfuse it, or remove it."""

    def __init__(
        self,
        wrappers: list[LoraLinear],
        adapters: list[_Adapter],
        cell: _Strength,
        patches,
        text_cell: _Strength | None = None,
    ):
        self._wrappers = wrappers
        self._adapters = adapters
        self._cell = cell
        # the text encoders' layers have a strength of their own (ComfyUI LoraLoader's strength_clip)
        self._text_cell = text_cell if text_cell is not None else _Strength(cell.value)
        self.patches = list(patches)
        self._fused = False
        self._original_device: torch.device | str = W0_DEVICE  # where W0 is kept while fused (fuse.keep_w0)
        self._removed = False

    @property
    def strength(self) -> float:
        """The strength of the transformer's layers."""
        return self._cell.value

    @property
    def text_strength(self) -> float:
        """The strength of the text encoders' layers (equal to ``strength`` unless set apart)."""
        return self._text_cell.value

    @property
    def fused(self) -> bool:
        return self._fused

    @property
    def removed(self) -> bool:
        return self._removed

    @property
    def modules(self) -> list[LoraLinear]:
        return list(self._wrappers)

    @property
    def touches_text(self) -> bool:
        """True if this LoRA patches a text encoder (prompt embeddings then depend on its strength)."""
        return any(p.component != "transformer" for p in self.patches)

    def _live(self) -> None:
        if self._removed:
            raise RuntimeError("this LoRA was removed; apply it again")

    def set_strength(self, strength, text_strength=None) -> None:
        """Any finite float in [-10, 10]; ``text_strength``: the text encoders' layers (default: ``strength``, as
        ComfyUI's LoraLoader with strength_clip = strength_model). Unfused: one assignment. Fused: weights recomputed
        from W0 (no drift)."""
        value = check_strength(strength)
        text_value = value if text_strength is None else check_strength(text_strength)
        self._live()
        changed = {id(c) for c, v in ((self._cell, value), (self._text_cell, text_value)) if c.value != v}
        self._cell.value, self._text_cell.value = value, text_value
        _fill_strength([a for a in self._adapters if a.cell is self._cell], value)
        _fill_strength([a for a in self._adapters if a.cell is self._text_cell], text_value)
        if self._fused:  # only the layers whose strength changed (a text-only switch leaves the transformer alone)
            for wrapper, adapter in zip(self._wrappers, self._adapters, strict=True):
                if id(adapter.cell) in changed:
                    wrapper.refresh_fused(self._original_device)

    def fuse(self, original_device: torch.device | str | None = None) -> None:
        """Write the deltas into the base weights (plain nn.Linear only), keeping W0 at ``original_device``: None
        chooses where a strength switch is cheap (``w0_home``), else "device", "pinned" or a device."""
        self._live()
        if self._fused:
            return
        problems: set[str] = set()
        for wrapper, adapter in zip(self._wrappers, self._adapters, strict=True):
            reason = wrapper.fuse_error()
            if reason:
                problems.update(f"{p.component}.{p.target}: {reason}" for p in adapter.patches)
        bad = sorted(problems)
        if bad:
            raise LoraError("cannot fuse this LoRA into:\n  " + "\n  ".join(bad), keys=bad)
        self._original_device = self.w0_home() if original_device is None else original_device
        self._fused = True
        for adapter in self._adapters:
            adapter.fused = True
        for wrapper in self._wrappers:
            wrapper.refresh_fused(self._original_device)

    def w0_home(self) -> str:
        """Where fusing keeps W0 (``fuse.choose_w0_home``): on the weights' device when all W0 copies fit there with
        ``fuse.W0_HEADROOM`` to spare, else pinned host memory; beside CPU weights."""
        weights = [w.weight for w in self._wrappers]
        device = weights[0].device if weights else torch.device("cpu")
        w0_bytes = sum(w.numel() * w.element_size() for w in weights)
        free = None
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
        return choose_w0_home(device, w0_bytes, free)

    def unfuse(self) -> None:
        """Back to the runtime adapter; weights with no other fused LoRA get W0 back bitwise."""
        self._live()
        if not self._fused:
            return
        self._fused = False
        for adapter in self._adapters:
            adapter.fused = False
        for wrapper in self._wrappers:
            wrapper.refresh_fused(self._original_device)

    def remove(self) -> None:
        """Unfuse if needed and take the adapters out; layers with no LoRA left get their original module back."""
        if self._removed:
            return
        self.unfuse()
        for wrapper, adapter in zip(self._wrappers, self._adapters, strict=True):
            for i, a in enumerate(wrapper.adapters):
                if a is adapter:
                    del wrapper.adapters[i]
                    break
            if len(wrapper.adapters) == 0 and wrapper._home is not None:
                parent, attr = wrapper._home
                if parent._modules.get(attr) is wrapper:
                    setattr(parent, attr, wrapper.base)
                wrapper._home = None
        self._removed = True

    def _reinstalled(self, fresh: LoraHandle) -> None:
        """Become ``fresh`` (the same patches installed again, see ``fuse_qkv_projections``): callers keep holding
        this handle object."""
        self._wrappers, self._adapters, self._cell = fresh._wrappers, fresh._adapters, fresh._cell
        self._text_cell = fresh._text_cell
        self.patches, self._fused, self._removed = fresh.patches, fresh._fused, fresh._removed
        self._original_device = fresh._original_device

    def __repr__(self) -> str:
        state = "removed" if self._removed else ("fused" if self._fused else "adapter")
        text = f", text_strength={self.text_strength:g}" if self.text_strength != self.strength else ""
        return f"LoraHandle({len(self._wrappers)} layers, strength={self.strength:g}{text}, {state})"


def _adapter_dtype(base: nn.Module):
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype in FUSABLE_DTYPES and type(weight) is nn.Parameter:
        return weight.device, weight.dtype
    device = weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")
    return device, None  # quantized base: keep the file's dtype, cast to the input's dtype per call


def apply_lora(
    patches: Iterable[LoraPatch],
    strength=1.0,
    *,
    models: Iterable[nn.Module] | None = None,
    text_strength=None,
) -> LoraHandle:
    """Install patches as runtime adapters at ``strength`` (the text encoders' layers at ``text_strength``, default
    ``strength``). The modules are looked up in ``models``, by default the models ``parse_lora`` was given (each
    patch's ``root``)."""
    value = check_strength(strength)
    text_value = value if text_strength is None else check_strength(text_strength)
    patches = list(patches)
    if not all(isinstance(p, LoraPatch) for p in patches):
        raise TypeError("apply_lora needs LoraPatch objects (from parse_lora)")
    if not patches:
        raise LoraError("apply_lora got no patches")
    if models is None:
        if any(p.root is None for p in patches):
            raise LoraError("patches without a root model: pass models=[...]")
        models = list({id(p.root): p.root for p in patches if p.root is not None}.values())
    else:
        models = [models] if isinstance(models, nn.Module) else list(models)
        if not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("apply_lora(models=...) must be nn.Module objects")
    patches = redirect_fused_projections(patches, models)
    where: dict[int, tuple[nn.Module, str, nn.Module]] = {}
    for model in models:
        for parent in model.modules():
            for attr, child in parent.named_children():
                where.setdefault(id(child), (parent, attr, child))

    groups: dict[int, tuple[LoraLinear | None, tuple[nn.Module, str, nn.Module], list[LoraPatch]]] = {}
    problems: dict[str, str] = {}
    for p in patches:
        found = where.get(id(p.module))
        name = f"{p.component}.{p.target}"
        if found is None:
            problems[name] = "module not found in the given models (pass every model the patches target)"
            continue
        parent, attr, module = found
        if isinstance(module, LoraLinear):
            wrapper = module
        elif isinstance(parent, LoraLinear) and attr == "base":
            wrapper, found = parent, where[id(parent)]
        else:
            wrapper = None
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        if in_features != p.down.shape[1] or out_features is None or p.offset + p.rows > out_features:
            problems[name] = f"LoRA shape does not fit the module ({in_features} -> {out_features})"
            continue
        key = id(wrapper) if wrapper is not None else id(module)
        groups.setdefault(key, (wrapper, found, []))[2].append(p)
    if problems:
        raise LoraError(format_problems(problems, "cannot apply the LoRA to"), keys=sorted(problems))

    cell, text_cell = _Strength(value), _Strength(text_value)
    wrappers: list[LoraLinear] = []
    adapters: list[_Adapter] = []
    for wrapper, (parent, attr, module), group in groups.values():
        if wrapper is None:
            wrapper = LoraLinear(module)
            setattr(parent, attr, wrapper)
            wrapper._home = (parent, attr)
        device, dtype = _adapter_dtype(wrapper.base)
        # a module belongs to one model, so every patch of the group has the same component
        adapter = _Adapter(group, cell if group[0].component == "transformer" else text_cell, device, dtype)
        wrapper.adapters.append(adapter)
        wrappers.append(wrapper)
        adapters.append(adapter)
    return LoraHandle(wrappers, adapters, cell, patches, text_cell)
