"""Where a LoRA key goes: every name a layer of this model can have in a LoRA file, mapped to its modules.

A table per model (transformer, CLIP-L, T5) holds each LoRA-able linear under its dotted module path and that path's
``_`` form (kohya). The transformer's table also holds the BFL/ComfyUI names (``double_blocks.0.img_attn.qkv``), whose
fused weights map onto row ranges of several diffusers linears (``Spec.segments``). Underscore names are resolved by
enumerating these names, never by guessing where the dots were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..bfl import layout
from ..fp8_linear import Fp8Linear
from ..gguf_model import GGUFLinear
from .adapter import LoraLinear
from .base import in_features, out_features


@dataclass(frozen=True)
class Segment:
    target: str  # module path inside its model
    src: int  # first row of this segment in the file's up matrix
    rows: int
    dst: int  # first row it patches in the target's output


@dataclass(frozen=True)
class Spec:
    component: str  # "transformer", "text_encoder" (CLIP-L) or "text_encoder_2" (T5)
    segments: tuple[Segment, ...]
    in_features: int
    out_rows: int  # rows the file's up matrix must have


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every linear (nn.Linear, its bitsandbytes subclasses Linear8bitLt and Linear4bit, the fp8
    tier's ``Fp8Linear``, a GGUF-quantized linear, or an installed LoraLinear)."""
    found: dict[str, nn.Module] = {}
    inside_wrappers: set[int] = set()
    for name, module in model.named_modules():  # pre-order: a wrapper comes before its base
        if id(module) in inside_wrappers:
            continue
        if isinstance(module, LoraLinear):
            inside_wrappers.update(id(m) for m in module.modules() if m is not module)
            found[name] = module
        elif isinstance(module, nn.Linear | Fp8Linear | GGUFLinear):
            found[name] = module
    return found


def _direct(component: str, name: str, module: nn.Module) -> Spec:
    rows = out_features(module)
    return Spec(component, (Segment(name, 0, rows, 0),), in_features(module), rows)


def _fused(linears: dict[str, nn.Module], targets: list[str]) -> Spec | None:
    if not all(t in linears for t in targets) or len({in_features(linears[t]) for t in targets}) != 1:
        return None
    segments, start = [], 0
    for t in targets:
        rows = out_features(linears[t])
        segments.append(Segment(t, start, rows, 0))
        start += rows
    return Spec("transformer", tuple(segments), in_features(linears[targets[0]]), start)


def _bfl_specs(transformer: nn.Module, linears: dict[str, nn.Module]) -> dict[str, Spec]:
    """Every BFL (ComfyUI) linear name of this model -> where its rows go in the diffusers modules. The names come
    from ``bfl.layout``, the one BFL <-> diffusers table (also used to convert single-file checkpoints)."""
    specs: dict[str, Spec] = {}
    num_double = len(getattr(transformer, "transformer_blocks", ()))
    num_single = len(getattr(transformer, "single_transformer_blocks", ()))
    for bfl, targets, kind in layout(num_double, num_single):
        if kind == "scale" or not all(t in linears for t in targets):
            continue
        if kind == "swap":  # BFL chunks (shift, scale), diffusers (scale, shift): the halves trade places
            module = linears[targets[0]]
            half = out_features(module) // 2
            segments = (Segment(targets[0], 0, half, half), Segment(targets[0], half, half, 0))
            specs[bfl] = Spec("transformer", segments, in_features(module), 2 * half)
        elif len(targets) == 1:
            specs[bfl] = _direct("transformer", targets[0], linears[targets[0]])
        elif (spec := _fused(linears, list(targets))) is not None:
            specs[bfl] = spec
    return specs


class Table:
    """Dotted and underscore names of one model's LoRA-able linears."""

    def __init__(self, dotted: dict[str, Spec]):
        self.dotted = dotted
        self.underscore: dict[str, Spec | None] = {}  # None: two dotted names share this underscore form
        for name, spec in dotted.items():
            key = name.replace(".", "_")
            self.underscore[key] = None if key in self.underscore else spec


def _transformer_table(transformer: nn.Module) -> Table:
    linears = _linear_modules(transformer)
    dotted = {name: _direct("transformer", name, m) for name, m in linears.items()}
    for name, spec in _bfl_specs(transformer, linears).items():
        assert name not in dotted, f"BFL name {name} collides with a diffusers module name"
        dotted[name] = spec
    return Table(dotted)


def _t5_table(text_encoder_2: nn.Module) -> Table:
    """T5 linears under their module names (``encoder.block.0.layer.0.SelfAttention.q``)."""
    return Table({name: _direct("text_encoder_2", name, m) for name, m in _linear_modules(text_encoder_2).items()})


def _text_encoder_table(text_encoder: nn.Module) -> Table:
    """CLIP linears under their module names and their transformers-4 names (``text_model.encoder...``, the names
    kohya and diffusers LoRAs were written with; transformers 5's CLIPTextModel dropped the ``text_model`` level)."""
    dotted: dict[str, Spec] = {}
    for name, module in _linear_modules(text_encoder).items():
        spec = _direct("text_encoder", name, module)
        dotted[name] = spec
        alias = name.removeprefix("text_model.") if name.startswith("text_model.") else f"text_model.{name}"
        dotted.setdefault(alias, spec)
    return Table(dotted)


# Key prefixes, longest first where one is a prefix of another.
_TE_UNDERSCORE = ("lora_te1_", "lora_te_")
_TE_DOTTED = ("text_encoder.",)
_T5_UNDERSCORE = ("lora_te2_", "lora_te3_")
_T5_DOTTED = ("text_encoder_2.",)
_TR_UNDERSCORE = ("lora_unet_", "lora_transformer_", "lycoris_")
_TR_DOTTED = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def resolve(base: str, tables: dict[str, Table | None]) -> tuple[Spec, str] | str:
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
        names: Mapping[str, Spec | None] = table.underscore if underscore else table.dotted
        if rest not in names:
            continue
        spec = names[rest]
        if spec is None:
            return f"ambiguous underscore name {rest!r}"
        return spec, rest
    which, rest, _ = candidates[0]
    return f"no LoRA-able linear named {rest!r} in the {_COMPONENT_NAMES[which]}"


_COMPONENT_NAMES = {"transformer": "transformer", "text_encoder": "text encoder", "text_encoder_2": "T5 text encoder"}


def build_tables(
    transformer: nn.Module, text_encoder: nn.Module | None, text_encoder_2: nn.Module | None
) -> dict[str, Table | None]:
    return {
        "transformer": _transformer_table(transformer),
        "text_encoder": _text_encoder_table(text_encoder) if text_encoder is not None else None,
        "text_encoder_2": _t5_table(text_encoder_2) if text_encoder_2 is not None else None,
    }
