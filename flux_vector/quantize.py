"""8-bit weights with bitsandbytes, applied to already-loaded modules.

diffusers' quantized loader refuses without a GPU ("No GPU found"), so the transformer is loaded normally and its
linears are swapped for ``bnb.nn.Linear8bitLt`` here; moving the module to its device quantizes the weights
(int8 rows + scales, LLM.int8 outlier threshold 6.0). The same route works on CPU and CUDA.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's parsers read QUANTIZE_CHOICES without it
    import torch
    from torch import nn

# The tiers ``quantize`` takes (None means "none"; memory_tiers.AUTO, "auto", chooses among them). Issue 30 helper A's
# branch adds "nf4" and "fp8" and imports torch lazily in this module (the CLI's parsers read these names without
# torch): take its lines on merge.
QUANTIZE_CHOICES = ("none", "8bit")
# Small or precision-critical layers stay in full precision, as diffusers' bnb integration keeps proj_out.
KEEP_FULL_PRECISION = ("proj_out", "x_embedder", "context_embedder", "norm_out.linear")
# T5's feed-forward output layers (``...DenseReluDense.wo``) stay in full precision in the text encoder's tiers,
# matched by the last name component (helper A's quantize_text_encoder; memory_tiers counts them so).
T5_KEEP_FULL_PRECISION = ("wo",)


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


def quantize_linears_8bit(model: nn.Module, device: torch.device | str, keep: tuple[str, ...] = KEEP_FULL_PRECISION):
    """Replace every ``nn.Linear`` of ``model`` (but ``keep``) by an int8 ``Linear8bitLt`` on ``device``."""
    from torch import nn

    from .quiet import import_bitsandbytes

    log_matmul_warnings_once()
    bnb = import_bitsandbytes()
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not nn.Linear or full in keep:
                continue
            quantized = bnb.nn.Linear8bitLt(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                has_fp16_weights=False,
                threshold=6.0,
            )
            # Int8Params quantizes when it moves from the CPU to a device; weights already on the device would
            # stay unquantized (bf16 data, no CB/SCB), so they start from a CPU copy.
            data = child.weight.data if child.weight.device.type == "cpu" else child.weight.data.cpu()
            quantized.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, quantized.to(device))
            replaced += 1
    if replaced == 0:
        raise ValueError("quantize='8bit' found no nn.Linear layers to quantize")
    return replaced


def is_quantized(model: nn.Module) -> bool:
    bnb = sys.modules.get("bitsandbytes")  # never imported: nothing can be 8-bit (and importing it calls the Hub)
    if bnb is None:
        return False
    return any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
