"""Which weights to load: model and LoRA names resolved to local files, and the defaults.

Everything that loads a pipeline (the CLI, the server, the Redis worker, the in-process facade) goes through
``pipeline.load_pipeline``, which takes its defaults and resolution from here, so each rule lives once. Nothing is
ever downloaded: a name that is neither a local path nor in the local Hugging Face cache is a ``WeightsNotFound``
saying how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
DEFAULT_LORA = "renderartist/simplevectorflux"
DEFAULT_LORA_FILE = "Simple_Vector_Flux_v2_renderartist.safetensors"
MODEL_ENV = "FLUX_VECTOR_MODEL"


class WeightsNotFound(FileNotFoundError):
    """Model or LoRA weights are neither a local path nor in the local Hugging Face cache."""


def default_model(log=print) -> str:
    """$FLUX_VECTOR_MODEL, else FLUX.1-dev when it is in the local Hugging Face cache, else the tiny demo."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    try:
        resolve_model(DEFAULT_MODEL)
        return DEFAULT_MODEL
    except WeightsNotFound:
        log(
            f"no real weights configured ({DEFAULT_MODEL} is not in the local Hugging Face cache and "
            f"${MODEL_ENV} is unset): using the tiny built-in random-weight checkpoint"
        )
        return "tiny"


def resolve_model(model: str) -> Path:
    """A diffusers folder for ``model``: "tiny", a local folder, or a hub id in the local Hugging Face cache."""
    if model == "tiny":
        from .tiny import tiny_checkpoint_dir

        return tiny_checkpoint_dir()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise WeightsNotFound(f"{path} is not a diffusers model folder (no model_index.json)")
        return path
    if path.suffix in (".safetensors", ".sft") or path.exists():
        raise WeightsNotFound(f"{path}: not found" if not path.exists() else f"{path}: not a folder")
    return Path(_hub_snapshot(model))


def is_single_file(model: str) -> bool:
    return Path(model).expanduser().is_file() and Path(model).suffix in (".safetensors", ".sft")


def _hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=allow_patterns)
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, ...
        raise WeightsNotFound(
            f"{repo_id!r} is not a local folder and is not in the local Hugging Face cache. Download it once with "
            f"`hf download {repo_id}` (FLUX.1-dev needs its license accepted on the hub and HF_TOKEN set), or "
            f"give a local diffusers folder, or the model name 'tiny' for the random-weight demo checkpoint."
        ) from exc


def resolve_lora(lora: str | os.PathLike | None, model: str) -> Path | None:
    """A LoRA file for ``lora``: None/"none", a path, or a hub id (its one .safetensors, from the local cache)."""
    if lora is None or str(lora).lower() == "none":
        return None
    if model == "tiny" and lora == DEFAULT_LORA:
        from .tiny import KOHYA_LORA, tiny_checkpoint_dir

        return tiny_checkpoint_dir() / KOHYA_LORA
    path = Path(lora).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".safetensors" or path.exists():
        raise WeightsNotFound(f"LoRA file {path} not found")
    folder = Path(_hub_snapshot(str(lora), allow_patterns=["*.safetensors"]))
    preferred = folder / DEFAULT_LORA_FILE
    if preferred.is_file():
        return preferred
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise WeightsNotFound(f"LoRA repo {lora!r} holds {len(files)} .safetensors files; pass the file's path")
    return files[0]
