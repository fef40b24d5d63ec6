"""Applying a fast plan to a loaded pipeline (``apply_fast``): the weight transforms (fused QKV, fp8: new parameters,
applied before offload) then the runtime switches (the attention backend, the step cache, regional torch.compile),
timing each part. Compilation itself happens on the first generation;
``FluxVectorPipeline.warmup`` measures it (first call minus a warm call).

Compilation is regional (diffusers' ``compile_repeated_blocks``: the 19 double and 38 single blocks share a few
compiled graphs) with inductor's FX graph cache in ``<flux_vector cache>/inductor`` so later processes reuse it.
The LoRA adapter reads its strength from a buffer under compile: switching strength never recompiles.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import torch

from .plan import FastPlan

RECOMPILE_LIMIT = 64  # image sizes and the first single block's input layout each give a graph; 8 is too few
# Linears kept in bf16 under fp8: the embedders and the output head (outside the blocks) are small and precision
# critical; so are the blocks' adaLN modulation linears (``norm*``).
FP8_KEEP = ("x_embedder", "context_embedder", "norm_out", "time_text_embed")


def compile_cache_dir() -> str:
    """Where inductor keeps compiled graphs: $TORCHINDUCTOR_CACHE_DIR when the user set it, else
    ``<flux_vector cache>/inductor``. (torch writes its own default, /tmp/torchinductor_<user>, into that variable
    the first time anything asks, e.g. while diffusers imports: that value does not count as the user's.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    from ..cache import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(torch_default()):
        return current
    return str(default_cache_dir() / "inductor")


def enable_compile_cache() -> str:
    """Turn on inductor's on-disk FX graph (and AOT autograd) cache under our cache folder, so a second process
    reuses the first one's compiled kernels. Returns the folder."""
    import torch._inductor.config as inductor_config

    folder = compile_cache_dir()
    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(folder, "triton"))
    inductor_config.fx_graph_cache = True
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        pass
    return folder


def share_unfused_weights(transformer: torch.nn.Module) -> int:
    """After fusing, point the unused q/k/v linears' weights at their rows of the fused weight (diffusers keeps both
    copies: ~4 GB at FLUX.1-dev's size in bf16). Returns how many linears now share."""
    from torch import nn

    from ..lora import LoraLinear
    from ..lora.base import out_features
    from ..lora.projections import FUSED_PROJECTIONS

    shared = 0
    for module in transformer.modules():
        if not getattr(module, "fused_projections", False):
            continue
        for parts, fused_name in FUSED_PROJECTIONS[:2]:
            fused = module._modules.get(fused_name)
            if fused is None:
                continue
            fused = fused.base if isinstance(fused, LoraLinear) else fused
            if type(fused) is not nn.Linear:
                continue
            offset = 0
            for part in parts:
                sub = module.get_submodule(part)
                base = sub.base if isinstance(sub, LoraLinear) else sub
                rows = out_features(base)
                if type(base) is nn.Linear and base.weight.shape == fused.weight[offset : offset + rows].shape:
                    base.weight = nn.Parameter(fused.weight[offset : offset + rows], requires_grad=False)
                    if base.bias is not None and fused.bias is not None:
                        base.bias = nn.Parameter(fused.bias[offset : offset + rows], requires_grad=False)
                    shared += 1
                offset += rows
    return shared


def fp8_filter(transformer: torch.nn.Module):
    """torchao ``filter_fn``: the plain linears inside the repeated blocks (attention, MLPs, the single blocks'
    proj_mlp/proj_out), not their adaLN modulation linears (``norm*``: one row of input, precision critical), not the
    embedders and output head (FP8_KEEP, outside the blocks), never the LoRA factors (buffers, not modules). The q/k/v
    linears that QKV fusion left unused are quantized too: that drops their view of the old bf16 fused weight, so
    it is freed, and keeps them correct should anyone unfuse."""
    from torch import nn

    def keep_fn(module: nn.Module, fqn: str) -> bool:
        if type(module) is not nn.Linear or not fqn.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            return False
        return not any(part.startswith("norm") or part in FP8_KEEP for part in fqn.split(".")[2:])

    return keep_fn


def fp8_saved_bytes(transformer: torch.nn.Module) -> int:
    """What fp8 would save on ``transformer``: one byte per weight of each linear ``fp8_filter`` picks kept instead
    of its current element size (the offload choice weighs the fp8 transformer, see ``choose_fast_and_offload``)."""
    keep = fp8_filter(transformer)
    return sum(
        m.weight.numel() * (m.weight.element_size() - 1) for name, m in transformer.named_modules() if keep(m, name)
    )


def fp8_config():
    """torchao's float8 dynamic activation + weight config, rowwise. ``set_inductor_config=False``: torchao's default
    switches inductor to coordinate-descent tuning for the whole process (``recommended_inductor_config_setter``),
    which makes every later compile much slower; the compile settings are ours (``enable_compile_cache``)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def quantize_fp8(transformer: torch.nn.Module, device: torch.device | str | None = None) -> int:
    """torchao float8 dynamic activation + weight quantization (rowwise) of the block linears, in place.

    ``device``: where to quantize linears whose weights are elsewhere (before offload the weights are on the CPU):
    each is moved there, quantized and moved back, one at a time, so the device holds one bf16 linear at most."""
    from torchao.quantization import quantize_

    keep = fp8_filter(transformer)
    chosen = [(name, m) for name, m in transformer.named_modules() if keep(m, name)]
    config = fp8_config()
    target = torch.device(device) if device is not None else None
    for _name, module in chosen:
        home = module.weight.device
        if target is None or home == target:
            quantize_(module, config, filter_fn=lambda m, _fqn, module=module: m is module)
            continue
        module.to(target)
        quantize_(module, config, filter_fn=lambda m, _fqn, module=module: m is module)
        module.to(home)
    return len(chosen)


def enable_step_cache(transformer: torch.nn.Module, threshold: float) -> None:
    """diffusers' first-block cache (TeaCache-like) on the transformer; ``FluxVectorPipeline`` opens a cache context
    per denoiser call and resets the state per generation."""
    from diffusers.hooks import FirstBlockCacheConfig

    # a diffusers model method: nn.Module types it as Tensor | Module
    cast(Any, transformer).enable_cache(FirstBlockCacheConfig(threshold=threshold))


def apply_weight_transforms(pipe, plan: FastPlan, log=None) -> dict[str, float]:
    """The parts of ``plan`` that create new parameters (fused QKV, fp8): they run before offload is applied, so that
    an offload hook holds the parameters the model computes with (group offload keys its pinned copies by the
    parameter objects that exist when it is applied). The seconds each took."""
    from ..lora import fuse_qkv_projections

    transformer = pipe.transformer
    timings: dict[str, float] = {}
    if plan.fuse_qkv:
        handles = [pipe.lora] if getattr(pipe, "lora", None) is not None else []
        started = time.perf_counter()
        fuse_qkv_projections(transformer, handles)
        share_unfused_weights(transformer)
        timings["fuse_qkv_s"] = time.perf_counter() - started
    if plan.fp8:
        started = time.perf_counter()
        count = quantize_fp8(transformer, device=pipe.device)
        timings["fp8_s"] = time.perf_counter() - started
        if log:
            log(f"fast: {count} block linears in float8 (torchao)")
    return timings


def apply_runtime_switches(pipe, plan: FastPlan, log=None) -> dict[str, float]:
    """The parts of ``plan`` that change how the model runs, not its parameters (attention backend, step cache,
    regional compile); after offload. The seconds each took (compilation itself happens on the first generation)."""
    transformer = pipe.transformer
    timings: dict[str, float] = {}

    def step(name, fn):
        started = time.perf_counter()
        result = fn()
        timings[f"{name}_s"] = time.perf_counter() - started
        return result

    if plan.attention != "native":
        step("attention", lambda: transformer.set_attention_backend(plan.attention))
    if plan.step_cache is not None:
        step("step_cache", lambda: enable_step_cache(transformer, plan.step_cache))
    if plan.compile:

        def compile_blocks():
            folder = enable_compile_cache()
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            # static shapes: each size served compiles its own graph once (``FluxVectorPipeline.warmup`` at the sizes
            # served), instead of a second size turning every block into a slower dynamic-shape graph
            options: dict[str, bool | str] = {"fullgraph": plan.fullgraph, "dynamic": False}
            if plan.cuda_graphs:
                options["mode"] = "reduce-overhead"
            transformer.compile_repeated_blocks(**options)
            return folder

        folder = step("compile_setup", compile_blocks)
        if log:
            log(f"fast: compiled graphs cached in {folder} (the first generation at each size compiles)")
    return timings


def apply_fast(pipe, plan: FastPlan, log=None) -> dict[str, float]:
    """Apply ``plan`` to ``pipe`` (a FluxVectorPipeline) in place, weights first; the seconds each part took. Under an
    offload that holds parameters (group, sequential) the pipeline applies the weight transforms before offload
    instead (``FluxVectorPipeline.__init__``)."""
    timings = apply_weight_transforms(pipe, plan, log)
    timings.update(apply_runtime_switches(pipe, plan, log))
    pipe.fast_plan = plan
    return timings
