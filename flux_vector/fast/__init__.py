"""The fast mode: fused QKV projections, the best attention backend, regional torch.compile, fp8, CUDA graphs, an
opt-in step cache, each one switchable, chosen per device by a pure function and applied to a loaded pipeline.

``plan`` chooses (pure, tested for every GPU branch on the CPU), ``apply`` applies; ``fast=True`` on
``FluxVectorPipeline.from_pretrained`` runs both, the weight transforms (fused QKV, fp8) before offload is applied
and with the offload mode chosen for the transformer's size after them (``choose_fast_and_offload``).
"""

from .apply import (
    apply_fast,
    apply_runtime_switches,
    apply_weight_transforms,
    compile_cache_dir,
    enable_compile_cache,
    fp8_config,
    fp8_filter,
    fp8_saved_bytes,
    quantize_fp8,
    share_unfused_weights,
)
from .plan import (
    AUTO,
    DEFAULT_STEP_CACHE_THRESHOLD,
    FULL,
    SWITCHES,
    FastEnv,
    FastPlan,
    choose_fast_and_offload,
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
    "apply_runtime_switches",
    "apply_weight_transforms",
    "choose_fast_and_offload",
    "choose_fast_plan",
    "compile_cache_dir",
    "detect_env",
    "enable_compile_cache",
    "fp8_config",
    "fp8_filter",
    "fp8_saved_bytes",
    "quantize_fp8",
    "share_unfused_weights",
]
