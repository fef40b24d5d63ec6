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


GATED_MODEL_HINT = f"accept the license at https://huggingface.co/{DEFAULT_MODEL} and run `hf auth login` first"


class WeightsNotFound(FileNotFoundError):
    """Model or LoRA weights are neither a local path nor in the local Hugging Face cache. ``str()`` is worded for
    Python callers (``model='tiny'``); ``cli_message`` says it with the command line's flags (``--model tiny``)."""

    def __init__(self, message: str, *, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message


def download_command(repo_id: str) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that puts ``repo_id`` in the local cache."""
    if repo_id == DEFAULT_LORA:
        return f"hf download {DEFAULT_LORA} {DEFAULT_LORA_FILE}"
    return f"hf download {repo_id}"


DEMO_MODEL = "demo"
DEMO_NOTICE = (
    "the demo model: a tiny FLUX shipped with flux_vector, trained on simple coloured shapes at 128 px, NOT FLUX.1-dev"
)
# A prompt the demo model draws (its colours, shapes, positions, backgrounds): the playground's example with it.
DEMO_EXAMPLE_PROMPT = "v3ct0r style, simple vector art, a large red heart in the center on a white background"


def default_model(log=print) -> str:
    """$FLUX_VECTOR_MODEL, else FLUX.1-dev when it is in the local Hugging Face cache, else the shipped demo model
    (one line says so: its pictures are shapes at 128 px, a newcomer must not mistake them for FLUX.1-dev's)."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    try:
        resolve_model(DEFAULT_MODEL)
        return DEFAULT_MODEL
    except WeightsNotFound:
        log(
            f"no real weights configured ({DEFAULT_MODEL} is not downloaded and ${MODEL_ENV} is unset): using "
            f"{DEMO_NOTICE} (`flux-vector doctor` says how to get the real weights)"
        )
        return DEMO_MODEL


def resolve_model(model: str) -> Path:
    """A diffusers folder for ``model``: "demo" (shipped), "tiny" (random weights), a local folder, or a hub id in
    the local Hugging Face cache."""
    if model == DEMO_MODEL:
        from .demo import DEMO_MODEL_DIR

        if not (DEMO_MODEL_DIR / "model_index.json").exists():
            raise WeightsNotFound(f"the demo model's files are missing from {DEMO_MODEL_DIR} (reinstall flux_vector)")
        return DEMO_MODEL_DIR
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


def _hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None, *, kind: str = "model") -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=allow_patterns)
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, ...
        raise not_downloaded(repo_id, kind) from exc


def not_downloaded(repo_id: str, kind: str = "model") -> WeightsNotFound:
    """The error for a hub id that is not in the local cache: the download command, and the alternatives."""
    download = f"`{download_command(repo_id)}`"
    if repo_id == DEFAULT_MODEL:  # the usual first run: both downloads, and the license
        download = f"{download} and the LoRA with `{download_command(DEFAULT_LORA)}` ({GATED_MODEL_HINT})"
    head = (
        f"{repo_id} is not a local {'folder' if kind == 'model' else 'file'} and is not in the local Hugging Face "
        f"cache: download it once with {download}"
    )
    if kind == "model":
        python = "or pass a local diffusers folder, or model='demo' for the shipped demo model (simple shapes)"
        cli = "or --model PATH to a local diffusers folder, or --model demo for the shipped demo model (simple shapes)"
    else:
        python = "or pass the LoRA file's path, or lora='none'"
        cli = "or --lora PATH to the LoRA file, or --lora none"
    return WeightsNotFound(f"{head}, {python}", cli_message=f"{head}, {cli}")


def check_weights(model: str, lora: str | os.PathLike | None, *, base: str | None = None, **files) -> None:
    """Raise now, before anything loads, when the model (for a single-file transformer: the component files
    ``single_file`` would load, ``files`` being from_pretrained's ``clip_l_file``/``t5_file``/``vae_file``/
    ``comfyui_models``, and its ``base``) or the LoRA cannot be found locally. Reads only the file system, the
    files' headers and the cache index."""
    from .single_file.find import find_model_file, lora_in_comfyui_models, plan_single_file

    model_file = find_model_file(model, files.get("comfyui_models"))
    if model_file is not None:
        plan_single_file(model_file, base=base, **files)
    else:
        resolve_model(model)
    if lora_in_comfyui_models(lora, files.get("comfyui_models")) is None:
        resolve_lora(lora, base if model_file is not None and base == "tiny" else model)


def builtin_lora_name(model: str) -> str | None:
    """The file name of a built-in model's own LoRA, which it runs in place of the default (Simple Vector): the
    demo's outline LoRA for "demo", the tiny LoRA for "tiny"; None for any other model."""
    if model == DEMO_MODEL:
        from .demo import DEMO_LORA_FILE

        return DEMO_LORA_FILE
    if model == "tiny":
        from .tiny import KOHYA_LORA

        return KOHYA_LORA
    return None


def running_lora_name(lora: str | os.PathLike | None, model: str) -> str | None:
    """The name of the LoRA that runs for ``lora`` on ``model``, as records, manifests and logs
    give it: the default on a built-in model is that model's own LoRA (``builtin_lora_name``), never Simple Vector,
    which does not run there; None when no LoRA runs (None or "none", as ``resolve_lora``). ``resolve_lora`` takes
    the name back (``generate --like``)."""
    if lora is None or str(lora).lower() == "none":
        return None
    builtin = builtin_lora_name(model)
    return builtin if builtin is not None and lora in (DEFAULT_LORA, builtin) else str(lora)


def resolve_lora(lora: str | os.PathLike | None, model: str) -> Path | None:
    """A LoRA file for ``lora``: None/"none", a path, or a hub id (its one .safetensors, from the local cache).
    On the demo and tiny models the default (and their own LoRA's file name) is their own LoRA."""
    if lora is None or str(lora).lower() == "none":
        return None
    builtin = builtin_lora_name(model)
    if builtin is not None and running_lora_name(lora, model) == builtin:
        if model == DEMO_MODEL:
            from .demo import DEMO_MODEL_DIR

            return DEMO_MODEL_DIR / builtin
        from .tiny import tiny_checkpoint_dir

        return tiny_checkpoint_dir() / builtin
    path = Path(lora).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".safetensors" or path.exists():
        raise WeightsNotFound(f"LoRA file {path} not found")
    folder = Path(_hub_snapshot(str(lora), allow_patterns=["*.safetensors"], kind="lora"))
    preferred = folder / DEFAULT_LORA_FILE
    if preferred.is_file():
        return preferred
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise WeightsNotFound(f"LoRA repo {lora!r} holds {len(files)} .safetensors files; pass the file's path")
    return files[0]


def aspect_ratio_sizes(folder: Path) -> dict[str, tuple[int, int]] | None:
    """A model folder's own aspect-ratio -> (width, height) table (``flux_vector_sizes.json``; the demo model ships
    one: it draws at 1/8 of the hosted sizes), else None: the hosted sizes (``request.ASPECT_RATIOS``)."""
    import json

    from .demo import DEMO_SIZES_FILE

    path = Path(folder) / DEMO_SIZES_FILE
    if not path.is_file():
        return None
    return {ratio: (int(w), int(h)) for ratio, (w, h) in json.loads(path.read_text())["aspect_ratio_sizes"].items()}
