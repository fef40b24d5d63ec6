"""The fast mode: fused QKV projections, the best attention backend, regional torch.compile, fp8, CUDA graphs, an
opt-in step cache, each one switchable, chosen per device by a pure function and applied to a loaded pipeline.

* ``detect_env(device)`` looks at the machine: device type, CUDA capability, which optional packages import.
* ``choose_fast_plan(env, requested, full=..., quantized_8bit=..., offload=...)`` is pure (tested on CPU for every
  GPU branch): a ``FastPlan`` with each switch and the reason for it. ``requested`` maps a switch to True/False/"auto"
  (or a backend name / a cache threshold); a switch left out is "auto" when ``full`` (``fast=True``: the whole
  fast mode) and off otherwise. An explicit request the machine cannot honour raises ``ValueError`` saying why.
* ``apply_fast(pipe, plan)`` applies it in place and returns the seconds each part took. Compilation itself happens
  on the first generation; ``FluxVectorPipeline.warmup`` measures it (first call minus a warm call).

Compilation is regional (diffusers' ``compile_repeated_blocks``: the 19 double and 38 single blocks share a few
compiled graphs) with inductor's FX graph cache in ``<flux_vector cache>/inductor`` so later processes reuse it.
The LoRA adapter reads its strength from a buffer under compile: switching strength never recompiles.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

SWITCHES = ("fuse_qkv", "attention", "compile", "fp8", "cuda_graphs", "step_cache")
AUTO = "auto"
FULL = {name: AUTO for name in ("fuse_qkv", "attention", "compile", "fp8")}  # the whole fast mode, as switches
DEFAULT_STEP_CACHE_THRESHOLD = 0.08  # relative change of the first block's residual below which a step reuses
FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm89) and Hopper (sm90) have fp8 tensor cores
RECOMPILE_LIMIT = 64  # image sizes and the first single block's input layout each give a graph; 8 is too few
# Optional capabilities ``detect_env`` looks for (names used in ``FastEnv.available``).
FEATURES = ("flash_attn_3", "torchao", "triton", "cxx_compiler", "cudnn_attention")
# Linears kept in bf16 under fp8: the embedders and the output head (outside the blocks) are small and precision
# critical; so are the blocks' adaLN modulation linears (``norm*``).
FP8_KEEP = ("x_embedder", "context_embedder", "norm_out", "time_text_embed")


@dataclass(frozen=True)
class FastEnv:
    """What the plan depends on: the device and which optional backends are importable."""

    device_type: str  # "cuda", "cpu", "mps", ...
    capability: tuple[int, int] | None = None  # CUDA compute capability, None off CUDA
    available: frozenset[str] = frozenset()  # subset of FEATURES

    def has(self, feature: str) -> bool:
        return feature in self.available


@dataclass(frozen=True)
class FastPlan:
    """Which speed-ups to apply, each with a human reason (``reasons``: (switch, why) pairs, in SWITCHES order)."""

    fuse_qkv: bool = False
    attention: str = "native"  # a diffusers attention backend name (diffusers.models.attention_dispatch)
    compile: bool = False  # regional torch.compile of the repeated transformer blocks
    fp8: bool = False  # torchao float8 dynamic activation + weight (rowwise) on the block linears
    cuda_graphs: bool = False  # compile mode "reduce-overhead"
    step_cache: float | None = None  # first-block cache threshold; None = off (changes the output when on)
    fullgraph: bool = True
    reasons: tuple[tuple[str, str], ...] = ()

    @property
    def why(self) -> dict[str, str]:
        return dict(self.reasons)

    @property
    def enabled(self) -> bool:
        return bool(self.fuse_qkv or self.attention != "native" or self.compile or self.fp8 or self.step_cache)

    def summary(self) -> str:
        parts = [name for name in ("fuse_qkv", "compile", "fp8", "cuda_graphs") if getattr(self, name)]
        parts.insert(1 if self.fuse_qkv else 0, f"attention={self.attention}")
        if self.step_cache is not None:
            parts.append(f"step_cache={self.step_cache:g}")
        return ", ".join(parts)

    def describe(self) -> list[str]:
        return [f"{name}: {why}" for name, why in self.reasons]

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*SWITCHES, "fullgraph")} | {"reasons": self.why}


# ----------------------------------------------------------------------------------------------- environment


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_env(device: torch.device | str) -> FastEnv:
    """The machine as the plan sees it (the one impure part of the choice)."""
    device = torch.device(device)
    available = set()
    # diffusers' "_flash_3" backend needs the FA3 beta (package flash_attn_3, module flash_attn_interface)
    if _importable("flash_attn_3") and _importable("flash_attn_interface"):
        available.add("flash_attn_3")
    for name in ("torchao", "triton"):
        if _importable(name):
            available.add(name)
    if any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        available.add("cxx_compiler")
    capability = None
    if device.type == "cuda" and torch.cuda.is_available():
        capability = tuple(torch.cuda.get_device_capability(device))
        if torch.backends.cudnn.is_available() and (torch.backends.cudnn.version() or 0) >= 90000:
            available.add("cudnn_attention")
    return FastEnv(device.type, capability, frozenset(available))


# ----------------------------------------------------------------------------------------------- the choice


def _auto_attention(env: FastEnv) -> tuple[str, str]:
    if env.device_type != "cuda" or env.capability is None:
        return "native", f"{env.device_type}: PyTorch scaled_dot_product_attention (native)"
    sm = f"sm{env.capability[0]}{env.capability[1]}"
    if env.capability[0] == 9:
        if env.has("flash_attn_3"):
            return "_flash_3", f"{sm} (Hopper) with flash-attention 3 installed: FA3 kernels"
        if env.has("cudnn_attention"):
            return "_native_cudnn", f"{sm} (Hopper), no flash-attention 3 (flash_attn_3) installed: cuDNN SDPA"
        return "native", f"{sm} (Hopper), neither flash-attention 3 nor cuDNN 9 SDPA: PyTorch SDPA"
    return "native", f"{sm}: PyTorch SDPA (it picks its built-in flash kernel on sm80+)"


def _flag(value, name: str) -> bool | str | None:
    """None (not given), "auto", or a bool; anything else is an error."""
    if value is None or value == AUTO or isinstance(value, bool):
        return value
    raise ValueError(f"fast switch {name}={value!r}: use True, False or 'auto'")


@dataclass(frozen=True)
class _Request:
    """What the caller asked for, and what the plan is chosen for."""

    env: FastEnv
    switches: Mapping[str, Any]
    default: bool | str  # for a switch not in ``switches``: "auto" (full fast mode) or False
    quantized_8bit: bool
    offload: str

    @property
    def cuda(self) -> bool:
        return self.env.device_type == "cuda"

    def get(self, name: str, default: Any = None) -> Any:
        return self.switches.get(name, self.default if default is None else default)

    def off(self, name: str) -> str:
        return "off" + (" as requested" if name in self.switches else "")


def _choose_fuse_qkv(req: _Request) -> tuple[bool, str]:
    """One GEMM instead of three for q/k/v (the LoRA adapters move onto the fused rows)."""
    fuse = _flag(req.get("fuse_qkv"), "fuse_qkv")
    if fuse is False:
        return False, req.off("fuse_qkv")
    if req.quantized_8bit:
        if fuse is True:
            raise ValueError("fuse_qkv=True with quantize='8bit': bitsandbytes int8 weights cannot be concatenated")
        return False, "off: the 8-bit (bitsandbytes) weights cannot be concatenated"
    return True, "q/k/v (and the text stream's) projections as one GEMM each; LoRA moved onto the rows"


def _choose_attention(req: _Request) -> tuple[str, str]:
    attention = req.get("attention")
    if attention is False or attention is None:
        return "native", "native (PyTorch SDPA)" + (" as requested" if "attention" in req.switches else "")
    if attention is True or attention == AUTO:
        return _auto_attention(req.env)
    if not isinstance(attention, str):
        raise ValueError(f"fast switch attention={attention!r}: a diffusers backend name, 'auto' or False")
    if attention in ("_flash_3", "_flash_varlen_3") and not req.env.has("flash_attn_3"):
        raise ValueError(f"attention={attention!r} needs flash-attention 3 (the flash_attn_3 beta build)")
    if attention.startswith(("_flash_3", "_native_cudnn", "flash", "sage", "xformers")) and not req.cuda:
        raise ValueError(f"attention={attention!r} needs a CUDA GPU; this is {req.env.device_type}")
    return attention, f"{attention} as requested"


def _compile_blocker(req: _Request) -> str | None:
    env = req.env
    backend_ok = env.has("triton") if req.cuda else env.device_type == "cpu" and env.has("cxx_compiler")
    if not backend_ok:
        missing = "triton" if req.cuda else "a C++ compiler" if env.device_type == "cpu" else "an inductor backend"
        return f"torch.compile (inductor) needs {missing} on {env.device_type}"
    if req.offload in ("sequential", "group"):
        return f"offload={req.offload!r} moves weights in hooks around every block; compile would fight it"
    return None


def _choose_compile(req: _Request) -> tuple[bool, bool, str]:
    """Regional torch.compile of the repeated blocks: (compile, fullgraph, why)."""
    compile_ = _flag(req.get("compile"), "compile")
    if compile_ is False:
        return False, True, req.off("compile")
    blocker = _compile_blocker(req)
    if blocker and compile_ is True:
        raise ValueError(f"compile=True: {blocker}")
    if blocker:
        return False, True, f"off: {blocker}"
    if req.quantized_8bit and compile_ == AUTO:
        return False, True, "off: bitsandbytes int8 layers break the graph (8-bit is the memory mode, not speed)"
    why = (
        "regional torch.compile of the repeated double/single blocks, FX graph cache on disk; "
        "the LoRA strength is a graph input (no recompile)"
    )
    if req.quantized_8bit:
        return True, False, why + "; fullgraph=False (bitsandbytes int8 layers break the graph)"
    return True, True, why


def _fp8_blocker(req: _Request) -> str | None:
    env = req.env
    if not req.cuda or env.capability is None:
        return f"fp8 matmuls need a CUDA GPU with sm89+ (Ada/Hopper); this is {env.device_type}"
    if tuple(env.capability) < FP8_MIN_CAPABILITY:
        return f"fp8 tensor cores need sm89+ (Ada/Hopper); this GPU is sm{env.capability[0]}{env.capability[1]}"
    if req.quantized_8bit:
        return "the transformer is already 8-bit (bitsandbytes); fp8 replaces it, not stacks on it"
    if not env.has("torchao"):
        return "torchao is not installed (pip install torchao)"
    return None


def _choose_fp8(req: _Request, compiled: bool) -> tuple[bool, str]:
    fp8 = _flag(req.get("fp8"), "fp8")
    if fp8 is False:
        return False, req.off("fp8")
    blocker = _fp8_blocker(req)
    if blocker and fp8 is True:
        raise ValueError(f"fp8=True: {blocker}")
    if blocker:
        return False, f"off: {blocker}"
    why = (
        "torchao float8 e4m3 dynamic activations + weights, rowwise scales, on the block linears "
        "(the bf16 floor, ~3.2 s for 25 steps on an H100, is above the 2.5 s goal)"
    )
    return True, why if compiled else why + "; without compile the quantize kernels run unfused (slow)"


def _choose_cuda_graphs(req: _Request, compiled: bool) -> tuple[bool, str]:
    """Opt-in only: a 1024x1024 step is ~100 ms of GEMMs; launch overhead is a few ms."""
    if _flag(req.get("cuda_graphs", default=False), "cuda_graphs") is not True:
        why = "off: opt-in; at 1024x1024 a step is ~100 ms of GPU work and the launches overlap it"
        return False, why if req.cuda else "off: no CUDA"
    if not req.cuda:
        raise ValueError(f"cuda_graphs=True needs a CUDA GPU; this is {req.env.device_type}")
    if not compiled:
        raise ValueError("cuda_graphs=True needs compile (they come from torch.compile mode='reduce-overhead')")
    return True, "compile mode 'reduce-overhead' (CUDA graphs) as requested; uses more memory"


def _choose_step_cache(req: _Request) -> tuple[float | None, str]:
    """Opt-in only: it changes the output."""
    cache = req.switches.get("step_cache")
    if cache is None or cache is False or cache == AUTO:
        return None, "off (opt-in: reuses the previous step's residual, the output changes)"
    if cache is True:
        cache = DEFAULT_STEP_CACHE_THRESHOLD
    if isinstance(cache, bool) or not isinstance(cache, int | float) or not 0 < cache < 1:
        raise ValueError(f"step_cache={cache!r}: True or a threshold in (0, 1)")
    why = (
        f"first-block cache, threshold {float(cache):g}: a step whose first-block residual changed less than that "
        "reuses the rest of the network's last residual (approximate: the output changes)"
    )
    return float(cache), why


def choose_fast_plan(
    env: FastEnv,
    requested: Mapping[str, Any] | None = None,
    *,
    full: bool = True,
    quantized_8bit: bool = False,
    offload: str = "none",
) -> FastPlan:
    """The fast plan for ``env`` (pure). ``full``: switches not in ``requested`` are "auto" (else off)."""
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown fast switch(es) {', '.join(unknown)}; known: {', '.join(SWITCHES)}")
    req = _Request(env, requested, AUTO if full else False, quantized_8bit, offload)
    fuse_qkv, why_fuse = _choose_fuse_qkv(req)
    attention, why_attention = _choose_attention(req)
    compiled, fullgraph, why_compile = _choose_compile(req)
    fp8, why_fp8 = _choose_fp8(req, compiled)
    cuda_graphs, why_graphs = _choose_cuda_graphs(req, compiled)
    step_cache, why_cache = _choose_step_cache(req)
    if step_cache is not None and compiled:
        fullgraph = False
        why_compile += "; fullgraph=False (the step cache decides per step outside the graph)"
    reasons = {
        "fuse_qkv": why_fuse,
        "attention": why_attention,
        "compile": why_compile,
        "fp8": why_fp8,
        "cuda_graphs": why_graphs,
        "step_cache": why_cache,
    }
    return FastPlan(
        fuse_qkv=fuse_qkv,
        attention=attention,
        compile=compiled,
        fp8=fp8,
        cuda_graphs=cuda_graphs,
        step_cache=step_cache,
        fullgraph=fullgraph,
        reasons=tuple((name, reasons[name]) for name in SWITCHES),
    )


# ----------------------------------------------------------------------------------------------- applying


def compile_cache_dir() -> str:
    """Where inductor keeps compiled graphs: $TORCHINDUCTOR_CACHE_DIR when the user set it, else
    ``<flux_vector cache>/inductor``. (torch writes its own default, /tmp/torchinductor_<user>, into that variable
    the first time anything asks, e.g. while diffusers imports: that value does not count as the user's.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    from .models import default_cache_dir

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

    from .lora import LoraLinear
    from .lora.projections import FUSED_PROJECTIONS

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
                sub = module._modules.get(part)
                base = sub.base if isinstance(sub, LoraLinear) else sub
                rows = base.out_features
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


def quantize_fp8(transformer: torch.nn.Module) -> int:
    """torchao float8 dynamic activation + weight quantization (rowwise) of the block linears, in place."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    keep = fp8_filter(transformer)
    chosen = [name for name, m in transformer.named_modules() if keep(m, name)]
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=keep)
    return len(chosen)


def enable_step_cache(transformer: torch.nn.Module, threshold: float) -> None:
    """diffusers' first-block cache (TeaCache-like) on the transformer; ``FluxVectorPipeline`` opens a cache context
    per denoiser call and resets the state per generation."""
    from diffusers.hooks import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def apply_fast(pipe, plan: FastPlan, log=None) -> dict[str, float]:
    """Apply ``plan`` to ``pipe`` (a FluxVectorPipeline) in place; the seconds each part took (compilation itself
    happens on the first generation: see ``FluxVectorPipeline.warmup``)."""
    from .lora import fuse_qkv_projections

    transformer = pipe.transformer
    timings: dict[str, float] = {}

    def step(name, fn):
        started = time.perf_counter()
        result = fn()
        timings[f"{name}_s"] = time.perf_counter() - started
        return result

    if plan.fuse_qkv:
        handles = [pipe.lora] if getattr(pipe, "lora", None) is not None else []
        step("fuse_qkv", lambda: (fuse_qkv_projections(transformer, handles), share_unfused_weights(transformer)))
    if plan.attention != "native":
        step("attention", lambda: transformer.set_attention_backend(plan.attention))
    if plan.fp8:
        count = step("fp8", lambda: quantize_fp8(transformer))
        if log:
            log(f"fast: {count} block linears in float8 (torchao)")
    if plan.step_cache is not None:
        step("step_cache", lambda: enable_step_cache(transformer, plan.step_cache))
    if plan.compile:

        def compile_blocks():
            folder = enable_compile_cache()
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            options = {"fullgraph": plan.fullgraph}
            if plan.cuda_graphs:
                options["mode"] = "reduce-overhead"
            transformer.compile_repeated_blocks(**options)
            return folder

        folder = step("compile_setup", compile_blocks)
        if log:
            log(f"fast: compiled graphs cached in {folder} (the first generation at each size compiles)")
    pipe.fast_plan = plan
    return timings
