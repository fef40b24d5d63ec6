"""How much accelerator memory each quantization tier needs, and which tier and offload mode ``auto`` picks.

Pure arithmetic (no torch import at module level: the command line's parsers and ``doctor`` import it):

* A ``Census`` counts a module's parameters by kind: the ``nn.Linear`` weights a tier quantizes, by shape, and every
  other element (biases, norms, embeddings, convolutions, the ``quantize.KEEP_FULL_PRECISION`` linears for the
  bitsandbytes and fp8 tiers), which stay in the pipeline's dtype. ``census(module)`` reads one from a real or meta
  module tree; ``FLUX_DEV`` holds FLUX.1-dev's (tests/test_memory_tiers.py derives them from the public configs
  on the meta device, so these constants are checked, not trusted).
* A ``WeightFormat`` says how many bytes a quantized linear weight takes: the stored tensor (GGUF blocks carry their
  scales inside) and what a tier keeps beside it (bitsandbytes' int8 row scales ``SCB``, NF4's per-block ``absmax``
  and its 16-value code table).
* ``estimate(tier, ...)`` turns a census into the bytes each component holds, asks ``offload.choose_offload`` (the
  one decision function) which offload mode fits, and ``offload.mode_needs`` for that mode's expected peak: the
  resident weights, what the mode onloads at once, and ``offload.HEADROOM`` (4 GiB) for a 1024x1024 generation's
  activations, the VAE decode and the CUDA context. diffusers' quantization write-up measured peak - loaded at
  4.5-5.1 GiB with T5 padded to 512 tokens; we pad to 256 (ComfyUI's length), so the reuse of HEADROOM is a guess
  that may be up to ~1 GiB low: the GPU run's tier phase (benchmarks/bench_tiers.py) measures the real peak beside
  this estimate. ``offload.module_bytes`` counts what a quantized module holds (bitsandbytes' state included), so
  the estimate and the pipeline's own sizes are the same numbers (tested on the tiny model, every tier).
* T5 has its own tier (``text_tier``, ``quantize_text``): its ``wo`` layers kept; a bitsandbytes T5 stays on the
  device in every offload mode.
* ``choose_tier`` is ``auto``: of the tiers available, each with the least offload that fits, the fastest by the
  speed model below; among the candidates within ``TIE_FRACTION`` (10 %) of the fastest, the most faithful
  (``FIDELITY``: more bits per weight first).

The speed model (seconds per 1024x1024 image, 50 steps, on an H100) starts from the issue's measured table
(``TIER_SECONDS``) and adds the transfers an offload mode makes, at ``transfer_bytes_per_s()``, derived from the same
table's "group offload of the bf16 transformer: ~3.6x slower per step" (group offload streams the transformer once
per step, overlapped with compute; model offload moves each offloaded component once per image; sequential moves the
transformer every step without overlap). It orders candidates; its seconds are not a promise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .offload import (
    DEVICE,
    GROUP,
    GROUP_TARGET,
    MODEL,
    SEQUENTIAL,
    GiB,
    OffloadChoice,
    choose_offload,
    mode_needs,
    offload_plan,
)
from .quantize import KEEP_FULL_PRECISION, QUANTIZE_CHOICES, T5_KEEP_FULL_PRECISION

if TYPE_CHECKING:
    import torch

AUTO = "auto"  # quantize=None / --quantize auto (the default): chosen here from the free memory
QUANTIZE_OPTIONS = (AUTO, *QUANTIZE_CHOICES)  # what ``from_pretrained(quantize=...)`` and ``--quantize`` accept


# What each component's tiers keep in full precision: (dotted names, last name parts): quantize.py's lists.
KEEP = {"transformer": (KEEP_FULL_PRECISION, ()), "text_encoder_2": ((), T5_KEEP_FULL_PRECISION)}

# ----------------------------------------------------------------------------------------------- census


@dataclass(frozen=True)
class Census:
    """A module's elements by kind: ``linears`` as (out_features, in_features, kept, count), ``kept`` True for a
    linear every tier keeps in full precision (``KEEP_FULL_PRECISION``, T5's ``wo``: ``KEEP``); ``other``: every
    other floating-point parameter and buffer element (biases included), held in the pipeline dtype;
    ``fixed_bytes``: the integer buffers (CLIP's position ids), as they are."""

    linears: tuple[tuple[int, int, bool, int], ...]
    other: int
    fixed_bytes: int = 0

    @staticmethod
    def of(linears: Iterable[tuple[int, int, bool]], other: int, fixed_bytes: int = 0) -> Census:
        counts = Counter(linears)
        return Census(tuple(sorted((o, i, k, n) for (o, i, k), n in counts.items())), other, fixed_bytes)

    def __add__(self, other: Census) -> Census:
        counts = Counter({(o, i, k): n for o, i, k, n in self.linears})
        counts.update({(o, i, k): n for o, i, k, n in other.linears})
        linears = tuple(sorted((o, i, k, n) for (o, i, k), n in counts.items() if n))
        return Census(linears, self.other + other.other, self.fixed_bytes + other.fixed_bytes)

    def __sub__(self, other: Census) -> Census:
        counts = Counter({(o, i, k): n for o, i, k, n in self.linears})
        counts.subtract({(o, i, k): n for o, i, k, n in other.linears})
        if any(n < 0 for n in counts.values()) or other.other > self.other or other.fixed_bytes > self.fixed_bytes:
            raise ValueError("Census subtraction below zero: the part is not inside the whole")
        linears = tuple(sorted((o, i, k, n) for (o, i, k), n in counts.items() if n))
        return Census(linears, self.other - other.other, self.fixed_bytes - other.fixed_bytes)

    @property
    def parameters(self) -> int:
        return self.other + sum(o * i * n for o, i, _k, n in self.linears)

    @property
    def empty(self) -> bool:
        return not self.linears and not self.other and not self.fixed_bytes


@dataclass(frozen=True)
class ComponentCensus:
    """A component's census and the distinct groups block-level group offload makes of it (``offload.GROUP_TARGET``:
    one per block, then the rest), or () for a component group offload does not group."""

    whole: Census
    groups: tuple[Census, ...] = ()


def census(
    module: torch.nn.Module, keep: tuple[str, ...] = (), keep_leaves: tuple[str, ...] = (), prefix: str = ""
) -> Census:
    """The census of a real or meta module tree, before quantization. Linears are matched as ``quantize`` matches
    them (``type(m) is nn.Linear``), kept by their dotted name from the component's root (``prefix`` + name) in
    ``keep`` or its last part in ``keep_leaves``."""
    from torch import nn

    linears: list[tuple[int, int, bool]] = []
    seen: set[int] = set()
    other = fixed = 0
    for name, sub in module.named_modules():
        full = f"{prefix}{name}"
        if type(sub) is nn.Linear:
            kept = full in keep or full.rsplit(".", 1)[-1] in keep_leaves
            linears.append((sub.out_features, sub.in_features, kept))
            seen.add(id(sub.weight))
    for tensor in [*module.parameters(), *module.buffers()]:  # parameters() de-duplicates tied weights
        if id(tensor) in seen:
            continue
        if tensor.is_floating_point():
            other += tensor.numel()
        else:
            fixed += tensor.numel() * tensor.element_size()
    return Census.of(linears, other, fixed)


def component_census(name: str, module: torch.nn.Module) -> ComponentCensus:
    """``census`` of component ``name`` (its ``KEEP`` layers) with its group-offload groups (as
    ``offload.block_group_bytes`` cuts them)."""
    from torch import nn

    keep, leaves = KEEP.get(name, ((), ()))
    whole = census(module, keep, leaves)
    if name not in GROUP_TARGET:
        return ComponentCensus(whole)
    path = GROUP_TARGET[name]
    target = module.get_submodule(path) if path else module
    prefix = f"{path}." if path else ""
    blocks = [
        census(block, keep, leaves, prefix=f"{prefix}{child_name}.{index}.")
        for child_name, child in target.named_children()
        if isinstance(child, nn.ModuleList | nn.Sequential)
        for index, block in enumerate(child)
    ]
    rest = census(target, keep, leaves, prefix=prefix)
    for block in blocks:
        rest = rest - block
    groups = blocks if rest.empty else [*blocks, rest]
    return ComponentCensus(whole, tuple(dict.fromkeys(groups)))


# FLUX.1-dev's components (black-forest-labs/FLUX.1-dev's configs: the transformer, T5-XXL's encoder, CLIP-L, the
# 16-channel VAE): 11.90 G, 4.76 G, 123 M and 84 M parameters. tests/test_memory_tiers.py builds them on the meta
# device and checks these censuses (and the group-offload groups) against ``component_census``.
_T5_BLOCK_LINEARS = ((4096, 4096, False, 4), (4096, 10240, True, 1), (10240, 4096, False, 2))
FLUX_DEV: dict[str, ComponentCensus] = {
    "transformer": ComponentCensus(
        Census(
            (
                (64, 3072, True, 1),
                (3072, 64, True, 1),
                (3072, 256, False, 2),
                (3072, 768, False, 1),
                (3072, 3072, False, 269),
                (3072, 4096, True, 1),
                (3072, 12288, False, 38),
                (3072, 15360, False, 38),
                (6144, 3072, True, 1),
                (9216, 3072, False, 38),
                (12288, 3072, False, 76),
                (18432, 3072, False, 38),
            ),
            3_085_376,
        ),
        (
            Census(
                ((3072, 3072, False, 8), (3072, 12288, False, 2), (12288, 3072, False, 2), (18432, 3072, False, 2)),
                92_672,
            ),
            Census(
                ((3072, 3072, False, 3), (3072, 15360, False, 1), (9216, 3072, False, 1), (12288, 3072, False, 1)),
                34_048,
            ),
            Census(
                (
                    (64, 3072, True, 1),
                    (3072, 64, True, 1),
                    (3072, 256, False, 2),
                    (3072, 768, False, 1),
                    (3072, 3072, False, 3),
                    (3072, 4096, True, 1),
                    (6144, 3072, True, 1),
                ),
                30_784,
            ),
        ),
    ),
    "text_encoder_2": ComponentCensus(
        Census(((4096, 4096, False, 96), (4096, 10240, True, 24), (10240, 4096, False, 48)), 131_799_040),
        (Census(_T5_BLOCK_LINEARS, 10_240), Census(_T5_BLOCK_LINEARS, 8_192), Census((), 131_600_384)),
    ),
    "text_encoder": ComponentCensus(
        Census(((768, 768, False, 48), (768, 3072, False, 12), (3072, 768, False, 12)), 38_125_824, 616)
    ),
    "vae": ComponentCensus(Census(((512, 512, False, 8),), 81_722_531)),
}


# ----------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class WeightFormat:
    """How a quantized linear weight of ``out x in`` is held: ``block`` weights take ``block_bytes`` in the stored
    tensor; beside it ``row_scale_bytes`` per output row, ``block_scale_bytes`` per block and ``layer_bytes`` per
    layer. ``rows``: blocks run along each row (GGUF: a row whose length is not a multiple of ``block``, or a tensor
    of fewer than ``min_elements``, stays in full precision) rather than over the flattened weight (NF4).
    ``keeps_named``: the ``KEEP_FULL_PRECISION`` linears stay in full precision (bitsandbytes, fp8; a GGUF file
    quantizes them). ``pinned``: the weights stay on the device under any offload (``offload.offload_plan``)."""

    name: str
    block: int
    block_bytes: int
    row_scale_bytes: int = 0
    block_scale_bytes: int = 0
    layer_bytes: int = 0
    rows: bool = False
    min_elements: int = 0
    keeps_named: bool = True
    pinned: bool = False

    def quantizes(self, out_features: int, in_features: int, kept: bool) -> bool:
        if kept and self.keeps_named:
            return False
        if self.rows and in_features % self.block:
            return False
        return out_features * in_features >= self.min_elements

    def stored_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes of the weight tensor itself (a flattened format packs a last partial block without padding)."""
        return math.ceil(out_features * in_features * self.block_bytes / self.block)

    def beside_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes a tier keeps beside the weight tensor (scales outside the parameter)."""
        blocks = math.ceil(out_features * in_features / self.block)
        return out_features * self.row_scale_bytes + blocks * self.block_scale_bytes + self.layer_bytes


# bitsandbytes LLM.int8: int8 weights, one float32 absmax per output row (``Int8Params.SCB``), kept on the device.
INT8 = WeightFormat("8bit", block=1, block_bytes=1, row_scale_bytes=4, pinned=True)
# bitsandbytes NF4, blocksize 64, no double quantization: two weights per byte, a float32 absmax per block and the
# 16-value float32 code table per layer (``QuantState.absmax``/``.code``); bitsandbytes weights stay on the device.
NF4 = WeightFormat("nf4", block=64, block_bytes=32, block_scale_bytes=4, layer_bytes=16 * 4, pinned=True)
# float8_e4m3fn storage, computed in the pipeline dtype (ComfyUI's fp8_e4m3fn weight dtype): one byte, no scale.
FP8 = WeightFormat("fp8", block=1, block_bytes=1)
# GGUF (city96's FLUX files): blocks with their scales inside; 1-D tensors, tensors of fewer than 1024 elements and
# rows that are not whole blocks stay F32 in the file (counted here in the pipeline dtype, as the loader casts them).
GGUF_BLOCKS = {  # type -> (weights per block, bytes per block)
    "Q8_0": (32, 34),
    "Q6_K": (256, 210),
    "Q5_K": (256, 176),
    "Q5_1": (32, 24),
    "Q5_0": (32, 22),
    "Q4_K": (256, 144),
    "Q4_1": (32, 20),
    "Q4_0": (32, 18),
    "Q3_K": (256, 110),
    "Q2_K": (256, 84),
}
GGUF = {
    f"gguf-{qtype}": WeightFormat(f"gguf-{qtype}", block, size, rows=True, min_elements=1024, keeps_named=False)
    for qtype, (block, size) in GGUF_BLOCKS.items()
}
FORMATS: dict[str, WeightFormat | None] = {"none": None, "8bit": INT8, "nf4": NF4, "fp8": FP8, **GGUF}

# Seconds per 1024x1024 image, 50 steps, H100, everything resident (the issue's table, from diffusers' write-up).
# The GGUF types it did not measure are counted as its 4-bit (Q4_1) figure.
TIER_SECONDS = {"none": 12.0, "nf4": 12.0, "fp8": 13.0, "8bit": 27.0, "gguf-Q8_0": 15.0}
GGUF_OTHER_SECONDS = 23.0
STEPS = 50
# "Group offload of the transformer: ~3.6x slower per step": a bf16 FLUX.1-dev transformer (FLUX_DEV below,
# 22.2 GiB) streamed once per 3.6 x 12/50 s step; computed in ``transfer_bytes_per_s`` from the census.
GROUP_SLOWDOWN = 3.6
# Among candidates within this fraction of the fastest, the most faithful wins; more bits per weight first.
TIE_FRACTION = 0.10
FIDELITY = ("none", "gguf-Q8_0", "8bit", "fp8", "gguf-Q6_K", "gguf-Q5_K", "gguf-Q5_1", "gguf-Q5_0", "nf4")
# The tiers auto weighs, when available here (``available_tiers``).
AUTO_TIERS = ("none", "fp8", "nf4", "8bit")


def is_pinned(tier: str) -> bool:
    """The tier's weights stay on the device under any offload (bitsandbytes: ``quantize.BITSANDBYTES_TIERS``)."""
    fmt = FORMATS[tier]
    return bool(fmt and fmt.pinned)


def tier_seconds(tier: str) -> float:
    return TIER_SECONDS.get(tier, GGUF_OTHER_SECONDS if tier.startswith("gguf-") else TIER_SECONDS["none"])


def fidelity_rank(tier: str) -> int:
    return FIDELITY.index(tier) if tier in FIDELITY else len(FIDELITY)


# ----------------------------------------------------------------------------------------------- bytes


@dataclass(frozen=True)
class HeldBytes:
    """Bytes of one component under a tier: ``stored`` (its parameters and buffers) and ``beside`` (quantization
    state outside them: int8 row scales, NF4 absmax and code); ``offload.module_bytes`` counts both (``total``)."""

    stored: int
    beside: int

    @property
    def total(self) -> int:
        return self.stored + self.beside


def census_bytes(counted: Census, tier: str, dtype_bytes: int) -> HeldBytes:
    """The bytes ``counted`` holds under ``tier`` with full-precision elements of ``dtype_bytes``."""
    fmt = FORMATS[tier]
    stored, beside = counted.other * dtype_bytes + counted.fixed_bytes, 0
    for out_features, in_features, kept, count in counted.linears:
        if fmt is None or not fmt.quantizes(out_features, in_features, kept):
            stored += count * out_features * in_features * dtype_bytes
        else:
            stored += count * fmt.stored_bytes(out_features, in_features)
            beside += count * fmt.beside_bytes(out_features, in_features)
    return HeldBytes(stored, beside)


def tiers_of(tier: str, text_tier: str = "none") -> dict[str, str]:
    """Each component's tier: the transformer's ``tier``, T5's ``text_tier`` (``quantize_text``), the rest none."""
    return {"transformer": tier, "text_encoder_2": text_tier}


def component_bytes(
    model: Mapping[str, ComponentCensus], tier: str, dtype_bytes: int, *, text_tier: str = "none"
) -> dict[str, int]:
    """Bytes per component: the transformer under ``tier``, T5 under ``text_tier``, the others in the dtype."""
    tiers = tiers_of(tier, text_tier)
    return {name: census_bytes(part.whole, tiers.get(name, "none"), dtype_bytes).total for name, part in model.items()}


def largest_group(
    model: Mapping[str, ComponentCensus],
    tier: str,
    dtype_bytes: int,
    *,
    text_tier: str = "none",
    plan: Mapping[str, str] | None = None,
) -> int:
    """The largest group group offload onloads under ``tier`` (``offload.largest_group_bytes`` from a census): over
    the components ``plan`` (default: group offload's) groups."""
    plan = plan or offload_plan("group", resident_transformer=is_pinned(tier))
    tiers = tiers_of(tier, text_tier)
    sizes = [
        census_bytes(group, tiers.get(name, "none"), dtype_bytes).total
        for name, part in model.items()
        if plan.get(name) == GROUP
        for group in part.groups
    ]
    return max(sizes, default=0)


# ----------------------------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class TierEstimate:
    """One tier on one device: its bytes, the offload mode ``choose_offload`` picks (``offload`` None: it does not
    fit), the expected peak in that mode, and the speed model's seconds per image."""

    tier: str
    component_bytes: dict[str, int]
    largest_group: int
    offload: OffloadChoice | None
    peak_bytes: int | None
    seconds: float | None
    why_not: str = ""

    @property
    def weights_bytes(self) -> int:
        return sum(self.component_bytes.values())

    @property
    def fits(self) -> bool:
        return self.offload is not None

    def describe(self) -> str:
        if self.offload is None:
            return f"{self.tier}: does not fit ({self.why_not})"
        return (
            f"{tier_label(self.tier)} with offload {self.offload.mode}, expected peak "
            f"{(self.peak_bytes or 0) / GiB:.1f} GiB"
        )


def tier_label(tier: str) -> str:
    return {"none": "none (no quantization)"}.get(tier, tier.replace("gguf-", "GGUF "))


def transfer_bytes_per_s(model: Mapping[str, ComponentCensus] | None = None, dtype_bytes: int = 2) -> float:
    """Host->device bytes per second implied by GROUP_SLOWDOWN: FLUX.1-dev's bf16 transformer streamed once in each
    3.6x-long step (``model``: the census that figure is from)."""
    transformer = census_bytes((model or FLUX_DEV)["transformer"].whole, "none", dtype_bytes).total
    step = TIER_SECONDS["none"] / STEPS
    return transformer / (GROUP_SLOWDOWN * step)


def expected_seconds(tier: str, mode: str, sizes: Mapping[str, int], pinned: bool) -> float:
    """The speed model (module doc): the tier's resident seconds plus the transfers ``mode`` makes."""
    rate = transfer_bytes_per_s()
    seconds = tier_seconds(tier)
    step = seconds / STEPS
    if mode == "none":
        return seconds
    plan = offload_plan(mode, resident_transformer=pinned)
    for name, size in sizes.items():
        how = plan.get(name, MODEL)
        if how == DEVICE:
            continue
        if name == "transformer" and how == GROUP:  # streamed every step, overlapped with compute
            seconds += STEPS * max(0.0, size / rate - step)
        elif name == "transformer" and how == SEQUENTIAL:  # every step, no overlap
            seconds += STEPS * size / rate
        else:  # once per image
            seconds += size / rate
    return seconds


def estimate(
    tier: str,
    model: Mapping[str, ComponentCensus],
    *,
    dtype_bytes: int,
    device: torch.device | Any,
    free_bytes: int | None,
    offload: str = AUTO,
    text_tier: str = "none",
) -> TierEstimate:
    """``tier`` (and T5 in ``text_tier``) on this device: the bytes, the offload mode ``offload.choose_offload``
    picks for them (an explicit ``offload`` must also fit in ``free_bytes`` when known), the expected peak
    (``offload.mode_needs``). A bitsandbytes T5 stays on the device (quantize.py): resident in every mode."""
    pinned = is_pinned(tier)
    sizes = component_bytes(model, tier, dtype_bytes, text_tier=text_tier)
    plan = dict(offload_plan("group", resident_transformer=pinned))
    resident_t5 = sizes.pop("text_encoder_2", 0) if is_pinned(text_tier) else 0
    if resident_t5:
        plan["text_encoder_2"] = DEVICE
    group = largest_group(model, tier, dtype_bytes, text_tier=text_tier, plan=plan)
    free = None if free_bytes is None else free_bytes - resident_t5
    held = {**sizes, "text_encoder_2": resident_t5} if resident_t5 else sizes
    try:
        choice = choose_offload(offload, device, free, sizes, largest_group=group, resident_transformer=pinned)
    except ValueError as exc:  # the pinned transformer does not fit, or the mode cannot hold it
        return TierEstimate(tier, held, group, None, None, None, why_not=str(exc))
    peak = mode_needs(choice.mode, sizes, largest_group=group, resident_transformer=pinned) + resident_t5
    if free_bytes is not None and peak > free_bytes and (offload != AUTO or resident_t5):
        why = f"offload {choice.mode} needs {peak / GiB:.1f} GiB, {free_bytes / GiB:.1f} GiB free"
        return TierEstimate(tier, held, group, None, peak, None, why_not=why)
    return TierEstimate(tier, held, group, choice, peak, expected_seconds(tier, choice.mode, sizes, pinned))


@dataclass(frozen=True)
class TierChoice:
    """What ``auto`` picked: the tier (a ``quantize`` value or a GGUF type), its estimate, why, and every tier
    weighed."""

    tier: str
    picked: TierEstimate
    reason: str
    weighed: tuple[TierEstimate, ...]


def choose_tier(
    model: Mapping[str, ComponentCensus],
    *,
    dtype_bytes: int,
    device: torch.device | Any,
    free_bytes: int | None,
    offload: str = AUTO,
    tiers: tuple[str, ...] = AUTO_TIERS,
    text_tier: str = "none",
) -> TierChoice:
    """The fastest tier that fits (module doc); ties within ``TIE_FRACTION`` go to the most faithful. Without an
    accelerator, or with the free memory unknown, no quantization ("none"), as before tiers were chosen. ``text_tier``:
    T5's tier (``quantize_text``, the user's), counted in every candidate."""

    def weigh(tier: str) -> TierEstimate:
        return estimate(
            tier,
            model,
            dtype_bytes=dtype_bytes,
            device=device,
            free_bytes=free_bytes,
            offload=offload,
            text_tier=text_tier,
        )

    if getattr(device, "type", device) == "cpu" or free_bytes is None:
        where = "no accelerator" if getattr(device, "type", device) == "cpu" else "free memory unknown"
        only = weigh("none")
        return TierChoice("none", only, f"{where}: no quantization", (only,))
    weighed = tuple(weigh(t) for t in tiers)
    fitting = [e for e in weighed if e.fits and e.seconds is not None]
    if not fitting:  # only with an explicit offload (auto's last resort, sequential, always fits): the smallest peak
        sized = [e for e in weighed if e.peak_bytes is not None] or [weighed[0]]
        smallest = min(sized, key=lambda e: (e.peak_bytes or 0, fidelity_rank(e.tier)))
        reason = (
            f"{free_bytes / GiB:.1f} GiB free: no tier fits with offload={offload!r} by the estimate "
            f"({'; '.join(e.describe() for e in weighed)}); the smallest: {smallest.tier}"
        )
        return TierChoice(smallest.tier, smallest, reason, weighed)
    fastest = min(e.seconds or 0.0 for e in fitting)
    near = [e for e in fitting if (e.seconds or 0.0) <= fastest * (1 + TIE_FRACTION)]
    picked = min(near, key=lambda e: (fidelity_rank(e.tier), e.seconds))
    others = ", ".join(
        f"{e.tier} {e.offload.mode if e.offload else 'does not fit'}" for e in weighed if e is not picked
    )
    reason = (
        f"{free_bytes / GiB:.1f} GiB free: {picked.describe()}, ~{picked.seconds:.0f} s/image by the speed model "
        f"(weighed: {others or 'nothing else'})"
    )
    return TierChoice(picked.tier, picked, reason, weighed)


def available_tiers() -> tuple[str, ...]:
    """The ``AUTO_TIERS`` this install can run: in ``QUANTIZE_CHOICES`` (the tiers implemented), and the
    bitsandbytes tiers only with bitsandbytes installed."""
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    return tuple(t for t in AUTO_TIERS if t in QUANTIZE_CHOICES and (has_bnb or not is_pinned(t)))


def dtype_size(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def auto_quantize(
    device: torch.device,
    free_bytes: int | None,
    modules: Mapping[str, torch.nn.Module | None],
    dtype: torch.dtype,
    offload: str = AUTO,
    text_tier: str = "none",
) -> TierChoice:
    """``from_pretrained(quantize=None)``: the tier for these loaded (not yet quantized) components on ``device``
    (leave out the components that are not on it: ``text_device="cpu"``'s text encoders); ``text_tier``: T5's."""
    model = {name: component_census(name, module) for name, module in modules.items() if module is not None}
    return choose_tier(
        model,
        dtype_bytes=dtype_size(dtype),
        device=device,
        free_bytes=free_bytes,
        offload=offload,
        tiers=available_tiers(),
        text_tier=text_tier,
    )


def pick_quantize(
    quantize: str | None,
    device: torch.device,
    modules: Mapping[str, torch.nn.Module | None],
    dtype: torch.dtype,
    offload: str = AUTO,
    *,
    gguf: bool = False,
    text_tier: str = "none",
    log=print,
) -> str:
    """``from_pretrained``'s ``quantize`` as the tier to apply: a tier named is kept; None / ``AUTO`` is "none" for a
    GGUF model (the file is its tier: auto picks only the offload) and without an accelerator (as before tiers were
    chosen), else ``auto_quantize``'s pick for these loaded components, logged with its reason."""
    if quantize not in (None, AUTO):
        return quantize
    if gguf or device.type == "cpu":
        return "none"
    from .offload import accelerator_free_bytes

    choice = auto_quantize(device, accelerator_free_bytes(device), modules, dtype, offload, text_tier)
    log(f"quantize: auto picked {choice.tier} ({choice.reason})")
    return choice.tier


# ----------------------------------------------------------------------------------------------- README table

CARDS_GB = (8, 12, 16, 24, 48, 80)
# An idle card's free memory: its size less what the CUDA context and a desktop hold (an assumption, not measured).
CARD_RESERVED = 1 * GiB
TABLE_TIERS = ("none", "fp8", "nf4", "8bit", "gguf-Q8_0", "gguf-Q6_K", "gguf-Q5_K", "gguf-Q4_1", "gguf-Q4_0")
TABLE_START = "<!-- memory-tiers-table:start (python -m flux_vector.memory_tiers writes it) -->"
TABLE_END = "<!-- memory-tiers-table:end -->"


def readme_table(model: Mapping[str, ComponentCensus] | None = None, dtype_bytes: int = 2) -> str:
    """The README's table (between ``TABLE_START`` and ``TABLE_END``): per tier FLUX.1-dev's transformer and total
    weights, the peak with no offload, and on each card the offload mode auto takes with that tier and its expected
    peak; the last row: the tier and mode ``--quantize auto`` picks (of ``AUTO_TIERS``; a GGUF file is a tier the
    user chooses by giving it)."""
    import types

    model = model or FLUX_DEV
    cuda = types.SimpleNamespace(type="cuda")  # choose_offload reads only the device's type
    cards = [(gb, gb * GiB - CARD_RESERVED) for gb in CARDS_GB]
    head = "| tier | transformer GiB | weights GiB | peak GiB, no offload | " + " | ".join(
        f"{gb} GB" for gb in CARDS_GB
    )
    lines = [head + " |", "|---|" + "---:|" * 3 + "---|" * len(CARDS_GB)]
    for tier in TABLE_TIERS:
        sizes = component_bytes(model, tier, dtype_bytes)
        cells = []
        for _gb, free in cards:
            e = estimate(tier, model, dtype_bytes=dtype_bytes, device=cuda, free_bytes=free)
            cells.append(f"{e.offload.mode} {(e.peak_bytes or 0) / GiB:.1f}" if e.offload else "does not fit")
        label = "none (bf16)" if tier == "none" else tier_label(tier)
        lines.append(
            f"| {label} | {sizes['transformer'] / GiB:.1f} | {sum(sizes.values()) / GiB:.1f} | "
            f"{mode_needs('none', sizes) / GiB:.1f} | " + " | ".join(cells) + " |"
        )
    picks = []
    for _gb, free in cards:
        c = choose_tier(model, dtype_bytes=dtype_bytes, device=cuda, free_bytes=free)
        mode = c.picked.offload.mode if c.picked.offload else "?"
        label = "none (bf16)" if c.tier == "none" else tier_label(c.tier)
        picks.append(f"**{label} {mode} {(c.picked.peak_bytes or 0) / GiB:.1f}** (~{c.picked.seconds or 0:.0f} s)")
    lines.append("| **auto picks** | | | | " + " | ".join(picks) + " |")
    return "\n".join(lines)


def readme_section(text: str) -> str:
    """The table as it stands between the markers in ``text`` (a README)."""
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip()


if __name__ == "__main__":
    print(TABLE_START)
    print(readme_table())
    print(TABLE_END)
