"""What every part of the LoRA package shares: the error, the strength range and one placed update (``LoraPatch``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..request import ModelCannot

STRENGTH_MIN = -10.0
STRENGTH_MAX = 10.0
_MAX_LISTED = 50


class LoraError(ValueError):
    """A LoRA that cannot be read or placed. ``keys`` holds every offending key."""

    def __init__(self, message: str, keys: Iterable[str] = ()):
        super().__init__(message)
        self.keys = tuple(keys)


def check_strength(value) -> float:
    """``value`` as a float if it is a finite real number in [STRENGTH_MIN, STRENGTH_MAX], else ``ValueError``."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if valid:
        number = float(value)
        valid = math.isfinite(number) and STRENGTH_MIN <= number <= STRENGTH_MAX
    if not valid:
        raise ValueError(
            f"LoRA strength must be a finite number in [{STRENGTH_MIN:g}, {STRENGTH_MAX:g}], got {value!r}"
        )
    return number


class NoLoraLoaded(ModelCannot):
    """A non-zero lora_strength asked of a pipeline loaded without a LoRA."""


def strength_without_lora(strength: float, explicit: bool) -> float:
    """The one rule for a pipeline loaded without a LoRA (``lora=None``, ``--lora none``): it serves lora_strength 0
    only. A strength left at its default becomes 0; an explicit other one is ``NoLoraLoaded``."""
    if explicit and strength != 0:
        raise NoLoraLoaded(
            f"lora_strength={strength!r} cannot be served: no LoRA is loaded (lora=None, or started with --lora "
            "none); lora_strength must be 0 or left out"
        )
    return 0.0


def format_problems(problems: dict[str, str], what: str) -> str:
    """One error message listing (at most 50 of) the offending keys with their reasons."""
    lines = [f"  {key}: {reason}" for key, reason in sorted(problems.items())[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return f"{what} ({len(problems)} key{'s' if len(problems) != 1 else ''}):\n" + "\n".join(lines)


def out_features(linear: nn.Module) -> int:
    """The output rows of any linear a LoRA patches (nn.Linear and its bitsandbytes subclasses, ``Fp8Linear``,
    ``GGUFLinear``, ``LoraLinear``): each holds them as an int attribute, which torch's ``Module.__getattr__`` types
    as ``Tensor | Module`` on a plain ``nn.Module``."""
    return cast(int, linear.out_features)


def in_features(linear: nn.Module) -> int:
    """The input width of any linear a LoRA patches (see ``out_features``)."""
    return cast(int, linear.in_features)


@dataclass(eq=False)
class LoraPatch:
    """One low-rank update of one linear: rows ``offset : offset + rows`` of its output get ``s * scale * B @ A``."""

    target: str  # module path inside its model (diffusers names for the transformer)
    module: nn.Module  # that module (as it was when parsed)
    down: torch.Tensor  # A, [rank, in_features]
    up: torch.Tensor  # B (the slice for this target), [rows, rank]
    offset: int  # first output row of the target this patch adds to
    scale: float  # alpha / rank, 1.0 without an alpha key
    key: str  # the LoRA key it came from (without the .lora_down/.lora_up suffix)
    component: str = "transformer"
    root: nn.Module | None = None  # the model ``target`` is a path in (what parse_lora was given)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def rows(self) -> int:
        return self.up.shape[0]

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """``strength * scale * B @ A`` in float32, [rows, in_features] (ComfyUI's order of operations)."""
        return (strength * self.scale) * (self.up.float() @ self.down.float())

    def __repr__(self) -> str:
        return (
            f"LoraPatch({self.key!r} -> {self.component}.{self.target}[{self.offset}:{self.offset + self.rows}], "
            f"rank={self.rank}, scale={self.scale:g})"
        )
