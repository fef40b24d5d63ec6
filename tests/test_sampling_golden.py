"""Every sigma list, noise tensor and sampler run in ComfyUI's golden data, reproduced by flux_vector.sampling."""

from __future__ import annotations

import pytest
import torch

from flux_vector.sampling import (
    HOSTED_SAMPLER_NAMES,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    get_sigmas,
    initial_noise,
    ksampler,
    to_latent,
)
from flux_vector.sampling.schedules import flux_mu, get_sigmas_discard_penultimate, sigma_table

from .golden import manifest, tensors, toy_models

VERSION = "latest"
MU = {"1024x1024": 1.15, "832x1216": flux_mu(832, 1216)}
SEED = 6652105


def _sigma_keys(kind: str) -> list[str]:
    prefix = f"{VERSION}/{kind}/"
    return sorted(k for k in tensors() if k.startswith(prefix) and not k.endswith("table_first16"))


def _runs() -> dict[str, dict]:
    return manifest()[VERSION]["runs"]


def _comparable_runs() -> list[str]:
    return sorted(k for k in _runs() if not k.startswith("legacy_"))


def test_names_match_the_hosted_api():
    assert list(HOSTED_SAMPLER_NAMES) == manifest()["hosted_api_sampler_names_26"]
    assert set(SAMPLER_NAMES) == set(HOSTED_SAMPLER_NAMES) | {"deis", "euler_cfg_pp", "euler_ancestral_cfg_pp"}
    assert SCHEDULER_NAMES == ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")


def test_mu_for_832x1216():
    assert flux_mu(1024, 1024) == 1.15
    assert flux_mu(832, 1216) == manifest()[VERSION]["sigmas"]["832x1216"]["shift_mu"]


@pytest.mark.parametrize("res", ["1024x1024", "832x1216"])
def test_sigma_table(res):
    assert torch.equal(sigma_table(MU[res])[:16], tensors()[f"{VERSION}/sigmas/{res}/table_first16"])


@pytest.mark.parametrize("key", _sigma_keys("sigmas"))
def test_sigmas(key):
    *_, res, scheduler, steps = key.split("/")
    got = get_sigmas(scheduler, int(steps), MU[res])
    want = tensors()[key]
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("key", _sigma_keys("sigmas_discard_penultimate"))
def test_sigmas_discard_penultimate(key):
    *_, res, scheduler, steps = key.split("/")
    got = get_sigmas_discard_penultimate(scheduler, int(steps), MU[res])
    torch.testing.assert_close(got, tensors()[key], atol=2e-6, rtol=0)


def test_noise_bitwise():
    t = tensors()
    for seed in (0, SEED):
        assert torch.equal(initial_noise([1, 16, 8, 8], seed), t[f"{VERSION}/noise/seed{seed}/1x16x8x8"])
    big = initial_noise([1, 16, 128, 128], SEED).flatten()
    assert torch.equal(big[:65536], t[f"{VERSION}/noise/seed{SEED}/1x16x128x128_first65536"].flatten())
    stats = manifest()[VERSION]["noise"][f"seed{SEED}_1x16x128x128_stats"]
    assert big[-8:].tolist() == stats["last8"]
    assert big.double().sum().item() == pytest.approx(stats["sum_f64"], abs=1e-9)
    tall = initial_noise([1, 16, 152, 104], SEED).flatten()[:4096]
    assert torch.equal(tall, t[f"{VERSION}/noise/seed{SEED}/1x16x152x104_first4096"].flatten())


class Recorder:
    def __init__(self):
        self.x, self.denoised = [], []

    def __call__(self, i, x, denoised):
        assert i == len(self.x)
        self.x.append(x.clone())
        self.denoised.append(denoised.clone())


def _run(sampler_name: str, scheduler: str, steps: int, cfg: float, callback=None):
    positive, negative = toy_models()
    x = ksampler(
        positive,
        negative,
        sampler_name=sampler_name,
        scheduler=scheduler,
        steps=steps,
        seed=SEED,
        cfg=cfg,
        latent=torch.zeros(1, 16, 8, 8),
        mu=1.15,
        callback=callback,
    )
    return x, positive.evals + negative.evals


@pytest.mark.parametrize("run_key", _comparable_runs())
def test_sampler_run(run_key):
    run = _runs()[run_key]
    prefix = f"{VERSION}/runs/{run_key}/"
    t = tensors()
    recorder = Recorder()
    x, evals = _run(run["sampler_name"], run["scheduler"], run["steps"], run["cfg"], recorder)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, t[prefix + "final_model_space"], atol=1e-4, rtol=0)
    assert evals == run["model_evals"]
    if prefix + "final_latent" in t:
        torch.testing.assert_close(to_latent(x), t[prefix + "final_latent"], atol=1e-4, rtol=0)
    if prefix + "step_x" in t:
        torch.testing.assert_close(torch.cat(recorder.x), t[prefix + "step_x"], atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.cat(recorder.denoised), t[prefix + "step_denoised"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("pp_name", "migrated"), [("euler_pp", "euler"), ("euler_ancestral_pp", "euler_ancestral")])
@pytest.mark.parametrize("steps", [4, 20])
def test_pp_names_follow_comfyui_migration(pp_name, migrated, steps):
    """`*_pp` at cfg 1 is the plain sampler at cfg 2, the negative prompt evaluated every step."""
    run = _runs()[f"{migrated}/simple/{steps}/cfg2"]
    x, evals = _run(pp_name, "simple", steps, 1.0)
    torch.testing.assert_close(
        x, tensors()[f"{VERSION}/runs/{migrated}/simple/{steps}/cfg2/final_model_space"], atol=1e-4, rtol=0
    )
    assert evals == run["model_evals"] == 2 * steps


@pytest.mark.parametrize("steps", [4, 20])
def test_euler_pp_matches_the_legacy_function(steps):
    x, _ = _run("euler_pp", "simple", steps, 1.0)
    legacy = tensors()[f"{VERSION}/runs/legacy_euler_pp_69d710e4/simple/{steps}/cfg1/final_model_space"]
    torch.testing.assert_close(x, legacy, atol=1e-4, rtol=0)


def _runs_with_stored_draws() -> list[str]:
    stored = {k for k in tensors() if k.endswith("/noise_draws")}
    return sorted(k for k, run in _runs().items() if run["noise_draws"] and f"{VERSION}/runs/{k}/noise_draws" in stored)


def test_draws_are_stored_for_the_stochastic_families():
    assert len(_runs_with_stored_draws()) == 9


@pytest.mark.parametrize("run_key", _runs_with_stored_draws())
def test_noise_draws(run_key, monkeypatch):
    """Where the golden data stores the raw draws, the same sigma pairs give the same draws, bitwise, in order."""
    from flux_vector.sampling import noise as noise_mod

    run = _runs()[run_key]
    draws: list[tuple[float, float, torch.Tensor]] = []

    def spy(original):
        def call(self, sigma, sigma_next):
            n = original(self, sigma, sigma_next)
            draws.append((float(sigma), float(sigma_next), n.clone()))
            return n

        return call

    for cls in (noise_mod.SeededNoise, noise_mod.BrownianTreeNoise):
        monkeypatch.setattr(cls, "__call__", spy(cls.__call__))
    _run(run["sampler_name"], run["scheduler"], run["steps"], run["cfg"])
    want = tensors()[f"{VERSION}/runs/{run_key}/noise_draws"]
    assert len(draws) == len(run["noise_draws"]) == want.shape[0]
    for (s, s_next, n), (_, ws, ws_next), w in zip(draws, run["noise_draws"], want, strict=True):
        assert (s, s_next) == pytest.approx((ws, ws_next), abs=1e-7)
        assert torch.equal(n.flatten(), w)


@pytest.mark.parametrize(("steps", "length"), [(6, 8), (30, 32), (7, 9), (4, 5)])
def test_ddim_uniform_odd_step_counts_stride_like_comfyui(steps, length):
    """ComfyUI strides through the table while the index is below 10000: more than steps+1 values."""
    sigmas = get_sigmas("ddim_uniform", steps)
    assert len(sigmas) == length
    table = sigma_table()
    assert sigmas[0] == table[1 + (10000 // steps) * (length - 2)]  # the last index still below 10000
    assert sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())


def test_beta_drops_duplicate_indices():
    assert len(get_sigmas("beta", 1000)) == 998
    assert len(get_sigmas("beta", 100)) == 101


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler_name": "euler_a"}, "sampler_name 'euler_a'"),
        ({"scheduler": "linear_quadratic"}, "linear_quadratic"),
        ({"steps": 0}, "steps"),
        ({"steps": True}, "steps"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"denoise": 0.0}, "denoise"),
        ({"cfg": float("nan")}, "cfg"),
    ],
)
def test_bad_inputs_name_the_value_and_the_allowed_ones(kwargs, message):
    positive, negative = toy_models()
    args = {"sampler_name": "euler", "scheduler": "simple", "steps": 2, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        ksampler(positive, negative, latent=torch.zeros(1, 16, 8, 8), **args)
    if "sampler_name" in kwargs:
        assert "dpmpp_2m_sde_gpu" in str(info.value) and "uni_pc_bh2" in str(info.value)
    if "scheduler" in kwargs:
        assert "ddim_uniform" in str(info.value)


def test_denoise_below_one_keeps_the_tail_of_a_longer_schedule():
    from flux_vector.sampling import ksampler_sigmas

    assert torch.equal(ksampler_sigmas("euler", "simple", 4, denoise=0.5), get_sigmas("simple", 8)[-5:])
    assert torch.equal(ksampler_sigmas("dpm_2", "simple", 4), get_sigmas_discard_penultimate("simple", 4))


def test_same_seed_same_result_on_any_device_choice():
    """The noise sources are CPU generators: a run's result does not depend on global RNG state."""
    torch.manual_seed(123)
    a, _ = _run("euler_ancestral", "simple", 4, 1.0)
    torch.manual_seed(456)
    torch.randn(100)
    b, _ = _run("euler_ancestral", "simple", 4, 1.0)
    assert torch.equal(a, b)


def test_the_names_import_without_torch():
    """API-only server processes validate requests with the names alone; they should not pay for torch."""
    import subprocess
    import sys

    code = "import sys, flux_vector.request; print('torch' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
