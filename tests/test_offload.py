"""Offload selection: what runs with no accelerator, and what "auto" picks for each amount of free memory."""

import pytest
import torch

from flux_vector.offload import GiB, choose_offload

FLUX_DEV = {
    "transformer": int(23.8 * GiB),
    "text_encoder_2": int(9.5 * GiB),
    "vae": int(0.2 * GiB),
    "text_encoder": int(0.25 * GiB),
}
CUDA = torch.device("cuda")


def test_no_accelerator_runs_on_cpu_and_says_so():
    choice = choose_offload("auto", torch.device("cpu"), None, FLUX_DEV)
    assert choice.mode == "none" and "CPU" in choice.reason


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_explicit_offload_without_accelerator_is_a_clear_error(mode):
    with pytest.raises(ValueError, match="needs an accelerator"):
        choose_offload(mode, torch.device("cpu"), None, FLUX_DEV)


@pytest.mark.parametrize(
    ("free_gib", "mode"),
    [(80, "none"), (40, "none"), (30, "model"), (24, "group"), (12, "group"), (8, "group"), (5, "sequential")],
)
def test_auto_picks_by_free_memory(free_gib, mode):
    choice = choose_offload("auto", CUDA, int(free_gib * GiB), FLUX_DEV)
    assert choice.mode == mode, choice.reason
    assert f"{free_gib:.1f} GiB free" in choice.reason


def test_explicit_mode_is_kept_on_an_accelerator():
    assert choose_offload("sequential", CUDA, 80 * GiB, FLUX_DEV).mode == "sequential"


def test_unknown_mode():
    with pytest.raises(ValueError, match="offload must be one of"):
        choose_offload("disk", CUDA, 80 * GiB, FLUX_DEV)
