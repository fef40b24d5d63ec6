"""The fast plan: which speed-ups this device gets, each with its reason. Pure apart from ``detect_env``.

* ``detect_env(device)`` looks at the machine: device type, CUDA capability, which optional packages import.
* ``choose_fast_plan(env, requested, full=..., quantized=..., offload=...)`` is pure (tested on CPU for every
  GPU branch): a ``FastPlan`` with each switch and the reason for it, one small ``_choose_<switch>`` function per
  switch. ``requested`` maps a switch to True/False/"auto" (or a backend name / a cache threshold); a switch left out
  is "auto" when ``full`` (``fast=True``: the whole fast mode) and off otherwise. An explicit request the machine
  cannot honour raises ``ValueError`` saying why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..offload import OffloadChoice

SWITCHES = ("fuse_qkv", "attention", "compile", "fp8", "cuda_graphs", "step_cache")
AUTO = "auto"
FULL = {name: AUTO for name in ("fuse_qkv", "attention", "compile", "fp8")}  # the whole fast mode, as switches
DEFAULT_STEP_CACHE_THRESHOLD = 0.08  # relative change of the first block's residual below which a step reuses
FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm89) and Hopper (sm90) have fp8 tensor cores
# Optional capabilities ``detect_env`` looks for (names used in ``FastEnv.available``).
FEATURES = ("flash_attn_3", "torchao", "triton", "cxx_compiler", "cudnn_attention")


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
        capability = torch.cuda.get_device_capability(device)
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
    quantized: bool  # the transformer holds quantized layers (any tier)
    offload: str
    dtype: torch.dtype | None = None  # the weights' dtype (None: not known, not checked)

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
    if req.quantized:
        if fuse is True:
            raise ValueError("fuse_qkv=True with a quantized transformer: quantized weights cannot be concatenated")
        return False, "off: the quantized weights (8bit, nf4, fp8 storage) cannot be concatenated"
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
    if req.quantized and compile_ == AUTO:
        return False, True, "off: quantized layers break the graph (the quantize tiers are memory modes, not speed)"
    why = (
        "regional torch.compile of the repeated double/single blocks, FX graph cache on disk; "
        "the LoRA strength is a graph input (no recompile)"
    )
    if req.quantized:
        return True, False, why + "; fullgraph=False (quantized layers break the graph)"
    return True, True, why


def _fp8_blocker(req: _Request) -> str | None:
    env = req.env
    if not req.cuda or env.capability is None:
        return f"fp8 matmuls need a CUDA GPU with sm89+ (Ada/Hopper); this is {env.device_type}"
    if tuple(env.capability) < FP8_MIN_CAPABILITY:
        return f"fp8 tensor cores need sm89+ (Ada/Hopper); this GPU is sm{env.capability[0]}{env.capability[1]}"
    if req.quantized:
        return "the transformer is already quantized (a quantize tier); fp8 replaces it, not stacks on it"
    if req.dtype is not None and req.dtype != torch.bfloat16:
        loaded = str(req.dtype).removeprefix("torch.")
        return f"torchao's rowwise float8 needs bfloat16 weights; this pipeline loads {loaded} (use bfloat16)"
    if req.offload == "sequential":
        return (
            "offload='sequential' rebuilds every parameter from its CPU copy per layer call; torchao's float8 tensors "
            "are not known to survive that (group and model offload carry them)"
        )
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
    quantized: bool = False,
    offload: str = "none",
    dtype: torch.dtype | None = None,
) -> FastPlan:
    """The fast plan for ``env`` (pure). ``full``: switches not in ``requested`` are "auto" (else off). ``quantized``:
    the transformer holds quantized layers of any tier. ``dtype``: the weights' dtype (fp8 needs bfloat16)."""
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown fast switch(es) {', '.join(unknown)}; known: {', '.join(SWITCHES)}")
    req = _Request(env, requested, AUTO if full else False, quantized, offload, dtype)
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


def choose_fast_and_offload(
    env: FastEnv,
    fast: bool | Mapping[str, Any] | None,
    *,
    offload: str,
    device: torch.device,
    free_bytes: int | None,
    component_bytes: Mapping[str, int],
    largest_group: int | None = None,
    fp8_saved_bytes: int = 0,
    resident_transformer: bool = False,
    dtype: torch.dtype | None = None,
    full: bool | None = None,
    quantized: bool | None = None,
) -> tuple[FastPlan | None, OffloadChoice]:
    """The fast plan and the offload mode, chosen together (pure): fp8 halves the block linears, which the offload
    choice weighs (``fp8_saved_bytes``: what fp8 would save, ``fast.fp8_saved_bytes``), and the offload mode limits
    the plan (no compile under group or sequential offload, no fp8 under sequential). ``fast``: None/False (no fast
    mode: the plan is None), True (the whole mode) or switches. ``full`` defaults to ``fast is True``.
    ``resident_transformer``: the transformer holds bitsandbytes layers (kept on the device); ``quantized``: it holds
    quantized layers of any tier (the plan's flag: no fused QKV, no fp8 fast mode; default ``resident_transformer``)."""
    from ..offload import choose_offload

    wanted = bool(fast)
    switches = None if isinstance(fast, bool) or fast is None else dict(fast)
    full = fast is True if full is None else full

    def plan_for(mode: str) -> FastPlan:
        flag = resident_transformer if quantized is None else quantized
        return choose_fast_plan(env, switches, full=full, quantized=flag, offload=mode, dtype=dtype)

    sizes = dict(component_bytes)
    if wanted and plan_for("none" if offload == "auto" else offload).fp8:
        sizes["transformer"] = max(sizes.get("transformer", 0) - fp8_saved_bytes, 0)
    choice = choose_offload(
        offload, device, free_bytes, sizes, largest_group=largest_group, resident_transformer=resident_transformer
    )
    return (plan_for(choice.mode) if wanted else None), choice
