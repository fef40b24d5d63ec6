"""The transformer's timestep and guidance inputs as ComfyUI gives them: float32, embedded in float32.

diffusers' ``FluxTransformer2DModel.forward`` rounds ``timestep`` and ``guidance`` to the hidden states' dtype before
multiplying by 1000 and taking the sinusoidal embedding; on CUDA that is bfloat16, whose 8-bit mantissa moves a
timestep by up to 1.8 of 1000 over a 25-step FLUX schedule, and the embedding's highest frequencies turn by up to
that many radians (measured on the CPU: the 256-wide sinusoidal projection differs by 16 % (median step) to 41 %
(worst step) from float32's; guidance 3.7 becomes 3.703125). ComfyUI embeds both in float32 and casts the embedding.
``embed_in_float32`` makes the diffusers model do the same. On float32 weights (the CPU) it changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch


def embed_in_float32(transformer: torch.nn.Module) -> None:
    """Hooks (installed once): the transformer's forward pre-hook keeps the float32 ``timestep`` and ``guidance``
    it is called with; ``time_text_embed``'s pre-hook embeds ``1000 * those`` instead of diffusers' rounded ones."""
    if getattr(transformer, "_flux_vector_fp32_embedding", False):
        return
    embedder = getattr(transformer, "time_text_embed", None)
    if embedder is None:
        return
    called_with: dict[str, torch.Tensor | None] = {}

    def keep(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        for name in ("timestep", "guidance"):
            value = kwargs.get(name)
            called_with[name] = None if value is None else value.float() * 1000

    def swap(_module: torch.nn.Module, args: tuple) -> tuple | None:
        timestep = called_with.get("timestep")
        if timestep is None or not args:
            return None
        if len(args) == 3:  # (timestep, guidance, pooled): guidance-distilled models (FLUX.1-dev)
            guidance = called_with.get("guidance")
            return (timestep, args[1] if guidance is None else guidance, args[2])
        return (timestep, *args[1:])  # (timestep, pooled)

    transformer.register_forward_pre_hook(keep, with_kwargs=True)
    embedder.register_forward_pre_hook(swap)
    # a marker on the module (nn.Module types its attributes Tensor | Module): installed once
    setattr(transformer, "_flux_vector_fp32_embedding", True)  # noqa: B010


def to_device(sigma: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A step's sigma (a small CPU tensor: the samplers keep the sigmas on the CPU) on ``device`` in float32. To a
    CUDA device through pinned memory with a non-blocking copy: a copy from pageable memory makes the host wait for
    the GPU to finish the previous step's kernels before it can queue the next step's."""
    sigma = sigma.to(torch.float32)
    if device.type != "cuda" or sigma.device.type != "cpu":
        return sigma.to(device)
    return sigma.pin_memory().to(device, non_blocking=True)
