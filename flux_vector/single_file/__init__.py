"""Single-file FLUX weights as ComfyUI users keep them: a BFL-layout transformer (bf16, fp8, ComfyUI's prefix, the
all-in-one checkpoint) with ``clip_l`` / ``t5xxl_*`` / ``ae`` files, given one by one or found in a ComfyUI
``models/`` folder; FLUX.1-dev's configs ship in ``configs/``, so no diffusers folder or Hub cache is needed.

``find.py`` chooses the files (names only), ``load.py`` builds the components, ``vae_names.py`` is the VAE's name
table, ``write.py`` the other direction (a pipeline's components as those files). Importing the package loads no
torch (the command line checks the files before any model work): ``load.py``'s names are imported on first use."""

from typing import Any

from .find import ComponentFilesError, Plan, find_model_file, lora_in_comfyui_models, plan_files, plan_single_file

_FROM_LOAD = ("Components", "load_single_file", "shipped_tokenizers_for")

__all__ = [
    "ComponentFilesError",
    "Plan",
    "find_model_file",
    "lora_in_comfyui_models",
    "plan_files",
    "plan_single_file",
    *_FROM_LOAD,
]


def __getattr__(name: str) -> Any:
    if name in _FROM_LOAD:
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
