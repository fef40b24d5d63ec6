"""Noise drawn ahead on a background thread: the same draws, in the same order, and no thread left behind."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from flux_vector.sampling import SAMPLER_NAMES, ksampler
from flux_vector.sampling.noise import BrownianTreeNoise, SeededNoise
from flux_vector.sampling.prefetch import THREAD_NAME, PrefetchedNoise, planned_noise_calls
from flux_vector.sampling.sample import _noise_source, ksampler_sigmas, resolve_sampler

NOISY = [name for name in SAMPLER_NAMES if resolve_sampler(name, 1.0)[0].noise != "none"]
LATENT = torch.zeros(1, 16, 8, 8)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


class ModelFailure(Exception):
    pass


def failing_model(fail_at: int):
    calls = [0]

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == fail_at:
            raise ModelFailure(f"model call {fail_at}")
        return 0.1 * x

    return model


@pytest.mark.parametrize("name", NOISY)
def test_the_plan_is_the_sequence_the_sampler_asks_for(name):
    """A dry run predicts every (sigma, sigma_next) pair the real run asks for, in order, and no more."""
    spec, _ = resolve_sampler(name, 1.0)
    sigmas = ksampler_sigmas(name, "simple", 6)
    asked = []

    def noise(sigma, sigma_next):
        asked.append((float(sigma), float(sigma_next)))
        return torch.randn(LATENT.shape)

    class Model:
        mu, uncond = 1.15, torch.ones(LATENT.shape)

        def __call__(self, x, sigma):
            return 0.5 * x

    spec.fn(Model(), torch.randn(LATENT.shape), sigmas, noise=noise)
    planned = [(float(a), float(b)) for a, b in planned_noise_calls(spec.fn, sigmas, 1.15)]
    assert asked and planned == asked


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_prefetched_draws_equal_direct_draws_bitwise(name):
    spec, _ = resolve_sampler(name, 1.0)
    sigmas = ksampler_sigmas(name, "karras", 8)
    calls = planned_noise_calls(spec.fn, sigmas, 1.15)
    source = _noise_source(spec, LATENT, sigmas, 7)
    direct = [source(*call) for call in calls]
    with PrefetchedNoise(_noise_source(spec, LATENT, sigmas, 7), calls, LATENT.device, depth=2) as noise:
        ahead = [noise(*call) for call in calls]
    assert all(torch.equal(a, b) for a, b in zip(direct, ahead, strict=True))
    assert not prefetch_threads()


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "dpmpp_3m_sde_gpu", "lcm"])
@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_generation_failed_mid_way_leaves_no_prefetch_thread(name, fail_at):
    with pytest.raises(ModelFailure):
        ksampler(failing_model(fail_at), None, sampler_name=name, scheduler="simple", steps=8, seed=3, latent=LATENT)
    assert not prefetch_threads()


def test_a_cancel_from_the_step_callback_leaves_no_prefetch_thread():
    """What a cancelled job does: the per-step callback raises while draws are still queued ahead."""

    def cancel(i, x, denoised):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ksampler(
            lambda x, s: 0.1 * x,
            None,
            sampler_name="dpmpp_2m_sde",
            scheduler="simple",
            steps=10,
            seed=3,
            latent=LATENT,
            callback=cancel,
        )
    assert not prefetch_threads()


def test_a_failing_source_raises_on_the_sampler_thread():
    def broken(sigma, sigma_next):
        raise ValueError("tree broke")

    calls = [(torch.tensor(1.0), torch.tensor(0.5))]
    with PrefetchedNoise(broken, calls, torch.device("cpu")) as noise, pytest.raises(ValueError, match="tree broke"):
        noise(*calls[0])
    assert not prefetch_threads()


def test_a_draw_out_of_plan_is_refused():
    source = SeededNoise(LATENT, 1)
    calls = [(torch.tensor(1.0), torch.tensor(0.5)), (torch.tensor(0.5), torch.tensor(0.25))]
    with PrefetchedNoise(source, calls, torch.device("cpu")) as noise:
        noise(*calls[0])
        with pytest.raises(RuntimeError, match="planned"):
            noise(torch.tensor(0.5), torch.tensor(0.3))


def test_brownian_source_draws_on_the_cpu_whatever_the_latent():
    tree = BrownianTreeNoise(LATENT, torch.tensor(0.03), torch.tensor(1.0), 5)
    assert tree(torch.tensor(1.0), torch.tensor(0.5)).device.type == "cpu"


def test_brownian_draws_equal_comfyuis_tree_over_a_long_schedule():
    """Our tree keeps a larger cache than torchsde.BrownianTree (what ComfyUI builds); the draws are the same."""
    import torchsde

    sigmas = ksampler_sigmas("dpmpp_sde", "karras", 40)
    lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
    ours = BrownianTreeNoise(LATENT, lo, hi, 11)
    comfy = torchsde.BrownianTree(lo.float(), torch.zeros(LATENT.shape), hi.float(), entropy=11)
    for sigma, sigma_next in itertools.pairwise(sigmas[:-1]):
        want = comfy(sigma_next.float(), sigma.float()) * -1 / (sigma_next - sigma).abs().sqrt()
        assert torch.equal(ours(sigma, sigma_next), want)
