"""``flux-vector doctor``: what a user needs to know before a real run, read from this machine without downloading or
loading anything: torch and CUDA, the GPU and its free memory, the offload ``--offload auto`` would choose for
FLUX.1-dev in bf16 and 8-bit here (``offload.choose_offload`` with FLUX.1-dev's component sizes), the tier and offload
``--quantize auto`` picks with its expected peak (``memory_tiers.choose_tier``), whether FLUX.1-dev and the LoRA are
in the local Hugging Face cache (with the ``hf download`` commands if not), bitsandbytes and torchao, and the job
store's folder with its free space.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch

from .memory_tiers import FLUX_DEV, TierChoice, available_tiers, choose_tier, component_bytes, largest_group
from .models import (
    DEFAULT_LORA,
    DEFAULT_MODEL,
    GATED_MODEL_HINT,
    MODEL_ENV,
    WeightsNotFound,
    download_command,
    resolve_lora,
    resolve_model,
)
from .offload import DEFAULT_OFFLOAD, GiB, OffloadChoice, choose_offload

# FLUX.1-dev's components in bf16, bytes (memory_tiers.FLUX_DEV: the parameter census of its public configs, x 2):
# what `auto` weighs against the free memory; with --quantize 8bit the transformer's linears in int8 with their row
# scales (norms, embeddings and memory_tiers.KEEP_FULL_PRECISION stay bf16), about half.
FLUX_DEV_BYTES = component_bytes(FLUX_DEV, "none", 2)
FLUX_DEV_BYTES_8BIT = component_bytes(FLUX_DEV, "8bit", 2)
# The largest group block-level group offload onloads (offload.block_group_bytes on the real architecture): a double
# block of the transformer in bf16; with --quantize 8bit the transformer stays on the GPU and it is a T5-XXL block.
FLUX_DEV_LARGEST_GROUP = largest_group(FLUX_DEV, "none", 2)
FLUX_DEV_LARGEST_GROUP_8BIT = largest_group(FLUX_DEV, "8bit", 2)


@dataclass(frozen=True)
class Gpu:
    name: str
    free_bytes: int
    total_bytes: int
    capability: tuple[int, int]


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.lines.append((label, value))

    def text(self) -> str:
        width = max(len(label) for label, _ in self.lines)
        out = [f"{label.ljust(width)}  {value}" for label, value in self.lines]
        if self.todo:
            out += ["", "to do before a real run:", *(f"  - {step}" for step in self.todo)]
        else:
            out += ["", f"ready: flux-vector generate --prompt '...' --out image.png runs {DEFAULT_MODEL} here"]
        return "\n".join(out)


def cuda_gpu(index: int = 0) -> Gpu | None:
    """The CUDA GPU ``index`` as torch sees it (None without one)."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(index)
    major, minor = torch.cuda.get_device_capability(index)
    return Gpu(torch.cuda.get_device_name(index), int(free), int(total), (major, minor))


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def offload_choices(gpu: Gpu | None) -> dict[str, OffloadChoice]:
    """What ``--offload auto`` picks for FLUX.1-dev in bf16 and with ``--quantize 8bit``."""
    device = torch.device("cuda" if gpu else "cpu")
    free = gpu.free_bytes if gpu else None
    bf16 = choose_offload(DEFAULT_OFFLOAD, device, free, FLUX_DEV_BYTES, largest_group=FLUX_DEV_LARGEST_GROUP)
    try:
        int8 = choose_offload(
            DEFAULT_OFFLOAD,
            device,
            free,
            FLUX_DEV_BYTES_8BIT,
            largest_group=FLUX_DEV_LARGEST_GROUP_8BIT,
            resident_transformer=True,
        )
    except ValueError as exc:  # the int8 transformer stays on the GPU and does not fit there
        int8 = OffloadChoice("does not fit", device, str(exc))
    return {"bf16": bf16, "8bit": int8}


def describe_gpu(report: Report, gpu: Gpu | None) -> None:
    report.add("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none, a CPU-only wheel'})")
    if gpu is None:
        report.add("GPU", "none visible to torch")
        report.todo.append(
            "a CUDA GPU: FLUX.1-dev on the CPU takes minutes per step (install the CUDA build of torch on a GPU "
            "machine: https://pytorch.org/get-started/locally/); --model tiny runs anywhere"
        )
        return
    report.add(
        "GPU",
        f"{gpu.name} (compute {gpu.capability[0]}.{gpu.capability[1]}), {gpu.free_bytes / GiB:.1f} GiB free of "
        f"{gpu.total_bytes / GiB:.1f} GiB",
    )


def describe_offload(report: Report, gpu: Gpu | None) -> None:
    choices = offload_choices(gpu)
    bf16, int8 = choices["bf16"], choices["8bit"]
    report.add(
        "--offload auto",
        f"{bf16.mode}: {bf16.reason} (FLUX.1-dev in bf16, {sum(FLUX_DEV_BYTES.values()) / GiB:.1f} GiB)",
    )
    if gpu is not None:
        report.add("with --quantize 8bit", f"{int8.mode}: {int8.reason}")
        if bf16.mode != "none" and int8.mode == "none":
            report.todo.append("add --quantize 8bit: the whole model then fits on this GPU (no offload)")


def tier_choice(gpu: Gpu | None, tiers: tuple[str, ...] | None = None) -> TierChoice:
    """What ``--quantize auto --offload auto`` picks for FLUX.1-dev in bf16 on ``gpu`` (``memory_tiers.choose_tier``
    over the tiers this install can run)."""
    device = torch.device("cuda" if gpu else "cpu")
    return choose_tier(
        FLUX_DEV,
        dtype_bytes=2,
        device=device,
        free_bytes=gpu.free_bytes if gpu else None,
        tiers=available_tiers() if tiers is None else tiers,
    )


def describe_tier(report: Report, gpu: Gpu | None) -> None:
    choice = tier_choice(gpu)
    picked = choice.picked
    if gpu is None or picked.offload is None:
        report.add("auto (tier + offload)", f"{choice.tier}: {choice.reason}")
        return
    report.add(
        "auto (tier + offload)",
        f"--quantize {choice.tier} --offload {picked.offload.mode}, expected peak "
        f"{(picked.peak_bytes or 0) / GiB:.1f} GiB of {gpu.free_bytes / GiB:.1f} GiB free ({choice.reason})",
    )


def describe_weights(report: Report) -> None:
    from huggingface_hub import constants

    report.add("Hugging Face cache", str(constants.HF_HUB_CACHE))
    configured = os.environ.get(MODEL_ENV)
    if configured:
        report.add(f"${MODEL_ENV}", configured)
    for label, repo_id, find in (
        ("model", configured or DEFAULT_MODEL, lambda: resolve_model(configured or DEFAULT_MODEL)),
        ("LoRA", DEFAULT_LORA, lambda: resolve_lora(DEFAULT_LORA, DEFAULT_MODEL)),
    ):
        try:
            report.add(label, f"{repo_id}: found at {find()}")
        except WeightsNotFound:
            report.add(label, f"{repo_id}: not downloaded")
            gated = f" ({GATED_MODEL_HINT})" if repo_id == DEFAULT_MODEL else ""
            report.todo.append(f"{download_command(repo_id)}{gated}")


def describe_packages(report: Report, gpu: Gpu | None) -> None:
    bnb = package_version("bitsandbytes")
    report.add(
        "bitsandbytes",
        f"{bnb} (--quantize 8bit / nf4{': slow without a CUDA GPU' if gpu is None else ' available'})"
        if bnb
        else "not installed (--quantize 8bit / nf4 need it: pip install bitsandbytes)",
    )
    torchao = package_version("torchao")
    fp8 = gpu is not None and gpu.capability >= (8, 9)
    report.add(
        "torchao",
        f"{torchao} (fp8 in --fast: {'yes' if fp8 else 'no, it needs an Ada/Hopper GPU'})"
        if torchao
        else "not installed (only --fast's fp8 on Ada/Hopper uses it: pip install -e '.[fast]')",
    )


def describe_store(report: Report) -> None:
    from .paths import nearest_existing
    from .server.serve import default_store_path

    store = default_store_path()
    free = shutil.disk_usage(nearest_existing(store.parent)).free
    report.add("job store (serve)", f"{store}, {free / GiB:.1f} GiB free on its disk")
    if free < GiB:
        report.todo.append(f"free some space under {nearest_existing(store.parent)} (images are kept there)")


def diagnose(gpu: Gpu | Literal["detect"] | None = "detect") -> Report:
    """The whole report; ``gpu`` is read from torch unless given (None: no GPU)."""
    gpu = cuda_gpu() if gpu == "detect" else gpu
    report = Report()
    report.add("python", f"{platform.python_version()} ({sys.executable})")
    describe_gpu(report, gpu)
    describe_offload(report, gpu)
    describe_tier(report, gpu)
    describe_weights(report)
    describe_packages(report, gpu)
    describe_store(report)
    return report
