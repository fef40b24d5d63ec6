"""Which files make the pipeline when ``model`` is a single file: the transformer, and CLIP-L, T5 and the VAE from a
flag, from inside an all-in-one checkpoint, from a ComfyUI ``models/`` folder, or from ``base`` (a diffusers folder).

Reads only names: the folder listings and the files' safetensors headers (no tensor), so the command line checks it
all before any model work. Every choice is deterministic and said in ``Plan.describe()``; a missing or ambiguous
component is one error naming it, where it was looked for, and the flag that gives it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..models import DEFAULT_MODEL, WeightsNotFound, resolve_model

PathArg = str | os.PathLike

SUFFIXES = (".safetensors", ".sft")
# where ComfyUI keeps each kind of file under its models/ folder, in the order searched
MODEL_FOLDERS = ("diffusion_models", "unet", "checkpoints")
TEXT_ENCODER_FOLDERS = ("text_encoders", "clip")
VAE_FOLDERS = ("vae",)
# an all-in-one checkpoint's prefixes: ComfyUI's, and the older LDM ones
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "cond_stage_model.clip_l.transformer.")
T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "cond_stage_model.t5xxl.transformer.")
VAE_PREFIXES = ("vae.", "first_stage_model.")
FLAGS = {"clip_l": "--clip-l", "t5": "--t5", "vae": "--vae"}
KEYWORDS = {"clip_l": "clip_l_file", "t5": "t5_file", "vae": "vae_file"}
TITLES = {"clip_l": "CLIP-L text encoder", "t5": "T5-XXL text encoder", "vae": "VAE"}


class ComponentFilesError(ValueError):
    """A file that is not what its place asks for, or a choice the folder leaves open: one line saying which."""


@dataclass(frozen=True)
class Source:
    """Where one component's weights are: ``path`` (a file of its own, or the checkpoint with ``prefix``)."""

    path: Path
    prefix: str = ""
    how: str = ""

    def describe(self) -> str:
        inside = f" (inside, under {self.prefix!r})" if self.prefix else ""
        return f"{self.path}{inside}{f', {self.how}' if self.how else ''}"


@dataclass
class Plan:
    """The files a single-file model loads from. A component left None comes from ``base``."""

    transformer: Path
    transformer_prefix: str
    fp8: bool  # the transformer's linear weights are stored as float8
    components: dict[str, Source | None] = field(default_factory=dict)
    base: str | None = None
    notes: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        return [kind for kind, source in self.components.items() if source is None]

    def describe(self) -> list[str]:
        lines = [f"transformer: {self.transformer}{' (float8 weights)' if self.fp8 else ''}"]
        for kind, source in self.components.items():
            where = source.describe() if source is not None else f"{self.base} (the diffusers folder)"
            lines.append(f"{TITLES[kind]}: {where}")
        return lines + self.notes


def read_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor names -> {"dtype", "shape"}, from its JSON header only."""
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 200_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ComponentFilesError(f"{path}: not a readable .safetensors file ({exc})") from exc
    header.pop("__metadata__", None)
    return header


def _is_lora(names: list[str]) -> bool:
    markers = ("lora_up", "lora_down", "lora_A", "lora_B", "lora_unet_", "lora_te", ".alpha")
    return any(marker in name for name in names for marker in markers)


def transformer_prefix(path: Path, names: list[str]) -> str:
    """The prefix before BFL's transformer names in ``path`` ("" for a bare ``flux1-dev.safetensors``), or an
    error saying what the file is instead (a LoRA, a diffusers-named or another model's file)."""
    for prefix in ("model.diffusion_model.", "diffusion_model.", ""):
        if any(n.startswith(f"{prefix}double_blocks.") for n in names):
            return prefix
    if _is_lora(names):
        raise ComponentFilesError(f"{path} is a LoRA, not a model: give it as --lora (lora=), and the model as --model")
    if any(n.startswith("transformer_blocks.") for n in names):
        raise ComponentFilesError(
            f"{path} holds a transformer in diffusers' names: give its diffusers folder as --model, or a BFL-layout "
            "file (flux1-dev.safetensors, flux1-dev-fp8.safetensors)"
        )
    raise ComponentFilesError(
        f"{path} holds no FLUX transformer (no 'double_blocks.' weights, e.g. it has {sorted(names)[:3]}): --model "
        "takes a BFL-layout FLUX file such as flux1-dev.safetensors or flux1-dev-fp8.safetensors"
    )


def find_model_file(model: str, comfyui_models: PathArg | None) -> Path | None:
    """``model`` as a file: a path, or (with ``comfyui_models``) a bare file name found in its diffusion_models/,
    unet/ or checkpoints/ folder (the first in that order that holds it). None when it is not a file (a folder, a
    hub id, "tiny")."""
    path = Path(model).expanduser()
    if path.is_file():
        return path if path.suffix in SUFFIXES else None
    if comfyui_models is None or path.suffix not in SUFFIXES or len(path.parts) != 1:
        return None
    root = Path(comfyui_models).expanduser()
    for folder in MODEL_FOLDERS:
        if (root / folder / path.name).is_file():
            return root / folder / path.name
    raise WeightsNotFound(
        f"{model} is not in {root} (looked in {', '.join(f'{folder}/' for folder in MODEL_FOLDERS)}) nor here: "
        "give the file's path"
    )


def lora_in_comfyui_models(lora, comfyui_models: PathArg | None) -> Path | None:
    """The default LoRA (Simple Vector) from ``DIR/loras`` when the user keeps it there, else None (the usual
    resolution: a path, or the local Hugging Face cache)."""
    from ..models import DEFAULT_LORA, DEFAULT_LORA_FILE

    if comfyui_models is None or lora != DEFAULT_LORA:
        return None
    path = Path(comfyui_models).expanduser() / "loras" / DEFAULT_LORA_FILE
    return path if path.is_file() else None


def _candidates(root: Path, folders: tuple[str, ...]) -> list[Path]:
    found: dict[Path, Path] = {}
    for folder in folders:
        if (root / folder).is_dir():
            for path in sorted((root / folder).iterdir()):
                if path.suffix in SUFFIXES and path.is_file():
                    found.setdefault(path.resolve(), path)  # clip/ is often a link to text_encoders/
    return list(found.values())


def _rank_t5(path: Path) -> int:
    """Full-precision T5 first (its fp8 file is a lossy copy), then fp8."""
    name = path.name.lower()
    return 1 if "fp8" in name or "e4m3" in name or "e5m2" in name else 0


def _pick(kind: str, root: Path) -> tuple[Path | None, str, list[Path]]:
    """(the file chosen in the ComfyUI folder or None, why, every file considered)."""
    if kind == "vae":
        files = _candidates(root, VAE_FOLDERS)
        exact = [p for p in files if p.stem.lower() == "ae"]
        flux = [p for p in files if "flux" in p.name.lower()]
        for group, why in ((exact, "BFL's file name"), (flux, "its name says flux"), (files, "the only file there")):
            if len(group) == 1:
                return group[0], why, files
            if len(group) > 1:
                return None, "", group
        return None, "", files
    files = _candidates(root, TEXT_ENCODER_FOLDERS)
    if kind == "clip_l":
        named = [p for p in files if "clip_l" in p.name.lower()]
        exact = [p for p in named if p.stem.lower() == "clip_l"]
        group = exact if len(exact) == 1 else named
        return (group[0], "its name says clip_l", named) if len(group) == 1 else (None, "", named)
    named = [p for p in files if "t5" in p.name.lower()]
    if not named:
        return None, "", named
    best = min(map(_rank_t5, named))
    group = [p for p in named if _rank_t5(p) == best]
    if len(group) == 1:
        why = "full precision preferred over fp8" if len(named) > 1 else "its name says t5"
        return group[0], why, named
    return None, "", group


def _embedded(names: list[str], kind: str) -> str | None:
    prefixes = {"clip_l": CLIP_PREFIXES, "t5": T5_PREFIXES, "vae": VAE_PREFIXES}[kind]
    return next((p for p in prefixes if any(n.startswith(p) for n in names)), None)


def plan_files(
    model_file: Path,
    *,
    clip_l_file: PathArg | None = None,
    t5_file: PathArg | None = None,
    vae_file: PathArg | None = None,
    comfyui_models: PathArg | None = None,
    base: str | None = None,
) -> Plan:
    """Each component's source: the flag's file, else the checkpoint's own copy, else the ComfyUI folder's file,
    else None (``base``'s, decided by the caller). Raises on a given file that does not exist, and on a folder that
    holds several candidates with nothing to choose between them."""
    header = read_header(model_file)
    names = list(header)
    prefix = transformer_prefix(model_file, names)
    fp8 = any(
        header[n]["dtype"].startswith("F8") and n.endswith(".weight") and len(header[n]["shape"]) == 2
        for n in names
        if n.startswith(f"{prefix}double_blocks.")
    )
    plan = Plan(model_file, prefix, fp8, base=base)
    if fp8 and any(n.endswith(".scale_weight") for n in names):  # ComfyUI's *_fp8_scaled: per-tensor scales
        plan.fp8 = False
        plan.notes.append("the transformer is scaled fp8: dequantized to the pipeline's dtype")
    given = {"clip_l": clip_l_file, "t5": t5_file, "vae": vae_file}
    root = Path(comfyui_models).expanduser() if comfyui_models is not None else None
    if root is not None and not root.is_dir():
        raise WeightsNotFound(f"--comfyui-models {root}: not a folder (ComfyUI's models/ folder)")
    for kind, path in given.items():
        if path is not None:
            file = Path(path).expanduser()
            if not file.is_file():
                raise WeightsNotFound(f"{FLAGS[kind]} {file}: not found ({TITLES[kind]} file)")
            plan.components[kind] = Source(file, how=f"given by {FLAGS[kind]}")
            continue
        inner = _embedded(names, kind)
        if inner is not None:
            plan.components[kind] = Source(model_file, inner, "the checkpoint's own")
            continue
        plan.components[kind] = None
        if root is not None:
            chosen, why, considered = _pick(kind, root)
            if chosen is not None:
                plan.components[kind] = Source(chosen, how=f"found in --comfyui-models ({why})")
            elif len(considered) > 1:
                raise ComponentFilesError(
                    f"{root} holds {len(considered)} {TITLES[kind]} files and none is preferred: "
                    f"{', '.join(str(p) for p in considered)}; choose one with {FLAGS[kind]} FILE"
                )
    return plan


def where_looked(kind: str, comfyui_models: PathArg | None) -> str:
    folders = VAE_FOLDERS if kind == "vae" else TEXT_ENCODER_FOLDERS
    places = [f"{FLAGS[kind]} ({KEYWORDS[kind]}=)", "inside the model file"]
    if comfyui_models is not None:
        root = Path(comfyui_models).expanduser()
        places.append(" and ".join(f"{root / folder}/" for folder in folders))
    else:
        places.append("no --comfyui-models folder given")
    return ", ".join(places)


def _base_folder(plan: Plan, base: str | None, comfyui_models) -> Path | None:
    """The diffusers folder for configs, tokenizers and the components no file gave: ``base``; without it FLUX.1-dev
    from the local cache when a component is missing (the configs are then the shipped ones), else None."""
    if base is not None:
        return resolve_model(base)
    missing = plan.missing()
    if not missing:
        return None
    try:
        return resolve_model(DEFAULT_MODEL)
    except WeightsNotFound:
        pass
    lines = "; ".join(f"{TITLES[kind]} (looked at: {where_looked(kind, comfyui_models)})" for kind in missing)
    flags = " ".join(f"--{k.replace('_', '-')} FILE" for k in missing)
    raise WeightsNotFound(
        f"{plan.transformer} is a transformer alone: no {lines}. Give {flags}, or --comfyui-models DIR (ComfyUI's "
        f"models/ folder), or --base with a diffusers folder ({DEFAULT_MODEL} is not in the local Hugging Face cache)"
    )


def plan_single_file(
    model_file: Path, *, base: str | None, clip_l_file=None, t5_file=None, vae_file=None, comfyui_models=None
) -> tuple[Plan, Path | None]:
    """The files and the diffusers folder (or None) a single-file model loads from: names only, no tensor read."""
    plan = plan_files(
        model_file,
        clip_l_file=clip_l_file,
        t5_file=t5_file,
        vae_file=vae_file,
        comfyui_models=comfyui_models,
        base=base,
    )
    folder = _base_folder(plan, base, comfyui_models)
    plan.base = str(folder) if folder is not None else None
    return plan, folder
