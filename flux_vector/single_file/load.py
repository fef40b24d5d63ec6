"""The pipeline's components from single files: a BFL-layout transformer (bf16 or fp8, with or without ComfyUI's
prefix, or an all-in-one checkpoint), ComfyUI's ``clip_l`` / ``t5xxl_*`` / ``ae`` files, and ``base`` (a diffusers
folder) for what no file gives.

The configs and tokenizers come from ``base`` when there is one, else from the package: FLUX.1-dev's configs
(``configs/``, see its SOURCE.txt) and the demo model's tokenizers (the real CLIP-L and T5 vocabularies), so a ComfyUI
user needs neither a diffusers folder nor the Hub. Each model is built on the meta device and the file's tensors are
assigned to it (no second copy); a file whose shapes do not fit the config is one error naming both.

fp8: a transformer whose linear weights are float8 keeps them in float8 when the pipeline runs the fp8 tier
(``quantize`` None becomes "fp8" for such a file; an explicit tier upcasts them first). T5 files in fp8
(``t5xxl_fp8_e4m3fn``) are upcast to the pipeline's dtype. A ``*_fp8_scaled`` file's per-tensor scales are applied
while upcasting (such a transformer is upcast too: the fp8 tier then quantizes it itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .find import ComponentFilesError, PathArg, Plan, Source, plan_single_file
from .vae_names import vae_from_ldm

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = "FLUX.1-dev's config shipped in flux_vector"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# a CLIP-L file's weights a CLIPTextModel has no use for (the projection belongs to CLIPTextModelWithProjection)
CLIP_EXTRAS = ("text_projection.weight", "logit_scale", "text_model.embeddings.position_ids", "embeddings.position_ids")


def tokenizer_dir() -> Path:
    """The tokenizers used with the shipped configs: the demo model's (CLIP-L's and T5's real vocabularies)."""
    from ..demo import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR


def shipped_tokenizers_for(model: str) -> Path | None:
    """The shipped tokenizers' folder for a single-file ``model`` name (FLUX's CLIP-L and T5 tokenizers, whatever
    the file), else None: what an API-only process, which loads no file, counts prompt tokens with."""
    from .find import SUFFIXES

    return tokenizer_dir() if Path(model).suffix in SUFFIXES else None


@dataclass
class Components:
    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    quantize: str | None  # the transformer's tier: "fp8" when its float8 weights were kept

    def __iter__(self):
        """In the field order: ``transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, quantize``."""
        return iter(
            (
                self.transformer,
                self.vae,
                self.text_encoder,
                self.tokenizer,
                self.text_encoder_2,
                self.tokenizer_2,
                self.quantize,
            )
        )


def fp8_tier_available() -> bool:
    """Whether this build has the fp8 storage tier (``quantize.quantize_linears_fp8``) that runs float8 weights."""
    from .. import quantize

    return hasattr(quantize, "quantize_linears_fp8")


def transformer_tier(quantize: str | None, plan: Plan, log: Callable[[str], None]) -> str | None:
    """The tier the transformer runs: an fp8 file with no tier asked (or "fp8") runs the fp8 tier, its weights kept
    float8; any other tier asked ("none", "8bit", ...) gets them upcast first."""
    if not plan.fp8 or quantize not in (None, "fp8"):
        if plan.fp8:
            log(f"quantize: {quantize}: the file's float8 weights are upcast first")
        return quantize
    if not fp8_tier_available():
        log("quantize: the file's weights are float8 and this build has no fp8 tier: upcast to the pipeline's dtype")
        return quantize
    log(
        "quantize: fp8 (the file's weights are float8: kept so, computed in the pipeline's dtype; quantize='none' "
        "upcasts them)"
    )
    return "fp8"


def _read(source: Source, exclude: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` (those under its prefix, the prefix removed; without the names starting with
    ``exclude``)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(source.path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if source.prefix and not name.startswith(source.prefix):
                continue
            if not source.prefix and name.startswith(exclude):
                continue
            out[name.removeprefix(source.prefix)] = f.get_tensor(name)
    return out


def _unscale(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A ``*_fp8_scaled`` file's weights times their ``.scale_weight``, in ``dtype``; its markers dropped. Runs before
    any renaming (a fused qkv's scale is the fused tensor's). A file without scales comes back as it is."""
    scales = {k.removesuffix(".scale_weight"): sd.pop(k) for k in [k for k in sd if k.endswith(".scale_weight")]}
    for marker in ("scaled_fp8", *[k for k in sd if k.endswith(".scale_input")]):
        sd.pop(marker, None)
    for owner, scale in scales.items():
        if f"{owner}.weight" in sd:
            weight = sd[f"{owner}.weight"].to(torch.float32) * scale.to(torch.float32)
            sd[f"{owner}.weight"] = weight.to(dtype)
    return sd


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype, keep_fp8: Collection[str] = ()) -> dict:
    """``sd`` in ``dtype`` (float8 tensors upcast), except the float8 tensors named in ``keep_fp8``. Empties
    ``sd``: the file's copy goes as its cast one comes, so a 12B model's peak stays near one copy."""
    out = {}
    for name in list(sd):
        tensor = sd.pop(name)
        keep = tensor.dtype in FP8_DTYPES and name in keep_fp8
        out[name] = tensor if keep else tensor.to(dtype)
    return out


def _assign(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, configs: _Configs) -> torch.nn.Module:
    """Load ``sd`` into the meta-device ``model`` by assignment, after checking names and shapes."""
    where, hint = configs.where, configs.hint
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(shapes) - set(sd))
    extra = sorted(set(sd) - set(shapes))
    wrong = [
        f"{k} {tuple(sd[k].shape)} (the config wants {tuple(shapes[k])})"
        for k in shapes
        if k in sd and sd[k].shape != shapes[k]
    ]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} weights of another shape, e.g. {wrong[:2]}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} with no place, e.g. {extra[:3]}")
        raise ComponentFilesError(f"the {what} file does not fit {where}: {'; '.join(parts)}{hint}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


class _Configs:
    """Each component's config and the tokenizers: from the diffusers folder ``base``, else the shipped ones."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.where = f"the config of {folder}" if folder is not None else SHIPPED
        self.hint = (
            f" (the file is not of the model {folder} describes?)"
            if folder is not None
            else " (not a FLUX.1-dev file? another model's needs --base with its diffusers folder, base= in Python)"
        )

    def diffusers(self, cls, name: str) -> dict:
        if self.folder is not None:
            return cls.load_config(self.folder, subfolder=name)
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())

    def transformers(self, cls, name: str):
        if self.folder is not None:
            return cls.from_pretrained(self.folder / name)
        return cls.from_dict(json.loads((CONFIG_DIR / f"{name}.json").read_text()))

    def tokenizer(self, cls, name: str):
        return cls.from_pretrained(self.folder if self.folder is not None else tokenizer_dir(), subfolder=name)


def _empty(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def load_transformer(plan: Plan, configs: _Configs, dtype: torch.dtype, keep_fp8: bool, log) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    from ..bfl import from_bfl
    from .find import CLIP_PREFIXES, T5_PREFIXES, VAE_PREFIXES

    others = CLIP_PREFIXES + T5_PREFIXES + VAE_PREFIXES
    sd = _unscale(_read(Source(plan.transformer, plan.transformer_prefix), exclude=others), dtype)
    config = dict(configs.diffusers(FluxTransformer2DModel, "transformer"))
    if configs.folder is None and config["guidance_embeds"] and "guidance_in.in_layer.weight" not in sd:
        config["guidance_embeds"] = False
        log("files: the transformer has no guidance embedder (FLUX.1-schnell-like): guidance_embeds off")
    model = _empty(lambda: FluxTransformer2DModel.from_config(config))
    try:
        converted = from_bfl(sd, model)
    except ValueError as exc:
        raise ComponentFilesError(f"{plan.transformer} does not fit {configs.where}: {exc}{configs.hint}") from exc
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    converted = _cast(converted, dtype, keep_fp8=linears if keep_fp8 else ())
    return _assign(model, converted, f"transformer {plan.transformer}", configs)


def _fit_names(sd: dict[str, torch.Tensor], names: set[str], extras: tuple[str, ...]) -> dict:
    """``sd``'s names as the model's: with or without the ``text_model.`` level (transformers 5 drops it from
    CLIPTextModel; the files keep it), the ``extras`` a file may carry dropped."""
    out = {}
    for key, tensor in sd.items():
        if key in extras:
            continue
        for candidate in (key, key.removeprefix("text_model."), f"text_model.{key}"):
            if candidate in names:
                out[candidate] = tensor
                break
        else:
            out[key] = tensor  # reported by _assign as having no place
    return out


def load_clip(source: Source, configs: _Configs, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = configs.transformers(CLIPTextConfig, "text_encoder")
    model = _empty(lambda: CLIPTextModel(config))
    sd = _fit_names(_unscale(_read(source), dtype), set(model.state_dict()), CLIP_EXTRAS)
    return _assign(model, _cast(sd, dtype), f"CLIP-L {source.describe()}", configs)


def load_t5(source: Source, configs: _Configs, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    config = configs.transformers(T5Config, "text_encoder_2")
    model = _empty(lambda: T5EncoderModel(config))
    sd = _cast(_unscale(_read(source), dtype), dtype)
    # the token embedding is stored once, as shared.weight (HF) or encoder.embed_tokens.weight: one tensor for both
    for a, b in (("shared.weight", "encoder.embed_tokens.weight"), ("encoder.embed_tokens.weight", "shared.weight")):
        if a in sd and b not in sd:
            sd[b] = sd[a]
    return _assign(model, sd, f"T5 {source.describe()}", configs)


def load_vae(source: Source, configs: _Configs, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    config = configs.diffusers(AutoencoderKL, "vae")
    model = _empty(lambda: AutoencoderKL.from_config(config))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    try:
        sd = vae_from_ldm(_unscale(_read(source), dtype), shapes, len(config["block_out_channels"]))
    except ValueError as exc:
        raise ComponentFilesError(
            f"the VAE {source.describe()} does not fit {configs.where}: {exc}{configs.hint}"
        ) from exc
    return _assign(model, _cast(sd, dtype), f"VAE {source.describe()}", configs)


def load_single_file(
    model_file: Path,
    *,
    base: str | None,
    quantize: str | None,
    dtype: torch.dtype,
    clip_l_file: PathArg | None = None,
    t5_file: PathArg | None = None,
    vae_file: PathArg | None = None,
    comfyui_models: PathArg | None = None,
    log: Callable[[str], None] = print,
) -> Components:
    """Every component of a pipeline whose transformer is ``model_file`` (see the module's docstring)."""
    from ..quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()  # no Hub request at import (quiet.py)
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    plan, folder = plan_single_file(
        model_file,
        base=base,
        clip_l_file=clip_l_file,
        t5_file=t5_file,
        vae_file=vae_file,
        comfyui_models=comfyui_models,
    )
    configs = _Configs(folder)
    for line in plan.describe():
        log(f"files: {line}")
    source = str(folder) if folder is not None else f"{SHIPPED} (and the demo model's tokenizers)"
    log(f"files: configs and tokenizers from {source}")
    tier = transformer_tier(quantize, plan, log)
    transformer = load_transformer(plan, configs, dtype, tier == "fp8", log)
    sources = plan.components
    clip, t5, vae = sources["clip_l"], sources["t5"], sources["vae"]
    assert folder is not None or None not in (clip, t5, vae)  # _base_folder raised otherwise
    return Components(
        transformer=transformer,
        vae=load_vae(vae, configs, dtype)
        if vae is not None
        else AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype),
        text_encoder=load_clip(clip, configs, dtype)
        if clip is not None
        else CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        tokenizer=configs.tokenizer(CLIPTokenizer, "tokenizer"),
        text_encoder_2=load_t5(t5, configs, dtype)
        if t5 is not None
        else T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", dtype=dtype),
        tokenizer_2=configs.tokenizer(T5TokenizerFast, "tokenizer_2"),
        quantize=tier,
    )
