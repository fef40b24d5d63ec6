"""The sampler and scheduler names (torch-free, so that the parameter contract imports them cheaply)."""

SCHEDULER_NAMES: tuple[str, ...] = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")

HOSTED_SAMPLER_NAMES: tuple[str, ...] = (
    "euler",
    "euler_pp",
    "euler_ancestral",
    "euler_ancestral_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SAMPLER_NAMES: tuple[str, ...] = HOSTED_SAMPLER_NAMES + ("deis", "euler_cfg_pp", "euler_ancestral_cfg_pp")

# The hosted `*_pp` names existed in ComfyUI for four days (2024-06-25..29). ComfyUI's own migration of old
# workflows turns them into the plain sampler at twice the cfg, which is also exactly what they computed.
PP_MIGRATION: dict[str, str] = {"euler_pp": "euler", "euler_ancestral_pp": "euler_ancestral"}
