"""The GGUF transformer tier: a FLUX transformer read from a ``.gguf`` file (``flux1-dev-Q8_0.gguf``, ``-Q4_1``,
``-Q4_K_S``, ... in city96's layout: ``general.architecture`` "flux", BFL tensor names, with or without ComfyUI's
``model.diffusion_model.`` prefix; small and 1-D tensors in F32/F16/BF16, the big weights quantized).

* Names go through the one BFL table (``bfl.from_bfl``), which splits the fused ``qkv`` / ``linear1`` rows by the
  target model's own sizes, so any width loads (the tiny model included; diffusers' single-file converter hard-codes
  the 12B sizes). A quantized tensor is kept as its raw bytes, ``[rows, bytes_per_row]`` uint8: GGUF quantizes each
  row on its own (blocks run along a row), so splitting rows of the bytes is splitting rows of the matrix.
* Every quantized linear becomes a ``GGUFLinear``: the bytes stay as they are (a plain uint8 parameter, so ``.to``,
  offload hooks and ``module_bytes`` see an ordinary tensor) and are dequantized per forward, with diffusers'
  dequantization functions (``diffusers.quantizers.gguf.utils``), into the input's dtype. The quant types are the
  ones diffusers dequantizes (``SUPPORTED_GGUF_QUANT_TYPES``); F32/F16/BF16 tensors load as plain weights.
* Offload: the bytes are plain uint8 parameters, so every offload mode moves them like any weights (diffusers' group
  offload and accelerate's sequential offload rebuild them as uint8; ``module.to(dtype)`` leaves them alone) and
  ``offload.offload_plan`` treats a GGUF transformer as a float one; ``module_bytes`` counts the quantized bytes,
  so ``--offload auto`` weighs the file's real size.
* ``write_flux_gguf`` writes such a file (tests, or a user making a small file) with ``gguf.GGUFWriter`` and
  ``gguf.quants``.

The ``gguf`` package (and diffusers' GGUF helpers) are imported only when a ``.gguf`` is read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GGUF_SUFFIX = ".gguf"
ARCHITECTURE = "flux"
TIER = "gguf"
# city96's convention: 1-D tensors and tensors this small stay in float (F32) whatever the file's quant type.
SMALL_TENSOR = 1024
# The prefix ComfyUI-style files carry (``bfl.PREFIXES`` reads it back).
COMFY_PREFIX = "model.diffusion_model."


class GGUFError(ValueError):
    """A .gguf file this tier cannot load; the message names the file and, where one is at fault, the tensor."""


def is_gguf_file(model: str | Path) -> bool:
    return Path(model).suffix.lower() == GGUF_SUFFIX


def _ggml_types():
    import gguf

    return gguf.GGMLQuantizationType


def _diffusers_gguf():
    """``diffusers.quantizers.gguf.utils``, imported without bitsandbytes (whose import calls the Hub: quiet.py)."""
    from .quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()
    from diffusers.quantizers.gguf import utils

    return utils


def float_types() -> dict[Any, torch.dtype]:
    """GGML types that are plain floats, with their torch dtype."""
    types = _ggml_types()
    return {types.F32: torch.float32, types.F16: torch.float16, types.BF16: torch.bfloat16}


def supported_quant_types() -> tuple[Any, ...]:
    """The quantized types diffusers dequantizes (``SUPPORTED_GGUF_QUANT_TYPES``), less the float BF16."""
    return tuple(t for t in _diffusers_gguf().SUPPORTED_GGUF_QUANT_TYPES if t not in float_types())


def dequantize(data: torch.Tensor, quant_type: Any, dtype: torch.dtype) -> torch.Tensor:
    """``[rows, bytes_per_row]`` uint8 of ``quant_type`` -> ``[rows, columns]`` in ``dtype``; diffusers' per-type
    block functions do the math (in float32, cast once)."""
    utils = _diffusers_gguf()
    block_size, type_size = utils.GGML_QUANT_SIZES[quant_type]
    rows, row_bytes = data.shape
    blocks = data.reshape(-1, type_size)
    values = utils.dequantize_functions[quant_type](blocks, block_size, type_size, torch.float32)
    return values.reshape(rows, row_bytes // type_size * block_size).to(dtype)


class GGUFLinear(nn.Module):
    """A linear whose weight stays GGUF-quantized (``weight``: ``[out, bytes_per_row]`` uint8) and is dequantized on
    every call into the input's dtype. ``in_features``/``out_features`` as ``nn.Linear``, so the LoRA tables and the
    runtime adapter (``lora.LoraLinear``) find and wrap it; it is never fused into (its weight is not a float)."""

    def __init__(self, in_features: int, out_features: int, quant_type: Any, weight: torch.Tensor, bias=None):
        super().__init__()
        self.in_features, self.out_features, self.quant_type = in_features, out_features, quant_type
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, self.quant_type, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type.name}"


def gguf_layers(model: nn.Module) -> list[GGUFLinear]:
    return [m for m in model.modules() if isinstance(m, GGUFLinear)]


# ------------------------------------------------------------------------------------------------------ reading
@dataclass
class GGUFFile:
    """What a .gguf file holds: its BFL-named tensors (floats as torch tensors, quantized ones as uint8 bytes),
    the quant type of each quantized one, and the byte counts the log reports."""

    path: Path
    tensors: dict[str, torch.Tensor]
    quant_types: dict[str, Any]  # tensor name -> GGMLQuantizationType, quantized tensors only
    type_counts: dict[str, int] = field(default_factory=dict)  # "Q8_0" -> how many tensors
    file_bytes: int = 0

    def describe(self) -> str:
        types = ", ".join(f"{n} {name}" for name, n in sorted(self.type_counts.items(), key=lambda kv: -kv[1]))
        return f"{self.path.name}: {len(self.tensors)} tensors ({types}), {self.file_bytes / 1024**2:.1f} MiB"


def _architecture(reader) -> str | None:
    fld = reader.fields.get("general.architecture")
    if fld is None:
        return None
    try:
        return str(fld.contents())
    except Exception:  # older gguf readers: the string is the last part
        return bytes(fld.parts[-1]).decode("utf-8", "replace")


def read_gguf(path: str | Path) -> GGUFFile:
    """Read a FLUX transformer .gguf (see the module doc); ``GGUFError`` for a file that is not GGUF, another
    architecture, or a tensor type diffusers cannot dequantize (named, with its type)."""
    import numpy as np
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # bad magic, truncated header, ...
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = _architecture(reader)
    if arch is not None and arch != ARCHITECTURE:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; a FLUX transformer GGUF says {ARCHITECTURE!r}")
    floats, quantized = float_types(), supported_quant_types()
    tensors: dict[str, torch.Tensor] = {}
    quant_types: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for t in reader.tensors:
        kind = t.tensor_type
        if kind in floats:
            data = np.array(t.data)  # own memory (the reader's arrays are read-only views of a memmap)
            tensor = torch.from_numpy(data)
            if kind == _ggml_types().BF16:  # the reader gives BF16 as raw bytes
                tensor = tensor.view(torch.bfloat16)
            tensor = tensor.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        elif kind in quantized:
            tensor = torch.from_numpy(np.array(t.data)).view(torch.uint8)
            if tensor.dim() != 2:
                raise GGUFError(
                    f"{path}: tensor {t.name} is {kind.name} with {tensor.dim()} dimensions; only quantized 2-D "
                    "weights (linears) are supported"
                )
            quant_types[t.name] = kind
        else:
            names = ", ".join(q.name for q in (*floats, *quantized))
            raise GGUFError(
                f"{path}: tensor {t.name} is {kind.name}, a type diffusers cannot dequantize (supported: {names})"
            )
        tensors[t.name] = tensor
        counts[kind.name] = counts.get(kind.name, 0) + 1
    if not tensors:
        raise GGUFError(f"{path}: the GGUF file holds no tensors")
    return GGUFFile(path, tensors, quant_types, counts, path.stat().st_size)


# ------------------------------------------------------------------------------------------------------ loading
def _target_quant_types(file: GGUFFile, config) -> dict[str, Any]:
    """diffusers weight name -> quant type, through the BFL table (a fused BFL tensor's type goes to each part)."""
    from .bfl import PREFIXES, layout

    def bare(name: str) -> str:
        for prefix in PREFIXES:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    types = {bare(k): v for k, v in file.quant_types.items()}
    out: dict[str, Any] = {}
    for bfl, names, kind in layout(config.num_layers, config.num_single_layers):
        qtype = types.get(f"{bfl}.weight")
        if qtype is None:
            continue
        if kind == "scale":
            raise GGUFError(f"{file.path}: {bfl}.scale is quantized ({qtype.name}); RMSNorm scales must be float")
        out.update({f"{n}.weight": qtype for n in names})
    return out


def load_gguf_transformer(
    path: str | Path, config: str | Path | Mapping[str, Any], dtype: torch.dtype, log: Callable[[str], None] = print
):
    """A diffusers FluxTransformer2DModel from a .gguf file, its config a diffusers folder or the config itself (the
    shipped FLUX.1-dev one, ``single_file/``): quantized linears as ``GGUFLinear``, every other weight in ``dtype``."""
    from accelerate import init_empty_weights

    from .bfl import from_bfl
    from .quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()  # no Hub request at import (quiet.py)
    from diffusers import FluxTransformer2DModel

    file = read_gguf(path)
    if not isinstance(config, Mapping):
        config = FluxTransformer2DModel.load_config(config, subfolder="transformer")
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    qtypes = _target_quant_types(file, model.config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        # from_bfl compares rows only: a quantized tensor's rows are the matrix's rows
        converted = from_bfl(file.tensors, model)
    except ValueError as exc:
        raise GGUFError(f"{file.path}: {exc}") from exc
    from gguf import GGML_QUANT_SIZES

    state: dict[str, torch.Tensor] = {}
    for name, tensor in converted.items():
        qtype = qtypes.get(name)
        if qtype is None:
            if tuple(tensor.shape) != shapes[name]:
                raise GGUFError(f"{file.path}: {name} is {tuple(tensor.shape)}, the model needs {shapes[name]}")
            state[name] = tensor.to(dtype)
            continue
        module_name = name.removesuffix(".weight")
        module = model.get_submodule(module_name)
        if not isinstance(module, nn.Linear):
            raise GGUFError(f"{file.path}: {name} is quantized ({qtype.name}) but {module_name} is not a linear")
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        want = (module.out_features, module.in_features // block_size * type_size)
        if module.in_features % block_size or tuple(tensor.shape) != want:
            raise GGUFError(
                f"{file.path}: {name} ({qtype.name}) holds {tuple(tensor.shape)} bytes; {module_name} "
                f"({module.in_features} -> {module.out_features}) needs {want}"
            )
        layer = GGUFLinear(module.in_features, module.out_features, qtype, tensor.contiguous())
        parent_name, _, attr = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer)
        bias = converted.get(f"{module_name}.bias")
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    bias_names = {f"{n.removesuffix('.weight')}.bias" for n in qtypes}
    state = {k: v for k, v in state.items() if k not in bias_names}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    left = [k for k in missing if not _is_gguf_param(model, k)]
    if left or unexpected:  # from_bfl has already named any missing tensor; this is a bug guard
        raise GGUFError(f"{file.path}: weights not placed: {sorted(left)[:5]}, unexpected: {sorted(unexpected)[:5]}")
    log(f"gguf: {file.describe()}; {len(gguf_layers(model))} linears kept quantized, dequantized per call")
    return model.eval()


def _is_gguf_param(model: nn.Module, name: str) -> bool:
    module_name = name.rpartition(".")[0]
    return isinstance(model.get_submodule(module_name), GGUFLinear)


def check_quantize_for_gguf(quantize: str | None) -> None:
    """A .gguf transformer is a tier of its own: ``quantize`` must be None, "auto" (the default: auto then picks only
    the offload) or "none"."""
    if quantize not in (None, "auto", "none"):
        raise ValueError(
            f"quantize={quantize!r} with a .gguf model: a GGUF file is already quantized (its own tier); use "
            "quantize=None (--quantize auto or none), or a bf16 / diffusers model to quantize"
        )


def fast_for_gguf(fast: bool | Mapping[str, Any] | None, full: Mapping[str, Any]) -> bool | Mapping[str, Any] | None:
    """The fast mode's switches for a GGUF transformer (``full``: the whole mode's switches, ``fast.FULL``): fused
    QKV concatenates float weights and fp8 replaces them, neither applies to quantized bytes, so both are off (asked
    for explicitly: an error); the rest is unchanged."""
    if not fast:
        return fast
    switches = dict(full) if fast is True else dict(fast)
    for name in ("fuse_qkv", "fp8"):
        if switches.get(name) is True:
            raise ValueError(f"fast switch {name}=True with a .gguf model: GGUF weights stay quantized (use False)")
        switches[name] = False
    return switches


# ------------------------------------------------------------------------------------------------------ writing
def _quant_type(name: str):
    types = _ggml_types()
    try:
        return types[name.upper()]
    except KeyError:
        raise ValueError(f"qtype={name!r} is not a GGML type name (e.g. Q8_0, Q4_1, Q4_0, Q5_1, BF16, F16)") from None


def _keep_float(name: str, shape: tuple[int, ...], block_size: int) -> bool:
    """city96's convention: 1-D and small tensors stay F32; so does a matrix whose rows are not whole blocks."""
    numel = 1
    for d in shape:
        numel *= d
    return len(shape) != 2 or numel < SMALL_TENSOR or shape[-1] % block_size != 0


def write_flux_gguf(
    source: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    qtype: str = "Q8_0",
    *,
    prefix: str = "",
    keep_float: Callable[[str, tuple[int, ...]], bool] | None = None,
) -> dict[str, int]:
    """Write a FLUX transformer as a city96-layout .gguf: ``source`` a diffusers FluxTransformer2DModel (converted
    to BFL names) or a BFL state dict; ``qtype`` any type ``gguf.quants`` quantizes (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
    BF16, F16, F32); ``prefix`` e.g. ``COMFY_PREFIX``; ``keep_float(name, shape)`` True keeps more tensors F32.
    Returns the count of tensors per type written."""
    import gguf
    import numpy as np
    from gguf.quants import quantize

    from .bfl import to_bfl

    if isinstance(source, nn.Module):
        config: Any = source.config
        plain = {k.replace(".base.", "."): v for k, v in source.state_dict().items()}  # LoRA wrappers' base weights
        bfl = to_bfl(plain, config.num_layers, config.num_single_layers)
    else:
        bfl = dict(source)
    target = _quant_type(qtype)
    block_size, _ = gguf.GGML_QUANT_SIZES[target]
    writer = gguf.GGUFWriter(str(path), arch=ARCHITECTURE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    counts: dict[str, int] = {}
    for name, tensor in bfl.items():
        array = tensor.detach().float().cpu().numpy()
        shape = tuple(array.shape)
        kind = target
        if _keep_float(name, shape, block_size) or (keep_float is not None and keep_float(name, shape)):
            kind = gguf.GGMLQuantizationType.F32
        data = quantize(np.ascontiguousarray(array), kind)
        writer.add_tensor(prefix + name, data, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
