"""Weight tiers (``none | 8bit | nf4 | fp8``), applied to already-loaded modules: the one source of truth for them.

diffusers' quantized loader refuses without a GPU ("No GPU found"), so the models are loaded normally and their
``nn.Linear`` layers are swapped here; the same route works on the CPU and on CUDA. Every tier keeps
``KEEP_FULL_PRECISION`` (small or precision-critical layers, as diffusers' bnb integration keeps ``proj_out``) and
everything that is not a linear (norms, embeddings) in the pipeline dtype.

* ``8bit``: bitsandbytes ``Linear8bitLt`` (LLM.int8: int8 rows + one fp32 scale per row, outlier threshold 6.0).
  Moving the layer to its device quantizes it.
* ``nf4``: bitsandbytes ``Linear4bit`` / ``Params4bit`` with ``quant_type="nf4"``, ``blocksize=64``, compute dtype =
  the pipeline dtype, no double quantization (``compress_statistics=False``, diffusers' ``BitsAndBytesConfig``
  default): 0.5 byte per weight plus one fp32 absmax per 64 weights (``NF4_BLOCKSIZE``). Quantized on ``.to(device)``,
  the CPU included.
* ``fp8``: fp8 storage, computation in the pipeline dtype, as ComfyUI's ``fp8_e4m3fn`` weight dtype:
  ``fp8_linear.Fp8Linear`` stores its weight as ``torch.float8_e4m3fn`` (1 byte per weight, no scale), values
  saturated to +-448 (the e4m3 finite maximum; torch's cast would turn larger values into NaN), and casts it to the
  input's dtype per call. Any device, the CPU included. A linear whose weight is already ``float8_e4m3fn`` (an fp8
  checkpoint file read as it is) is wrapped without a copy: its values are kept bit for bit; so is a kept
  (``KEEP_FULL_PRECISION``) linear with fp8 weights, in every tier (it could not compute as a plain linear).

bitsandbytes layers (8bit, nf4) stay on the device they were quantized on: offload hooks move modules with
``_apply``, which swaps ``param.data`` and leaves ``Int8Params.CB/SCB`` and ``Params4bit.quant_state`` on the old
device (``offload.offload_plan``: such a component is kept resident). ``Fp8Linear`` holds plain tensors and is moved
and offloaded like any layer.

The T5 text encoder has its own tier (``quantize_text_encoder``): its feed-forward output ``wo`` layers stay in the
pipeline dtype in every tier, as transformers' bitsandbytes integration keeps them (``T5_KEEP_FULL_PRECISION``): T5's
``wo`` overflows in float16 (transformers keeps it in float32 there) and T5's forward casts its input to
``wo.weight.dtype``, which for a quantized ``wo`` (uint8 nf4 storage, fp8) would quantize the activations.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's parsers read QUANTIZE_CHOICES without it
    import torch
    from torch import nn

QUANTIZE_CHOICES = ("none", "8bit", "nf4", "fp8")  # None means "none"
BITSANDBYTES_TIERS = ("8bit", "nf4")  # their layers cannot be moved by offload hooks: kept on the device
NF4_BLOCKSIZE = 64  # weights per fp32 absmax
# Small or precision-critical layers stay in full precision, as diffusers' bnb integration keeps proj_out.
KEEP_FULL_PRECISION = ("proj_out", "x_embedder", "context_embedder", "norm_out.linear")
# T5's feed-forward output layers (``...DenseReluDense.wo``), matched by the last name component (module doc).
T5_KEEP_FULL_PRECISION = ("wo",)
TIER_WORDS = {
    "none": "unquantized",
    "8bit": "bitsandbytes int8",
    "nf4": "bitsandbytes nf4 (4-bit, blocksize 64)",
    "fp8": "fp8 e4m3 storage",
}


def check_quantize(value: object, field: str = "quantize") -> str:
    """``value`` as a tier name (None -> "none"); ``ValueError`` naming ``field`` and the allowed values."""
    if value is None:
        return "none"
    if not isinstance(value, str) or value not in QUANTIZE_CHOICES:
        allowed = ", ".join(repr(c) for c in QUANTIZE_CHOICES)
        raise ValueError(f"{field}={value!r} is not allowed; {field} must be None or one of {allowed}")
    return value


# bitsandbytes logs "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16 during quantization" on every
# int8 matmul (every layer, every step); this logger shows each distinct message once.
BNB_MATMUL_LOGGER = "bitsandbytes.autograd._functions"


class OnceFilter(logging.Filter):
    """Let each distinct message through once (the first time), drop its repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def log_matmul_warnings_once() -> None:
    """Install ``OnceFilter`` on bitsandbytes' int8 matmul logger (idempotent)."""
    logger = logging.getLogger(BNB_MATMUL_LOGGER)
    if not any(isinstance(f, OnceFilter) for f in logger.filters):
        logger.addFilter(OnceFilter())


# ----------------------------------------------------------------------------------------------- replacing


def _linears(model: nn.Module, keep: tuple[str, ...], keep_leaves: tuple[str, ...]) -> Iterator[tuple]:
    """(parent, attribute, linear, kept) for every plain ``nn.Linear`` of ``model`` not kept in full precision
    (``kept`` False). ``keep``: full module names; ``keep_leaves``: last name components (T5's ``wo``). A kept linear
    whose weight is already fp8 is yielded too (``kept`` True): it cannot compute as a plain linear, and every tier
    wraps it as an ``Fp8Linear`` as it is."""
    from torch import nn

    from .fp8_linear import FP8_DTYPE

    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not nn.Linear:
                continue
            kept = full in keep or name in keep_leaves
            if kept and child.weight.dtype != FP8_DTYPE:
                continue
            yield parent, name, child, kept


def _float_weight(linear: nn.Linear, dtype: torch.dtype | None) -> torch.Tensor:
    """The weight on the CPU in a float dtype bitsandbytes quantizes from (an fp8 weight upcast, exactly)."""
    import torch

    from .fp8_linear import FP8_DTYPE

    data = linear.weight.data if linear.weight.device.type == "cpu" else linear.weight.data.cpu()
    if data.dtype == FP8_DTYPE:
        data = data.to(dtype or torch.bfloat16)
    return data


def _bnb_layer(tier: str, linear: nn.Linear, dtype: torch.dtype | None) -> nn.Module:
    from torch import nn

    from .quiet import import_bitsandbytes

    bnb = import_bitsandbytes()
    data = _float_weight(linear, dtype)
    compute = dtype or data.dtype
    has_bias = linear.bias is not None
    layer: Any  # bitsandbytes' layers (untyped)
    if tier == "8bit":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
        )
        # Int8Params quantizes when it moves from the CPU to a device; weights already on the device would stay
        # unquantized (bf16 data, no CB/SCB), so they start from a CPU copy.
        layer.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=compute,
            compress_statistics=False,
            quant_type="nf4",
        )
        layer.weight = bnb.nn.Params4bit(
            data.to(compute), requires_grad=False, compress_statistics=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE
        )
        if linear.in_features % NF4_BLOCKSIZE:
            # bitsandbytes' AVX512-bf16 CPU path repacks the weight at the first forward assuming whole blocks per
            # row (absmax reshaped to [out, in // blocksize]): narrower rows (the tiny model's) take the generic path
            layer.support_avx512bf16_for_cpu = False
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.to(compute), requires_grad=False)
    return layer


def quantize_linears(
    model: nn.Module,
    tier: str,
    device: torch.device | str,
    *,
    keep: tuple[str, ...] = KEEP_FULL_PRECISION,
    keep_leaves: tuple[str, ...] = (),
    dtype: torch.dtype | None = None,
) -> int:
    """Replace the plain linears of ``model`` (but ``keep``/``keep_leaves``) by ``tier``'s layers; returns how many.
    bitsandbytes layers are created on ``device`` (quantized there, and they stay there); ``Fp8Linear`` layers stay
    where the weights are (they move with the model). ``dtype``: the compute dtype (default: each weight's).
    ``ValueError`` when the tier is "none" or nothing was replaced (never a silent no-op)."""
    from .fp8_linear import Fp8Linear

    tier = check_quantize(tier)
    if tier == "none":
        raise ValueError("quantize_linears needs a tier other than 'none'")
    if tier == "8bit":
        log_matmul_warnings_once()
    replaced = 0
    for parent, name, child, kept in list(_linears(model, keep, keep_leaves)):
        fp8 = tier == "fp8" or kept  # a kept linear here has fp8 weights (``_linears``)
        layer = Fp8Linear.from_linear(child) if fp8 else _bnb_layer(tier, child, dtype).to(device)
        setattr(parent, name, layer)
        replaced += 1
    if replaced == 0:
        raise ValueError(f"quantize={tier!r} found no nn.Linear layers to quantize")
    return replaced


def quantize_linears_8bit(model: nn.Module, device: torch.device | str, keep: tuple[str, ...] = KEEP_FULL_PRECISION):
    """Replace every ``nn.Linear`` of ``model`` (but ``keep``) by an int8 ``Linear8bitLt`` on ``device``."""
    return quantize_linears(model, "8bit", device, keep=keep)


def quantize_transformer(transformer: nn.Module, tier: str, device: torch.device | str) -> int:
    """The FLUX transformer's linears in ``tier`` (``KEEP_FULL_PRECISION`` kept); 0 for "none"."""
    if check_quantize(tier) == "none":
        return 0
    return quantize_linears(transformer, tier, device, keep=KEEP_FULL_PRECISION, dtype=_dtype_of(transformer))


def quantize_text_encoder(text_encoder_2: nn.Module, tier: str, device: torch.device | str) -> int:
    """The T5 encoder's linears in ``tier``, its ``wo`` layers kept (module doc); 0 for "none"."""
    if check_quantize(tier, "quantize_text") == "none":
        return 0
    return quantize_linears(
        text_encoder_2, tier, device, keep=(), keep_leaves=T5_KEEP_FULL_PRECISION, dtype=_dtype_of(text_encoder_2)
    )


def _dtype_of(model: nn.Module) -> torch.dtype | None:
    """The model's float dtype (its first non-fp8 floating parameter), the tiers' compute dtype."""
    from .fp8_linear import FP8_DTYPE

    for p in model.parameters():
        if p.is_floating_point() and p.dtype != FP8_DTYPE:
            return p.dtype
    return None


# ----------------------------------------------------------------------------------------------- inspecting


def _bnb_types() -> tuple[type, ...]:
    bnb = sys.modules.get("bitsandbytes")  # never imported: nothing can be bnb (and importing it calls the Hub)
    if bnb is None:
        return ()
    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def is_bitsandbytes_layer(module: nn.Module) -> bool:
    """A bitsandbytes int8/nf4 layer (placed when quantized; offload hooks must not move it)."""
    types = _bnb_types()
    return bool(types) and isinstance(module, types)


def quantized_tier(model: nn.Module | None) -> str | None:
    """The tier of ``model``'s quantized linears ("8bit", "nf4", "fp8"), None when it has none. A bitsandbytes tier
    wins over fp8: an 8bit/nf4 model read from an fp8 file keeps its kept layers as ``Fp8Linear``."""
    if model is None:
        return None
    from .fp8_linear import Fp8Linear

    bnb = sys.modules.get("bitsandbytes")
    found = None
    for m in model.modules():
        if bnb is not None and isinstance(m, bnb.nn.Linear8bitLt):
            return "8bit"
        if bnb is not None and isinstance(m, bnb.nn.Linear4bit):
            return "nf4"
        if isinstance(m, Fp8Linear):
            found = "fp8"
    return found


def is_quantized(model: nn.Module) -> bool:
    """Any tier: the model has int8, nf4 or fp8 linears."""
    return quantized_tier(model) is not None


def stays_resident(model: nn.Module | None) -> bool:
    """The model holds bitsandbytes layers, which offload hooks cannot move (module doc): keep it on the device."""
    return model is not None and any(is_bitsandbytes_layer(m) for m in model.modules())


def quantize_components(
    transformer: nn.Module,
    tier: str,
    text_encoder_2: nn.Module | None,
    text_tier: str,
    device: torch.device | str,
    text_device: torch.device | str,
) -> list[str]:
    """Quantize the transformer to ``tier`` (bitsandbytes layers on ``device``) and the T5 encoder to ``text_tier``
    (on ``text_device``); returns one line per quantized component for the log: the tier and the weights' bytes."""
    from .offload import module_bytes

    lines = []
    for name, model, wanted, where, quantize in (
        ("transformer", transformer, tier, device, quantize_transformer),
        ("T5 text encoder", text_encoder_2, text_tier, text_device, quantize_text_encoder),
    ):
        if model is None or wanted == "none":
            continue
        before = module_bytes(model)
        count = quantize(model, wanted, where)
        lines.append(
            f"{name}: {count} linears in {TIER_WORDS[wanted]}, weights {human_bytes(before)} -> "
            f"{human_bytes(module_bytes(model))}"
        )
    return lines


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
