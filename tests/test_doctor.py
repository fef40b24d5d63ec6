"""`flux-vector doctor` on this CPU machine and with mocked GPUs of several memory sizes (torch.cuda's readers
monkeypatched): what `--offload auto` would choose for FLUX.1-dev, and what the user is told to do."""

from __future__ import annotations

import pytest
import torch

from flux_vector import doctor
from flux_vector.offload import GiB, choose_offload


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A Hugging Face cache without FLUX.1-dev or the LoRA."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("FLUX_VECTOR_MODEL", raising=False)


def mock_gpu(monkeypatch, free_gib: float, total_gib: float = 80.0, capability=(9, 0), name="NVIDIA Test GPU"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (int(free_gib * GiB), int(total_gib * GiB)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)


def lines(report) -> dict[str, str]:
    return dict(report.lines)


def test_cpu_report_says_what_is_missing(monkeypatch, empty_hub):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = doctor.diagnose()
    found = lines(report)
    assert found["torch"].startswith(torch.__version__)
    assert found["GPU"] == "none visible to torch"
    assert found["--offload auto"].startswith("none: no accelerator")
    assert found["model"] == "black-forest-labs/FLUX.1-dev: not downloaded"
    assert found["LoRA"] == "renderartist/simplevectorflux: not downloaded"
    assert "bitsandbytes" in found and "torchao" in found
    assert "GiB free on its disk" in found["job store (serve)"]
    text = report.text()
    assert "hf download black-forest-labs/FLUX.1-dev (accept the license" in text
    assert "hf download renderartist/simplevectorflux Simple_Vector_Flux_v2_renderartist.safetensors" in text
    assert "a CUDA GPU" in text and "ready:" not in text


# free GiB -> what auto picks for FLUX.1-dev in bf16 (31.4 GiB of weights) and with --quantize 8bit (20.4 GiB)
GPU_CASES = [
    (80.0, "none", "none"),
    (32.0, "model", "none"),
    (24.0, "group", "model"),
    (8.0, "group", "does not fit"),  # 8-bit keeps the int8 transformer (11 GiB) on the GPU (issue 31)
    (4.0, "sequential", "does not fit"),
]


@pytest.mark.parametrize(("free_gib", "bf16", "int8"), GPU_CASES)
def test_mocked_gpu_memory_sizes(monkeypatch, empty_hub, free_gib, bf16, int8):
    mock_gpu(monkeypatch, free_gib)
    report = doctor.diagnose()
    found = lines(report)
    assert found["GPU"] == f"NVIDIA Test GPU (compute 9.0), {free_gib:.1f} GiB free of 80.0 GiB"
    assert found["--offload auto"].startswith(f"{bf16}: {free_gib:.1f} GiB free")
    assert found["with --quantize 8bit"].startswith(f"{int8}: ")
    # the report's choice is the pipeline's own decision function on FLUX.1-dev's sizes
    free, largest = int(free_gib * GiB), doctor.FLUX_DEV_LARGEST_GROUP
    expected = choose_offload("auto", torch.device("cuda"), free, doctor.FLUX_DEV_BYTES, largest_group=largest)
    assert found["--offload auto"].startswith(f"{expected.mode}: {expected.reason}")
    suggests_8bit = any("--quantize 8bit" in step for step in report.todo)
    assert suggests_8bit == (bf16 != "none" and int8 == "none")
    assert "a CUDA GPU" not in report.text()


def test_fp8_needs_ada_or_hopper(monkeypatch, empty_hub):
    monkeypatch.setattr(doctor, "package_version", lambda name: "0.18.0")
    mock_gpu(monkeypatch, 40.0, capability=(8, 0))
    assert "no, it needs an Ada/Hopper GPU" in lines(doctor.diagnose())["torchao"]
    mock_gpu(monkeypatch, 40.0, capability=(8, 9))
    assert "fp8 in --fast: yes" in lines(doctor.diagnose())["torchao"]


def test_ready_when_everything_is_there(monkeypatch, tmp_path):
    mock_gpu(monkeypatch, 80.0)
    monkeypatch.setattr(doctor, "resolve_model", lambda model: tmp_path / "flux")
    monkeypatch.setattr(doctor, "resolve_lora", lambda lora, model: tmp_path / "lora.safetensors")
    monkeypatch.delenv("FLUX_VECTOR_MODEL", raising=False)
    report = doctor.diagnose()
    assert report.todo == []
    assert "ready: flux-vector generate" in report.text()
