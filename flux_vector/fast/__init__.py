"""The fast mode: fused QKV projections, the best attention backend, regional torch.compile, fp8, CUDA graphs, an
opt-in step cache, each one switchable, chosen per device by a pure function and applied to a loaded pipeline.

``plan`` chooses (pure, tested for every GPU branch on the CPU), ``apply`` applies; ``fast=True`` on
``FluxVectorPipeline.from_pretrained`` runs both.
"""

from .apply import apply_fast, compile_cache_dir, enable_compile_cache, fp8_filter, quantize_fp8, share_unfused_weights
from .plan import (
    AUTO,
    DEFAULT_STEP_CACHE_THRESHOLD,
    FULL,
    SWITCHES,
    FastEnv,
    FastPlan,
    choose_fast_plan,
    detect_env,
)

__all__ = [
    "AUTO",
    "DEFAULT_STEP_CACHE_THRESHOLD",
    "FULL",
    "SWITCHES",
    "FastEnv",
    "FastPlan",
    "apply_fast",
    "choose_fast_plan",
    "compile_cache_dir",
    "detect_env",
    "enable_compile_cache",
    "fp8_filter",
    "quantize_fp8",
    "share_unfused_weights",
]
