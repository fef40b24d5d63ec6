"""Issue 30: `flux-vector doctor` says which tier and offload `--quantize auto` picks for FLUX.1-dev on mocked 8 / 12
/ 16 / 24 / 80 GB GPUs, with the expected peak, and the choice is memory_tiers.choose_tier's own."""

from __future__ import annotations

import pytest
import torch

from flux_vector import doctor
from flux_vector import memory_tiers as mt
from flux_vector.offload import HEADROOM, GiB
from tests.test_doctor import empty_hub, lines, mock_gpu  # noqa: F401  (empty_hub: a fixture)

CUDA = torch.device("cuda")


@pytest.mark.parametrize("free_gib", [8.0, 12.0, 16.0, 24.0, 80.0])
def test_doctor_reports_the_auto_tier_on_mocked_gpus(monkeypatch, empty_hub, free_gib):  # noqa: F811
    mock_gpu(monkeypatch, free_gib)
    found = lines(doctor.diagnose())["auto (tier + offload)"]
    expected = mt.choose_tier(
        mt.FLUX_DEV, dtype_bytes=2, device=CUDA, free_bytes=int(free_gib * GiB), tiers=mt.available_tiers()
    )
    picked = expected.picked
    assert picked.fits and picked.peak_bytes <= free_gib * GiB
    assert found.startswith(
        f"--quantize {expected.tier} --offload {picked.offload.mode}, expected peak {picked.peak_bytes / GiB:.1f} GiB "
        f"of {free_gib:.1f} GiB free ("
    )
    assert expected.reason in found


@pytest.mark.parametrize("free_gib", [8.0, 12.0, 16.0, 24.0, 80.0])
def test_with_every_tier_the_small_cards_quantize_and_the_big_one_does_not(free_gib):
    """What doctor will say once nf4 and fp8 are there (all of ``AUTO_TIERS``): bf16 without offload only where it
    fits (80 GB), a quantized tier everywhere else, never a peak above the free memory."""
    gpu = doctor.Gpu("NVIDIA Test GPU", int(free_gib * GiB), int(80 * GiB), (9, 0))
    choice = doctor.tier_choice(gpu, tiers=mt.AUTO_TIERS)
    assert choice.picked.peak_bytes <= gpu.free_bytes
    bf16_fits = sum(doctor.FLUX_DEV_BYTES.values()) + HEADROOM <= gpu.free_bytes
    assert (choice.tier == "none") == bf16_fits
    if bf16_fits:
        assert choice.picked.offload.mode == "none"


def test_doctor_on_the_cpu_says_no_quantization(monkeypatch, empty_hub):  # noqa: F811
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lines(doctor.diagnose())["auto (tier + offload)"] == "none: no accelerator: no quantization"


def test_doctors_flux_dev_sizes_are_the_census():
    assert mt.component_bytes(mt.FLUX_DEV, "none", 2) == doctor.FLUX_DEV_BYTES
    assert sum(doctor.FLUX_DEV_BYTES.values()) / GiB == pytest.approx(31.4, abs=0.05)
    assert mt.largest_group(mt.FLUX_DEV, "none", 2) == doctor.FLUX_DEV_LARGEST_GROUP
