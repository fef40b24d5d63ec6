"""LoRA for the FLUX transformer and its text encoders (CLIP-L, T5): parse any common key layout, apply exactly.

ComfyUI semantics (docs/COMFY_SAMPLING.md section 7, docs/COMFY_E2E.md section 4): each placed layer gets
``ΔW = strength * (alpha / rank) * up @ down`` with rank = rows of ``down`` and scale 1.0 when there is no alpha key.
The text-encoder layers use the same strength as the transformer (LoraLoader with strength_clip = strength_model).

* ``load_lora_file(path)`` reads a safetensors file.
* ``parse_lora(state_dict, transformer, text_encoder=None, text_encoder_2=None)`` places every key on a module of the
  diffusers ``FluxTransformer2DModel`` or a text encoder and returns ``LoraPatch`` objects. Accepted layouts:
  kohya (``lora_unet_<BFL path with _>``), BFL/ComfyUI (``diffusion_model.<BFL path>``), diffusers/peft/ai-toolkit
  (``transformer.<diffusers path>``, optional ``base_model.model.``), OneTrainer (``lora_transformer_<diffusers path
  with _>``), kohya text encoders (``lora_te1_<CLIP path with _>``; ``lora_te2_`` / ``lora_te3_<T5 path with _>``,
  ComfyUI's names for T5 in a Flux CLIP) and diffusers text encoders (``text_encoder.``, ``text_encoder_2.``).
  BFL's fused layers (``qkv``, ``linear1``) are split into row slices by the real sizes of the target modules;
  ``final_layer.adaLN_modulation.1`` has its shift/scale halves swapped into diffusers' scale/shift order.
  Underscore names are resolved by enumerating every known name of this model and its ``_`` form, never by guessing
  where the dots were. Anything that cannot be placed raises ``LoraError`` listing the keys: a LoRA never silently
  does nothing.
* ``apply_lora(models, patches, strength)`` wraps each targeted linear in a ``LoraLinear`` (the base layer, any module
  mapping ``in -> out`` such as bitsandbytes' ``Linear8bitLt``, plus the factors) and returns a ``LoraHandle``:
  ``set_strength`` is a float assignment (strength 0 skips the branch: bitwise the base output), ``fuse`` writes
  ``(W0.float() + s * scale * B @ A).to(dtype)`` into plain ``nn.Linear`` weights from a kept copy of ``W0`` (so
  switching strength while fused never drifts), ``unfuse`` restores ``W0`` bitwise, ``remove`` restores the modules.
* Under ``torch.compile`` the adapter reads its strength from a 0-dim float32 buffer that ``set_strength`` updates in
  place, so switching strength never recompiles (eager code keeps the float and the exact strength-0 skip).
* Fused QKV projections (diffusers' ``fuse_qkv_projections``): ``apply_lora`` places q/k/v patches on the fused
  ``to_qkv`` / ``to_added_qkv`` at their row offsets; ``fuse_qkv_projections(transformer, handles)`` fuses a model
  that already has LoRAs and moves their adapters over.

peft's fuse/unfuse is deliberately not used (STACK_NOTES: it mis-scales on repeated fuses and drifts on unfuse).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "STRENGTH_MAX",
    "STRENGTH_MIN",
    "LoraError",
    "LoraHandle",
    "LoraLinear",
    "LoraPatch",
    "apply_lora",
    "check_strength",
    "fuse_qkv_projections",
    "load_lora",
    "load_lora_file",
    "parse_lora",
]

STRENGTH_MIN = -10.0
STRENGTH_MAX = 10.0
_FUSABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_LISTED = 50


class LoraError(ValueError):
    """A LoRA that cannot be read or placed. ``keys`` holds every offending key."""

    def __init__(self, message: str, keys: Iterable[str] = ()):
        super().__init__(message)
        self.keys = tuple(keys)


def check_strength(value) -> float:
    """``value`` as a float if it is a finite real number in [STRENGTH_MIN, STRENGTH_MAX], else ``ValueError``."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if valid:
        number = float(value)
        valid = math.isfinite(number) and STRENGTH_MIN <= number <= STRENGTH_MAX
    if not valid:
        raise ValueError(
            f"LoRA strength must be a finite number in [{STRENGTH_MIN:g}, {STRENGTH_MAX:g}], got {value!r}"
        )
    return number


# --------------------------------------------------------------------------------------------------- reading


def load_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` LoRA file, on CPU. ``LoraError`` if it is missing, unreadable or empty."""
    path = Path(path)
    if not path.exists():
        raise LoraError(f"LoRA file not found: {path}")
    if not path.is_file():
        raise LoraError(f"LoRA path is not a file: {path}")
    try:
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types (and OSError for permissions)
        raise LoraError(
            f"cannot read LoRA file {path} as safetensors ({type(exc).__name__}: {exc}); "
            "only .safetensors LoRAs are supported"
        ) from exc
    if not state_dict:
        raise LoraError(f"LoRA file {path} holds no tensors")
    return state_dict


# --------------------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class _Segment:
    target: str  # module path inside its model
    src: int  # first row of this segment in the file's up matrix
    rows: int
    dst: int  # first row it patches in the target's output


@dataclass(frozen=True)
class _Spec:
    component: str  # "transformer", "text_encoder" (CLIP-L) or "text_encoder_2" (T5)
    segments: tuple[_Segment, ...]
    in_features: int
    out_rows: int  # rows the file's up matrix must have


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every linear (nn.Linear, its bnb subclasses, or an installed LoraLinear)."""
    found: dict[str, nn.Module] = {}
    inside_wrappers: set[int] = set()
    for name, module in model.named_modules():  # pre-order: a wrapper comes before its base
        if id(module) in inside_wrappers:
            continue
        if isinstance(module, LoraLinear):
            inside_wrappers.update(id(m) for m in module.modules() if m is not module)
            found[name] = module
        elif isinstance(module, nn.Linear):
            found[name] = module
    return found


def _direct(component: str, name: str, module: nn.Module) -> _Spec:
    rows = module.out_features
    return _Spec(component, (_Segment(name, 0, rows, 0),), module.in_features, rows)


def _fused(linears: dict[str, nn.Module], targets: list[str]) -> _Spec | None:
    if not all(t in linears for t in targets) or len({linears[t].in_features for t in targets}) != 1:
        return None
    segments, start = [], 0
    for t in targets:
        rows = linears[t].out_features
        segments.append(_Segment(t, start, rows, 0))
        start += rows
    return _Spec("transformer", tuple(segments), linears[targets[0]].in_features, start)


def _bfl_specs(transformer: nn.Module, linears: dict[str, nn.Module]) -> dict[str, _Spec]:
    """Every BFL (ComfyUI) linear name of this model -> where its rows go in the diffusers modules."""
    specs: dict[str, _Spec | None] = {}

    def alias(bfl: str, target: str):
        if target in linears:
            specs[bfl] = _direct("transformer", target, linears[target])

    for i in range(len(getattr(transformer, "transformer_blocks", ()))):
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        specs[f"{d}.img_attn.qkv"] = _fused(linears, [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"])
        specs[f"{d}.txt_attn.qkv"] = _fused(
            linears, [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"]
        )
        alias(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        alias(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")
        alias(f"{d}.img_mlp.0", f"{b}.ff.net.0.proj")
        alias(f"{d}.img_mlp.2", f"{b}.ff.net.2")
        alias(f"{d}.txt_mlp.0", f"{b}.ff_context.net.0.proj")
        alias(f"{d}.txt_mlp.2", f"{b}.ff_context.net.2")
        alias(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        alias(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
    for i in range(len(getattr(transformer, "single_transformer_blocks", ()))):
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        specs[f"{s}.linear1"] = _fused(linears, [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"])
        alias(f"{s}.linear2", f"{b}.proj_out")
        alias(f"{s}.modulation.lin", f"{b}.norm.linear")
    alias("img_in", "x_embedder")
    alias("txt_in", "context_embedder")
    for bfl, diffusers in (("time_in", "timestep"), ("vector_in", "text"), ("guidance_in", "guidance")):
        alias(f"{bfl}.in_layer", f"time_text_embed.{diffusers}_embedder.linear_1")
        alias(f"{bfl}.out_layer", f"time_text_embed.{diffusers}_embedder.linear_2")
    alias("final_layer.linear", "proj_out")
    if "norm_out.linear" in linears:  # BFL chunks (shift, scale), diffusers (scale, shift): swap the halves
        module = linears["norm_out.linear"]
        half = module.out_features // 2
        specs["final_layer.adaLN_modulation.1"] = _Spec(
            "transformer",
            (_Segment("norm_out.linear", 0, half, half), _Segment("norm_out.linear", half, half, 0)),
            module.in_features,
            2 * half,
        )
    return {k: v for k, v in specs.items() if v is not None}


class _Table:
    """Dotted and underscore names of one model's LoRA-able linears."""

    def __init__(self, dotted: dict[str, _Spec]):
        self.dotted = dotted
        self.underscore: dict[str, _Spec | None] = {}  # None: two dotted names share this underscore form
        for name, spec in dotted.items():
            key = name.replace(".", "_")
            self.underscore[key] = None if key in self.underscore else spec


def _transformer_table(transformer: nn.Module) -> _Table:
    linears = _linear_modules(transformer)
    dotted = {name: _direct("transformer", name, m) for name, m in linears.items()}
    for name, spec in _bfl_specs(transformer, linears).items():
        assert name not in dotted, f"BFL name {name} collides with a diffusers module name"
        dotted[name] = spec
    return _Table(dotted)


def _t5_table(text_encoder_2: nn.Module) -> _Table:
    """T5 linears under their module names (``encoder.block.0.layer.0.SelfAttention.q``)."""
    return _Table({name: _direct("text_encoder_2", name, m) for name, m in _linear_modules(text_encoder_2).items()})


def _text_encoder_table(text_encoder: nn.Module) -> _Table:
    """CLIP linears under their module names and their transformers-4 names (``text_model.encoder...``, the names
    kohya and diffusers LoRAs were written with; transformers 5's CLIPTextModel dropped the ``text_model`` level)."""
    dotted: dict[str, _Spec] = {}
    for name, module in _linear_modules(text_encoder).items():
        spec = _direct("text_encoder", name, module)
        dotted[name] = spec
        alias = name.removeprefix("text_model.") if name.startswith("text_model.") else f"text_model.{name}"
        dotted.setdefault(alias, spec)
    return _Table(dotted)


# Key prefixes, longest first where one is a prefix of another.
_TE_UNDERSCORE = ("lora_te1_", "lora_te_")
_TE_DOTTED = ("text_encoder.",)
_T5_UNDERSCORE = ("lora_te2_", "lora_te3_")
_T5_DOTTED = ("text_encoder_2.",)
_TR_UNDERSCORE = ("lora_unet_", "lora_transformer_", "lycoris_")
_TR_DOTTED = ("model.diffusion_model.", "diffusion_model.", "transformer.")

_PAIR = re.compile(
    r"^(?P<base>.+?)(?:\.lora_(?P<a>up|down|A|B)|_lora\.(?P<b>up|down)|\.lora\.(?P<c>up|down))"
    r"(?:\.default)?(?:\.weight)?$"
)


def _resolve(base: str, tables: dict[str, _Table | None]) -> tuple[_Spec, str] | str:
    """(spec, the name it matched) for a key's base name, or the reason it cannot be placed."""
    name = base.removeprefix("base_model.model.")
    candidates: list[tuple[str, str, bool]] = []  # (table, rest of the name, underscore form)
    for which, prefixes, underscore in (
        ("text_encoder_2", _T5_UNDERSCORE, True),
        ("text_encoder_2", _T5_DOTTED, False),
        ("text_encoder", _TE_UNDERSCORE, True),
    ):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is not None:
            candidates.append((which, name[len(prefix) :], underscore))
            break
    else:
        for prefix in _TE_DOTTED:
            if name.startswith(prefix):
                candidates.append(("text_encoder", name[len(prefix) :], False))
        for prefix in _TR_UNDERSCORE:
            if name.startswith(prefix):
                candidates.append(("transformer", name[len(prefix) :], True))
                break
        else:
            for prefix in _TR_DOTTED:
                if name.startswith(prefix):
                    candidates.append(("transformer", name[len(prefix) :], False))
                    break
            candidates.append(("transformer", name, False))  # bare BFL or diffusers path (e.g. a peft dump)
    first = candidates[0][0]
    if first != "transformer" and tables[first] is None:
        return f"a {_COMPONENT_NAMES[first]} LoRA layer, but no {first} was given to parse_lora"
    for which, rest, underscore in candidates:
        table = tables[which]
        if table is None:
            continue
        spec = table.underscore.get(rest, False) if underscore else table.dotted.get(rest, False)
        if spec is None:
            return f"ambiguous underscore name {rest!r}"
        if spec:
            return spec, rest
    which, rest, _ = candidates[0]
    return f"no LoRA-able linear named {rest!r} in the {_COMPONENT_NAMES[which]}"


_COMPONENT_NAMES = {"transformer": "transformer", "text_encoder": "text encoder", "text_encoder_2": "T5 text encoder"}


# --------------------------------------------------------------------------------------------------- patches


@dataclass(eq=False)
class LoraPatch:
    """One low-rank update of one linear: rows ``offset : offset + rows`` of its output get ``s * scale * B @ A``."""

    target: str  # module path inside its model (diffusers names for the transformer)
    module: nn.Module  # that module (as it was when parsed)
    down: torch.Tensor  # A, [rank, in_features]
    up: torch.Tensor  # B (the slice for this target), [rows, rank]
    offset: int  # first output row of the target this patch adds to
    scale: float  # alpha / rank, 1.0 without an alpha key
    key: str  # the LoRA key it came from (without the .lora_down/.lora_up suffix)
    component: str = "transformer"
    root: nn.Module | None = None  # the model ``target`` is a path in (what parse_lora was given)

    @property
    def A(self) -> torch.Tensor:
        return self.down

    @property
    def B(self) -> torch.Tensor:
        return self.up

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def rows(self) -> int:
        return self.up.shape[0]

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """``strength * scale * B @ A`` in float32, [rows, in_features] (ComfyUI's order of operations)."""
        return (strength * self.scale) * (self.up.float() @ self.down.float())

    def __repr__(self) -> str:
        return (
            f"LoraPatch({self.key!r} -> {self.component}.{self.target}[{self.offset}:{self.offset + self.rows}], "
            f"rank={self.rank}, scale={self.scale:g})"
        )


def _as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    if t.ndim == 4 and t.shape[2:] == (1, 1):
        t = t.flatten(1)
    return t if t.ndim == 2 else None


def _check_factors(slot: dict, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor, float] | str:
    if "down" not in slot or "up" not in slot:
        return f"needs both lora_down/lora_A and lora_up/lora_B, found only {'/'.join(sorted(slot))}"
    down, up = _as_matrix(slot["down"][1]), _as_matrix(slot["up"][1])
    if down is None or up is None:
        return f"factors must be matrices, got down {tuple(slot['down'][1].shape)}, up {tuple(slot['up'][1].shape)}"
    if not (down.is_floating_point() and up.is_floating_point()):
        return f"factors must be floating point, got {down.dtype} and {up.dtype}"
    rank = down.shape[0]
    if rank == 0 or up.shape[1] != rank:
        return f"rank mismatch: down {tuple(down.shape)}, up {tuple(up.shape)}"
    if down.shape[1] != spec.in_features or up.shape[0] != spec.out_rows:
        targets = ", ".join(s.target for s in spec.segments)
        return (
            f"shape mismatch: LoRA maps {down.shape[1]} -> {up.shape[0]} features, "
            f"{targets} maps {spec.in_features} -> {spec.out_rows}"
        )
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
        return "factors contain NaN or inf"
    scale = 1.0
    if "alpha" in slot:
        alpha = slot["alpha"][1]
        if alpha.numel() != 1 or not math.isfinite(float(alpha.float().reshape(()))):
            return f"alpha must be one finite number, got shape {tuple(alpha.shape)}"
        scale = float(alpha.float().reshape(())) / rank
    return down, up, scale


def _format_problems(problems: dict[str, str], what: str) -> str:
    lines = [f"  {key}: {reason}" for key, reason in sorted(problems.items())[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return f"{what} ({len(problems)} key{'s' if len(problems) != 1 else ''}):\n" + "\n".join(lines)


def parse_lora(
    state_dict: Mapping[str, torch.Tensor],
    transformer: nn.Module,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
) -> list[LoraPatch]:
    """Place every key of a LoRA state dict on the transformer or a text encoder (CLIP-L, T5). ``LoraError``
    otherwise."""
    if not state_dict:
        raise LoraError("the LoRA holds no tensors")
    problems: dict[str, str] = {}
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not torch.is_tensor(tensor):
            problems[str(key)] = "not a named tensor"
            continue
        match = _PAIR.match(key)
        if match:
            base, kind = match["base"], match["a"] or match["b"] or match["c"]
            role = "up" if kind in ("up", "B") else "down"
        elif key.endswith(".alpha"):
            base, role = key[: -len(".alpha")], "alpha"
        else:
            problems[key] = "not a LoRA factor or alpha (unsupported key type)"
            continue
        slot = groups.setdefault(base, {})
        if role in slot:
            problems[key] = f"a second {role} for {base!r} (first: {slot[role][0]})"
            continue
        slot[role] = (key, tensor)

    tables = {
        "transformer": _transformer_table(transformer),
        "text_encoder": _text_encoder_table(text_encoder) if text_encoder is not None else None,
        "text_encoder_2": _t5_table(text_encoder_2) if text_encoder_2 is not None else None,
    }
    models = {"transformer": transformer, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    patches: list[LoraPatch] = []
    for base, slot in groups.items():
        resolved = _resolve(base, tables)
        checked = resolved if isinstance(resolved, str) else _check_factors(slot, resolved[0])
        if isinstance(checked, str):
            for key, _ in slot.values():
                problems[key] = checked
            continue
        spec = resolved[0]
        down, up, scale = checked
        model = models[spec.component]
        for seg in spec.segments:
            patches.append(
                LoraPatch(
                    target=seg.target,
                    module=model.get_submodule(seg.target),
                    down=down,
                    up=up[seg.src : seg.src + seg.rows],
                    offset=seg.dst,
                    scale=scale,
                    key=base,
                    component=spec.component,
                    root=model,
                )
            )
    if problems:
        raise LoraError(_format_problems(problems, "LoRA keys that cannot be placed"), keys=sorted(problems))
    if not patches:
        raise LoraError("the LoRA holds no lora_down/lora_up pairs")
    return patches


# --------------------------------------------------------------------------------------------------- runtime


class _Strength:
    """One float shared by every adapter of a handle: switching strength is one assignment (eager code reads it;
    compiled code reads each adapter's ``strength`` buffer, which ``LoraHandle.set_strength`` updates in place)."""

    __slots__ = ("value",)

    def __init__(self, value: float):
        self.value = value


class _Adapter(nn.Module):
    """One handle's factors on one layer, as non-persistent buffers (they follow ``.to()``, stay out of state_dict)."""

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
        compiling = torch.compiler.is_compiling()
        strength = self.strength if compiling else self.cell.value
        full = out.shape[-1]
        for down_name, terms in self.layout:
            hidden = F.linear(x, self._buffers[down_name].to(device=x.device, dtype=x.dtype))
            for up_name, offset, rows, scale in terms:
                delta = F.linear(hidden, self._buffers[up_name].to(device=x.device, dtype=x.dtype))
                if compiling:  # the tensor strength (float32 math, fused by inductor): no guard on its value
                    delta = (delta.float() * (strength.to(delta.device) * scale)).to(out.dtype)
                else:
                    delta = (delta * (strength * scale)).to(out.dtype)
                if offset == 0 and rows == full:
                    out += delta
                else:
                    out[..., offset : offset + rows] += delta

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
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.adapters = nn.ModuleList()
        self._w0: torch.Tensor | None = None  # original weight while any adapter is fused
        self._home: tuple[nn.Module, str] | None = None  # (parent, attribute) it replaced base in

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (W0, or the fused weight while fused), for code that inspects ``.weight``."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        if torch.compiler.is_compiling():  # no branch on the strength's value: it would be guarded on, recompiling
            active = [a for a in self.adapters if not a.fused]
        else:  # eager: strength 0 skips the branch (bitwise the base output)
            active = [a for a in self.adapters if not a.fused and a.cell.value != 0.0]
        if not active:
            return out
        if torch.is_grad_enabled() and out.requires_grad:
            out = out.clone()
        for adapter in active:
            adapter.add_to(out, x)
        return out

    def fuse_error(self) -> str | None:
        """Why fusing into ``base`` is impossible, or None."""
        weight = getattr(self.base, "weight", None)
        if type(self.base) is not nn.Linear or type(weight) is not nn.Parameter:
            return f"{type(self.base).__name__} (quantized or custom layers are not fused; the runtime adapter works)"
        if weight.dtype not in _FUSABLE_DTYPES:
            return f"weight dtype {weight.dtype}"
        return None

    @torch.no_grad()
    def refresh_fused(self, original_device: torch.device | str = "cpu") -> None:
        """Rewrite ``base.weight`` as W0 plus every fused adapter's delta (or W0 itself, bitwise)."""
        fused = [a for a in self.adapters if a.fused]
        weight = self.base.weight
        if not fused:
            if self._w0 is not None:
                weight.copy_(self._w0)
                self._w0 = None
            return
        if self._w0 is None:
            self._w0 = weight.detach().to(original_device, copy=True)
        live = [a for a in fused if a.cell.value != 0.0]
        if not live:
            weight.copy_(self._w0)
            return
        # float32 weights are rebuilt in place (no allocation); others through a float32 scratch, then cast once
        acc = weight if weight.dtype == torch.float32 else torch.empty_like(weight, dtype=torch.float32)
        acc.copy_(self._w0)
        for adapter in live:
            strength = adapter.cell.value
            for p in adapter.patches:
                up = p.up.to(device=acc.device, dtype=torch.float32)
                down = p.down.to(device=acc.device, dtype=torch.float32)
                acc[p.offset : p.offset + p.rows].addmm_(up, down, alpha=strength * p.scale)
        if acc is not weight:
            weight.copy_(acc)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self._w0 is not None}"


class LoraHandle:
    """The LoRA installed by one ``apply_lora`` call: switch its strength, fuse/unfuse it, or remove it."""

    def __init__(self, wrappers: list[LoraLinear], adapters: list[_Adapter], cell: _Strength, patches):
        self._wrappers = wrappers
        self._adapters = adapters
        self._cell = cell
        self.patches = list(patches)
        self._fused = False
        self._original_device: torch.device | str = "cpu"
        self._removed = False

    @property
    def strength(self) -> float:
        return self._cell.value

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

    def set_strength(self, strength) -> None:
        """Any finite float in [-10, 10]. Unfused: one assignment. Fused: weights recomputed from W0 (no drift)."""
        value = check_strength(strength)
        self._live()
        self._cell.value = value
        _fill_strength(self._adapters, value)
        if self._fused:
            for wrapper in self._wrappers:
                wrapper.refresh_fused(self._original_device)

    def fuse(self, original_device: torch.device | str = "cpu") -> None:
        """Write the deltas into the base weights (plain nn.Linear only), keeping W0 on ``original_device``."""
        self._live()
        if self._fused:
            return
        bad = set()
        for wrapper, adapter in zip(self._wrappers, self._adapters, strict=True):
            reason = wrapper.fuse_error()
            if reason:
                bad.update(f"{p.component}.{p.target}: {reason}" for p in adapter.patches)
        bad = sorted(bad)
        if bad:
            raise LoraError("cannot fuse this LoRA into:\n  " + "\n  ".join(bad), keys=bad)
        self._original_device = original_device
        self._fused = True
        for adapter in self._adapters:
            adapter.fused = True
        for wrapper in self._wrappers:
            wrapper.refresh_fused(original_device)

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

    def __repr__(self) -> str:
        state = "removed" if self._removed else ("fused" if self._fused else "adapter")
        return f"LoraHandle({len(self._wrappers)} layers, strength={self.strength:g}, {state})"


def _adapter_dtype(base: nn.Module):
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype in _FUSABLE_DTYPES and type(weight) is nn.Parameter:
        return weight.device, weight.dtype
    device = weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")
    return device, None  # quantized base: keep the file's dtype, cast to the input's dtype per call


def apply_lora(models_or_patches, patches: Iterable[LoraPatch] | None = None, strength=1.0) -> LoraHandle:
    """Install patches as runtime adapters: ``apply_lora(models, patches, strength)`` or ``apply_lora(patches,
    strength=s)`` (the models are then the ones ``parse_lora`` was given, recorded in each patch's ``root``)."""
    value = check_strength(strength)
    if patches is None:  # apply_lora(patches, strength=...)
        patches = list(models_or_patches)
        if not all(isinstance(p, LoraPatch) for p in patches):
            raise TypeError("apply_lora(patches) needs LoraPatch objects; or call apply_lora(models, patches)")
        if any(p.root is None for p in patches):
            raise LoraError("patches without a root model: call apply_lora(models, patches)")
        models = list({id(p.root): p.root for p in patches}.values())
    else:
        first = models_or_patches
        models = [first] if isinstance(first, nn.Module) else list(first)
        patches = list(patches)
        if not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("apply_lora(models, patches): models must be nn.Module objects")
    if not patches:
        raise LoraError("apply_lora got no patches")
    patches = _redirect_fused_projections(patches, models)
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
        raise LoraError(_format_problems(problems, "cannot apply the LoRA to"), keys=sorted(problems))

    cell = _Strength(value)
    wrappers: list[LoraLinear] = []
    adapters: list[_Adapter] = []
    for wrapper, (parent, attr, module), group in groups.values():
        if wrapper is None:
            wrapper = LoraLinear(module)
            setattr(parent, attr, wrapper)
            wrapper._home = (parent, attr)
        device, dtype = _adapter_dtype(wrapper.base)
        adapter = _Adapter(group, cell, device, dtype)
        wrapper.adapters.append(adapter)
        wrappers.append(wrapper)
        adapters.append(adapter)
    return LoraHandle(wrappers, adapters, cell, patches)


# (unfused projections, the fused projection diffusers' fuse_projections() builds from them, rows in that order)
_FUSED_PROJECTIONS = (
    (("to_q", "to_k", "to_v"), "to_qkv"),
    (("add_q_proj", "add_k_proj", "add_v_proj"), "to_added_qkv"),
    (("to_k", "to_v"), "to_kv"),
)


def _unfused_projection_map(models: Iterable[nn.Module]) -> dict[int, tuple[nn.Module, str, int]]:
    """id(q/k/v linear, or its base) -> (the fused linear that replaced it in forward, its attribute, row offset), for
    every attention module whose projections diffusers fused (``fused_projections``)."""
    found: dict[int, tuple[nn.Module, str, int]] = {}
    for model in models:
        for module in model.modules():
            if not getattr(module, "fused_projections", False):
                continue
            for parts, fused_name in _FUSED_PROJECTIONS:
                fused = module._modules.get(fused_name)
                subs = [module._modules.get(n) for n in parts]
                if fused is None or any(sub is None for sub in subs):
                    continue
                if sum(sub.out_features for sub in subs) != fused.out_features:
                    continue
                offset = 0
                for sub in subs:
                    for m in (sub, sub.base) if isinstance(sub, LoraLinear) else (sub,):
                        found.setdefault(id(m), (fused, fused_name, offset))
                    offset += sub.out_features
    return found


def _redirect_fused_projections(patches: list[LoraPatch], models: Iterable[nn.Module]) -> list[LoraPatch]:
    """Patches on q/k/v projections that forward no longer uses (fused into ``to_qkv``) moved onto the fused linear at
    their row offsets; row-adjacent pieces of one key (a BFL ``qkv`` split in three) merged back into one patch."""
    fused_map = _unfused_projection_map(models)
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
        for parts, _ in _FUSED_PROJECTIONS[:2]:
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
        raise LoraError(_format_problems(problems, "cannot fuse the q/k/v projections of"), keys=sorted(problems))
    if not todo:
        return 0
    states = [(h, h.strength, h.fused, h._original_device, list(h.patches)) for h in handles]
    for h in handles:
        h.remove()
    transformer.fuse_qkv_projections()
    for h, strength, was_fused, device, patches in states:
        roots = {id(p.root): p.root for p in patches if p.root is not None}
        roots.setdefault(id(transformer), transformer)
        fresh = apply_lora(list(roots.values()), patches, strength)
        h.__dict__.update(fresh.__dict__)
        if was_fused:
            h.fuse(device)
    return len(todo)


def load_lora(
    path: str | Path, transformer: nn.Module, text_encoder: nn.Module | None = None, strength=1.0
) -> LoraHandle:
    """``load_lora_file`` + ``parse_lora`` + ``apply_lora`` in one call."""
    return apply_lora(parse_lora(load_lora_file(path), transformer, text_encoder), strength=strength)
