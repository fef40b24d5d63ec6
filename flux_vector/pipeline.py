"""FluxVectorPipeline: FLUX.1-dev + the Simple Vector LoRA through real diffusers components, sampled like ComfyUI.

Steps of one generation (``__call__``):
1. validate the parameters through the one contract (``request.parse_request``);
2. encode the prompt(s) as ComfyUI's CLIPTextEncode does (``flux_vector.prompt``: weight syntax, CLIP-L chunks, T5
   padded to at least 256 and never truncated, the LoRA's text-encoder part at the request's strength), cached: a
   repeated prompt skips the text encoders;
3. sample with ``sampling.ksampler``: the transformer is the velocity model, latents live in ComfyUI's unpacked
   [B,16,H/8,W/8] layout and are packed for the transformer per call; the initial noise is ComfyUI's;
4. decode ``x/0.3611 + 0.1159`` with the VAE and convert to 8-bit pixels as ComfyUI's SaveImage does.

mu (the Flux time shift) is computed from the image size as ComfyUI's ModelSamplingFlux node does
(max_shift 1.15, base_shift 0.5): 1.15 at 1024x1024, 1.125625 at 832x1216. That node is part of the standard
ComfyUI Flux-dev workflow; without it ComfyUI would use 1.15 for every size. The negative prompt has no FluxGuidance
node in that workflow, so it runs at Flux's default guidance 3.5 whatever ``guidance`` the positive prompt uses, and
positive and negative are separate model calls (their T5 lengths may differ). docs/COMFY_E2E.md section 1 is the
graph, and tests/test_comfy_e2e.py checks this pipeline against ComfyUI's own latents and pixels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .comfy.graph import NEGATIVE_GUIDANCE  # what the negative prompt runs at (no FluxGuidance on it)
from .gguf_model import check_quantize_for_gguf, fast_for_gguf, gguf_layers, is_gguf_file
from .models import (
    DEFAULT_LORA,
    DEFAULT_MODEL,
    DEMO_MODEL,
    DEMO_NOTICE,
    aspect_ratio_sizes,
    default_model,
    resolve_lora,
    resolve_model,
    running_lora_name,
)
from .offload import (
    DEFAULT_OFFLOAD,
    DEVICE,
    OffloadChoice,
    accelerator_free_bytes,
    apply_offload,
    largest_group_bytes,
    module_bytes,
    offload_plan,
    place,
)
from .prompt import encode_clip_pooled, encode_t5, tokenize_prompt, weighted_pieces
from .quiet import quiet_loading
from .request import GenerationRequest, Prepared, parse_request
from .sampling import flux_mu, ksampler, to_latent
from .timesteps import embed_in_float32, to_device

if TYPE_CHECKING:
    from .lora import LoraHandle

PROMPT_CACHE_SIZE = 64
_log = logging.getLogger("flux_vector")
WARMUP_PROMPT = "warm-up"


@dataclass
class GenerationResult:
    images: list[Image.Image]
    request: GenerationRequest
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)
    latents: torch.Tensor | None = None  # the final model-space latents [B,16,H/8,W/8], float32 on CPU

    @property
    def image(self) -> Image.Image:
        return self.images[0]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class PromptCache:
    """LRU of encoded prompts (T5 sequence embeddings + CLIP pooled), so repeats skip the text encoders."""

    def __init__(self, size: int = PROMPT_CACHE_SIZE):
        self.size = size
        self.entries: OrderedDict[Any, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key, compute):
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]
        self.misses += 1
        value = compute()
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value


class FluxVectorPipeline:
    """The main job: a prompt and the hosted API's parameters in, the images out."""

    def __init__(
        self,
        *,
        transformer,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        device: torch.device,
        dtype: torch.dtype,
        offload: OffloadChoice,
        lora: LoraHandle | None = None,
        model_name: str = "",
        lora_name: str | None = None,
        fast_plan=None,
        text_device: torch.device | None = None,
        log=None,
    ):
        """``text_device``: where the text encoders stay and compute (None: ``device``; the embeddings move to the
        device). ``fast_plan`` (a ``fast.FastPlan``): applied here, its weight transforms (fused QKV, fp8: new
        parameters) before ``offload`` is applied whenever an offload mode is in use, so that the offload hooks hold the
        parameters the model computes with; with no offload, after placing (the transforms then run on the device)."""
        from .quiet import diffusers_without_bitsandbytes

        diffusers_without_bitsandbytes()  # no Hub request at import (quiet.py)
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        from .fast import apply_runtime_switches, apply_weight_transforms
        from .quantize import stays_resident

        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.device, self.dtype, self.offload, self.model_name = device, dtype, offload, model_name
        self.text_device = text_device if text_device is not None and text_device != offload.device else None
        # placed here, outside any offload: the text encoders on text_device, a bitsandbytes T5 on the device
        self._placed_apart = _placed_apart(text_encoder_2, offload.device, self.text_device)
        self.lora: LoraHandle | None = lora  # the LoRA as runtime adapters (fusable); None: loaded without one
        self.lora_name = lora_name if lora is not None else None
        self._weight_files: dict[str, str] | None = None  # identity's file names and hashes, once asked for
        for module in (transformer, vae, text_encoder, text_encoder_2):
            module.eval().requires_grad_(False)
        if dtype != torch.float32:  # ComfyUI embeds timestep and guidance in float32 (timesteps.py)
            embed_in_float32(transformer)
        # diffusers' pipeline object is kept for its helpers (prompt encoding, latent packing, offload hooks);
        # its own denoising loop is not used (it rewrites custom sigma lists).
        self._diffusers = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=None if "text_encoder" in self._placed_apart else text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=None if "text_encoder_2" in self._placed_apart else text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        self.prompt_cache = PromptCache()
        self.fast_plan = None  # a fast.FastPlan once applied (here or by enable_fast)
        self.fast_timings: dict[str, float] = {}
        weights_first = offload.mode != "none"
        if fast_plan is not None and weights_first:
            self.fast_timings.update(apply_weight_transforms(self, fast_plan, log))
        # how each component is placed or offloaded (offload.offload_plan): bitsandbytes weights (8bit, nf4) always
        # stay on the device
        offloaded = {k: None if k in self._placed_apart else m for k, m in self._components().items()}
        resident = stays_resident(transformer)
        self.offload_plan = apply_offload(offload, self._diffusers, offloaded, resident_transformer=resident)
        for name, where in self._placed_apart.items():
            place(self._components()[name], where)
            self.offload_plan[name] = DEVICE if where == offload.device else str(where)
        if fast_plan is not None:
            if not weights_first:
                self.fast_timings.update(apply_weight_transforms(self, fast_plan, log))
            self.fast_timings.update(apply_runtime_switches(self, fast_plan, log))
            self.fast_plan = fast_plan
        # aspect_ratio -> (width, height) when the model folder has its own table (the demo model's small sizes)
        self.aspect_sizes: dict[str, tuple[int, int]] | None = None
        self.load_seconds: float | None = None  # from_pretrained: seconds to load the components and the LoRA

    def size_of(self, request: GenerationRequest) -> tuple[int, int]:
        """The (width, height) this pipeline draws ``request`` at: width/height when given, else the aspect ratio in
        the model's own size table when it has one (the demo model), else the hosted size (``request.size``)."""
        if request.width is None and self.aspect_sizes is not None:
            return self.aspect_sizes[request.aspect_ratio]
        return request.size

    def _components(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "transformer": self.transformer,
            "vae": self.vae,
        }

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    @quiet_loading()
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        lora: str | os.PathLike | None = DEFAULT_LORA,
        lora_strength: float = 1.0,
        quantize: str | None = None,
        offload: str = DEFAULT_OFFLOAD,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        quantize_text: str | None = None,
        text_device: str | torch.device | None = None,
        base: str | None = None,
        clip_l_file: str | os.PathLike | None = None,
        t5_file: str | os.PathLike | None = None,
        vae_file: str | os.PathLike | None = None,
        comfyui_models: str | os.PathLike | None = None,
        fast: bool | Mapping[str, Any] | None = None,
        compile: bool | None = None,
        log=print,
    ) -> FluxVectorPipeline:
        """Load the components and the LoRA; nothing is downloaded.

        ``model``: "demo" (the shipped toy that draws shapes), "tiny" (random weights), a diffusers folder, a hub id
        in the local cache, or a single-file transformer: BFL layout (``flux1-dev.safetensors``, bf16 or fp8, with
        ComfyUI's prefix or as an all-in-one checkpoint) or GGUF (``flux1-dev-Q8_0.gguf``, a tier of its own:
        ``gguf_model.py``, ``quantize`` None); a bare file name is looked up in ``comfyui_models``. Its
        text encoders and VAE come from the checkpoint itself, ``clip_l_file`` / ``t5_file`` / ``vae_file`` (ComfyUI's
        ``clip_l``, ``t5xxl_*``, ``ae`` files), the ``comfyui_models`` folder (ComfyUI's ``models/``), else ``base``
        (a diffusers folder or cached hub id; default FLUX.1-dev when a component is missing); configs and tokenizers
        come from ``base``, else FLUX.1-dev's, shipped (``single_file/``). An fp8 file with ``quantize`` None runs
        the fp8 tier (its weights stay float8).
        ``quantize``: the transformer's tier, ``quantize_text``: the T5 encoder's, each one of
        ``quantize.QUANTIZE_CHOICES`` (none, 8bit, nf4, fp8; None is none). ``text_device="cpu"``: the text encoders
        stay and compute on the CPU, only their embeddings (cached per prompt) move to ``device``.
        ``fast=True``: the whole fast mode for this device (``fast.choose_fast_plan``: fused QKV, the best attention
        backend, regional torch.compile, fp8 on sm89+ with torchao); ``fast={...}``: only the switches named
        (``{"fuse_qkv": True}``; ``{**fast.FULL, "fp8": False}`` is the whole mode without fp8). ``compile=True`` is
        the old name of ``fast=True`` (deprecated: it never meant only torch.compile).
        """
        from .quiet import diffusers_without_bitsandbytes

        diffusers_without_bitsandbytes()  # no Hub request at import (quiet.py)
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        from .memory_tiers import AUTO, QUANTIZE_OPTIONS, pick_quantize
        from .quantize import check_quantize, is_quantized, quantize_components, stays_resident
        from .single_file.find import find_model_file, lora_in_comfyui_models
        from .single_file.load import load_single_file

        if quantize not in (None, *QUANTIZE_OPTIONS):  # None / "auto": chosen below from the free memory
            allowed = ", ".join(repr(q) for q in QUANTIZE_OPTIONS)
            raise ValueError(f"quantize={quantize!r} is not allowed; quantize must be None (auto) or one of {allowed}")
        text_tier = check_quantize(quantize_text, "quantize_text")
        gguf = is_gguf_file(model)  # a GGUF transformer: a quantize tier of its own (gguf_model.py)
        if gguf:
            from .fast import FULL

            check_quantize_for_gguf(quantize)
            fast, compile = fast_for_gguf(_fast_from_deprecated_compile(fast, compile), FULL), None
        device = torch.device(device) if device is not None else default_device()
        text_device = _check_text_device(text_device, device)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or default_dtype(device)
        model_file = find_model_file(model, comfyui_models)
        single_file = model_file is not None
        files = {"clip_l_file": clip_l_file, "t5_file": t5_file, "vae_file": vae_file, "comfyui_models": comfyui_models}
        if not single_file and any(v is not None for v in files.values()):
            given = ", ".join(f"{k}=" for k, v in files.items() if v is not None)
            raise ValueError(
                f"{given} go with a single-file model (a .safetensors or .gguf transformer), not model={model!r}"
            )
        folder = None if single_file else resolve_model(model)
        lora_file = lora_in_comfyui_models(lora, comfyui_models) or resolve_lora(
            lora, base if single_file and base == "tiny" else model
        )
        started = time.perf_counter()
        if model == "tiny":
            log("model: tiny random-weight FLUX checkpoint (a structural demo: its images are noise-like)")
        elif model == DEMO_MODEL:
            log(f"model: {DEMO_NOTICE}")

        if model_file is not None:  # the files people have (single_file/): quantize None/auto is "fp8" for an fp8 file;
            # a .gguf transformer is read by gguf_model.py
            transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, quantize = load_single_file(
                model_file, base=base, quantize=None if quantize == AUTO else quantize, dtype=dtype, log=log, **files
            )
        else:
            transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", dtype=dtype)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            text_encoder_2 = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", dtype=dtype)
            tokenizer_2 = T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2")

        # None / "auto": the tier chosen from the free memory (memory_tiers.py); "none" on the CPU, as before. The
        # text encoders count only where they run (text_device apart: not on the device).
        on_device = {"transformer": transformer, "vae": vae}
        if text_device is None:
            on_device.update(text_encoder_2=text_encoder_2, text_encoder=text_encoder)
        tier = pick_quantize(quantize, device, on_device, dtype, offload, gguf=gguf, text_tier=text_tier, log=log)
        for line in quantize_components(transformer, tier, text_encoder_2, text_tier, device, text_device or device):
            log(f"quantize: {line}")
        sizes = {
            name: module_bytes(m)
            for name, m in (
                ("transformer", transformer),
                ("text_encoder_2", text_encoder_2),
                ("vae", vae),
                ("text_encoder", text_encoder),
            )
            if text_device is None or name not in ("text_encoder", "text_encoder_2")  # not on the device
        }

        handle = None
        if lora_file is not None:
            from .lora import apply_lora, load_lora_file, parse_lora

            patches = parse_lora(load_lora_file(lora_file), transformer, text_encoder, text_encoder_2)
            handle = apply_lora(patches, strength=lora_strength)
            log(f"lora: {lora_file.name}, {len(patches)} layers, strength {lora_strength}")
        plan, choice = _choose_fast_and_offload(
            _fast_from_deprecated_compile(fast, compile),
            offload,
            device,
            dtype,
            sizes,
            {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "transformer": transformer}
            if text_device is None
            else {"transformer": transformer},
            resident_transformer=stays_resident(transformer),
            quantized=is_quantized(transformer),
        )
        log(f"offload: {choice.mode} ({choice.reason})")
        for line in plan.describe() if plan is not None else ():
            log(f"fast: {line}")
        pipe = cls(
            transformer=transformer,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            device=device,
            dtype=dtype,
            offload=choice,
            lora=handle,
            model_name=model,
            lora_name=running_lora_name(lora, model),
            fast_plan=plan,
            text_device=text_device,
            log=log,
        )
        pipe.aspect_sizes = None if folder is None else aspect_ratio_sizes(folder)
        pipe.load_seconds = time.perf_counter() - started
        return pipe

    # ------------------------------------------------------------------------------------------------- fast
    def enable_fast(self, fast: Mapping[str, Any] | None = None, *, full: bool = True, log=print):
        """Choose the fast plan for this device (see ``fast.choose_fast_plan``) and apply it; returns the plan. Under
        group or sequential offload the hooks already hold the parameters, so fused QKV and fp8 (new parameters) are
        refused here: ask for them at load (``from_pretrained(fast=...)``), where they run before offload."""
        from .fast import FULL, apply_fast, choose_fast_plan, detect_env
        from .quantize import is_quantized

        if self.fast_plan is not None:
            raise RuntimeError(f"the fast mode is already applied ({self.fast_plan.summary()}); load a new pipeline")
        if gguf_layers(self.transformer) and (fast is not None or full):  # no fused QKV / fp8 on quantized bytes
            switches = fast_for_gguf(True if fast is None else fast, FULL)
            fast = switches if isinstance(switches, Mapping) else fast
        plan = choose_fast_plan(
            detect_env(self.device),
            fast,
            full=full,
            quantized=is_quantized(self.transformer),
            offload=self.offload.mode,
            dtype=self.dtype,
        )
        if self.offload.mode in ("group", "sequential") and (plan.fuse_qkv or plan.fp8):
            raise ValueError(
                f"the fast mode's fused QKV / fp8 create new parameters, and offload={self.offload.mode!r} already "
                "holds the old ones: load with from_pretrained(fast=...), which applies them before offload"
            )
        for line in plan.describe():
            log(f"fast: {line}")
        self.fast_timings = apply_fast(self, plan, log=log)
        return plan

    # ------------------------------------------------------------------------------------------- serving
    def default_size(self) -> tuple[int, int]:
        """The size a request that names none is drawn at (the contract's default aspect ratio, in this model's
        size table)."""
        return self.size_of(GenerationRequest(prompt=WARMUP_PROMPT))

    def warmup(
        self,
        sizes: Iterable[tuple[int, int]] | None = None,
        *,
        steps: int = 1,
        log: Callable[[str], None] | None = None,
    ) -> dict[tuple[int, int], dict[str, float]]:
        """A short generation at each size served (default: ``default_size()``; repeats dropped), so that the first
        job at a served size pays no first-call or compile costs: the compiled fast mode compiles one static graph
        per size. Compiled, each size runs twice and ``compile_s`` is the first run minus the second (later
        generations at that size, any steps, seed or strength, reuse the compiled code); else once. Returns
        ``{(width, height): {"first_s", "warm_s", "compile_s"}}``."""
        compiled = self.fast_plan is not None and bool(getattr(self.fast_plan, "compile", False))
        wanted = list(dict.fromkeys(sizes if sizes is not None else [self.default_size()]))
        strength = 0.0 if self.lora is None else self.lora.strength  # the LoRA stays as it is
        report: dict[tuple[int, int], dict[str, float]] = {}
        for width, height in wanted:
            request = GenerationRequest(
                prompt=WARMUP_PROMPT, width=width, height=height, steps=steps, seed=0, lora_strength=strength
            )
            times = []
            for _ in range(2 if compiled else 1):
                started = time.perf_counter()
                self.generate(request, progress=False)
                _sync(self.device)
                times.append(time.perf_counter() - started)
            report[(width, height)] = {
                "first_s": times[0],
                "warm_s": times[-1],
                "compile_s": max(times[0] - times[-1], 0.0),
            }
            if log is not None:
                log(f"warm-up: {width}x{height}, {steps} step{'s' if steps != 1 else ''} in {times[0]:.2f} s")
        return report

    # ------------------------------------------------------------------------------------------------- LoRA
    @property
    def identity(self) -> dict[str, Any]:
        """What made this pipeline's images, fit to publish in the files (``image_metadata``): the model and LoRA
        as they were named (a local path reduced to its last component) and the flux_vector version."""
        from .image_metadata import public_name
        from .version import __version__

        identity = {
            "flux_vector": __version__,
            "model": public_name(self.model_name),
            "lora": public_name(self.lora_name),
        }
        if self._weight_files is None:  # A1111's hashes of the files read (comfy/hashes.py), computed once
            from .comfy.hashes import weights_identity

            self._weight_files = weights_identity(self.model_name, self.lora_name if self.lora is not None else None)
        return {**identity, **self._weight_files}

    @property
    def lora_strength(self) -> float | None:
        return None if self.lora is None else self.lora.strength

    def set_lora_strength(self, strength: float, text_strength: float | None = None) -> None:
        """Switch the LoRA strength (any s in [-10, 10]; ``text_strength``: its text-encoder layers', default
        ``strength``, as ComfyUI's strength_clip); costs no reload and accumulates no drift."""
        from .lora import check_strength, strength_without_lora

        check_strength(strength)  # a caller's value, not through the contract: True is not 1.0
        text = strength if text_strength is None else check_strength(text_strength)
        if self.lora is None:
            strength_without_lora(strength, explicit=True)
            strength_without_lora(text, explicit=True)
            return
        if (strength, text) != (self.lora.strength, self.lora.text_strength):
            self.lora.set_strength(strength, text)

    def prepare(self, request: GenerationRequest) -> Prepared:
        """The request as this pipeline draws it, with the LoRA set for it: the one place the strength rules run.
        Without a LoRA, a strength left at its default becomes 0 and an explicit other one is ``NoLoraLoaded`` (a
        ``request.ModelCannot``); with one, the LoRA is switched to the request's strength (fused: recomputed in place
        from the kept W0, no reload), timed. A prepared request prepares again at no cost."""
        if self.lora is None:
            if request.lora_strength == 0 and request.text_lora_strength == 0:
                return Prepared(request)
            from .lora import strength_without_lora

            strength = strength_without_lora(
                request.lora_strength, explicit="lora_strength" in request.model_fields_set
            )
            if request.lora_strength_clip is not None:
                strength_without_lora(request.lora_strength_clip, explicit=True)
            return Prepared(request.model_copy(update={"lora_strength": strength}))
        text_strength = request.text_lora_strength
        if (request.lora_strength, text_strength) == (self.lora.strength, self.lora.text_strength):
            return Prepared(request)
        started = time.perf_counter()
        self.lora.set_strength(request.lora_strength, text_strength)
        _sync(self.device)
        return Prepared(request, time.perf_counter() - started)

    def fuse_lora(self, log: Callable[[str], None] = print) -> bool:
        """Fuse the LoRA into the weights once where this pipeline can hold fused weights (a strength switch then
        recomputes them from the kept originals); True when fused. A quantized transformer (8bit, nf4, fp8, GGUF:
        the log names the tier), a quantized T5 under a LoRA with text layers, or weights kept off the device
        (sequential or group offload) keep it as a runtime adapter, as does a LoRA the fusing code refuses."""
        if self.lora is None:
            log("lora: none loaded (lora_strength 0 only)")
            return False
        if self.lora.fused:
            return True
        from .lora import LoraError
        from .quantize import quantized_tier

        reason = None
        tier, text_tier = quantized_tier(self.transformer), quantized_tier(self.text_encoder_2)
        if tier is not None:
            reason = f"the transformer is quantized ({tier}: its weights cannot hold a fused LoRA)"
        elif gguf_layers(self.transformer):
            reason = "the transformer's GGUF weights stay quantized and are dequantized per call: nothing to fuse into"
        elif text_tier is not None and self.lora.touches_text:
            reason = f"the T5 text encoder is quantized ({text_tier}) and the LoRA has text-encoder layers"
        elif self.offload.mode in ("sequential", "group"):
            reason = f"offload {self.offload.mode} keeps the weights off the device"
        if reason is None:
            started = time.perf_counter()
            try:
                self.lora.fuse()
            except LoraError as exc:
                reason = str(exc).splitlines()[0]
            else:
                log(
                    f"lora: fused into the weights in {time.perf_counter() - started:.3f} s at strength "
                    f"{self.lora.strength:g} (another lora_strength recomputes them from the kept originals: no reload)"
                )
                return True
        log(f"lora: kept as a runtime adapter ({reason}); switching strength is one assignment")
        return False

    # ------------------------------------------------------------------------------------------- encode
    def tokenize(self, prompt: str):
        """The prompt's CLIP-L chunks and T5 tokens with their weights (``prompt.PromptTokens``), as ComfyUI makes
        them; ``embedding:`` names are dropped with a warning (there are no embeddings)."""
        return tokenize_prompt(weighted_pieces(prompt), self.tokenizer, self.tokenizer_2)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 sequence [1, L, D], CLIP-L pooled [1, P]) for one prompt, as ComfyUI's CLIPTextEncode computes them,
        with the LoRA's text-encoder layers at the pipeline's current strength. L = max(256, tokens + 1). Cached."""

        def compute():
            tokens = self.tokenize(prompt)
            for warning in tokens.warnings:
                _log.warning(warning)
            device = self.text_device or self._execution_device()
            t5 = encode_t5(self.text_encoder_2, tokens, device)
            pooled = encode_clip_pooled(self.text_encoder, tokens, device)
            target = self._execution_device()
            return t5.to(target, self.dtype), pooled.to(target, self.dtype)

        return self.prompt_cache.get((prompt, id(self.lora), self._text_lora_strength()), compute)

    def _text_lora_strength(self) -> float | None:
        return self.lora.text_strength if self.lora is not None and self.lora.touches_text else None

    def _execution_device(self) -> torch.device:
        """Where the model computes: the offload's onload device (every mode onloads there)."""
        return self.offload.device

    # ------------------------------------------------------------------------------------------- sample
    def velocity_model(
        self, embeds: torch.Tensor, pooled: torch.Tensor, guidance: float, height: int, width: int, name: str = "cond"
    ):
        """The transformer as ComfyUI's velocity model ``(x [B,16,h,w] float32, sigma [B]) -> v``. ``name`` labels
        its calls for the step cache ("cond" / "uncond": each keeps its own cached residuals)."""
        h, w = height // 8, width // 8
        device = self._execution_device()
        img_ids = self._diffusers._prepare_latent_image_ids(1, h // 2, w // 2, device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=self.dtype)
        step_cache = self._step_cache_on()
        guidance_by_batch: dict[int, torch.Tensor] = {}  # made once, not a fill kernel per call

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            batch = x.shape[0]
            if batch not in guidance_by_batch:
                guidance_by_batch[batch] = torch.full((batch,), guidance, device=device, dtype=torch.float32)
            packed = pack_latents_as(x, device, self.dtype)
            with self.transformer.cache_context(name) if step_cache else contextlib.nullcontext():
                out = self.transformer(
                    hidden_states=packed,
                    timestep=to_device(sigma, device),  # float32 (embedded in float32: timesteps.py)
                    guidance=guidance_by_batch[batch],
                    pooled_projections=pooled.expand(batch, -1),
                    encoder_hidden_states=embeds.expand(batch, -1, -1),
                    txt_ids=txt_ids,
                    img_ids=img_ids,
                    return_dict=False,
                )[0]
            return unpack_latents_float(out, h, w)

        return velocity

    def _step_cache_on(self) -> bool:
        return self.fast_plan is not None and self.fast_plan.step_cache is not None

    @torch.inference_mode()
    def __call__(self, prompt: str, *, progress: bool = True, **params: Any) -> GenerationResult:
        """Generate with the hosted API's parameters (see ``request.GenerationRequest`` for all of them)."""
        if params.get("lora_strength") is None:  # None: keep the strength the pipeline is set to
            params.pop("lora_strength", None)
            if self.lora is not None:
                params["lora_strength"] = self.lora.strength
        return self.generate(parse_request({"prompt": prompt, **params}), progress=progress)

    @torch.inference_mode()
    def generate(self, request: GenerationRequest, *, progress: bool = True, on_step=None) -> GenerationResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        request, switch_s = self.prepare(request)
        if switch_s is not None:
            timings["lora_switch_s"] = switch_s
        width, height = self.size_of(request)
        if self._step_cache_on():  # cached residuals belong to one generation
            self.transformer._reset_stateful_cache()
        t = time.perf_counter()
        embeds, pooled = self.encode_prompt(request.prompt)
        timings["encode_s"] = time.perf_counter() - t
        positive_v = self.velocity_model(embeds, pooled, request.guidance, height, width)
        negative_cache: list = []

        def negative_v(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            # Encoded on first use: only cfg != 1 and the cfg_pp / *_pp samplers evaluate the negative prompt.
            if not negative_cache:
                encoded = self.encode_prompt(request.negative_prompt)
                negative_cache.append(self.velocity_model(*encoded, NEGATIVE_GUIDANCE, height, width, "uncond"))
            return negative_cache[0](x, sigma)

        latent = torch.zeros(request.batch_size, 16, height // 8, width // 8, device=self._execution_device())
        bar = _progress_bar(request.steps, progress)

        def callback(i, x, denoised):
            bar.update(1) if bar is not None else None
            if on_step is not None:
                on_step(i + 1, request.steps)

        t = time.perf_counter()
        x = ksampler(
            positive_v,
            negative_v,
            sampler_name=request.sampler_name,
            scheduler=request.scheduler,
            steps=request.steps,
            seed=request.seed,
            cfg=request.cfg,
            latent=latent,
            mu=flux_mu(width, height),
            callback=callback,
        )
        if bar is not None:
            bar.close()
        _sync(x.device)
        timings["sample_s"] = time.perf_counter() - t
        timings["per_step_s"] = timings["sample_s"] / request.steps
        if not torch.isfinite(x).all():
            raise FloatingPointError("the sampler produced NaN/inf latents (model or precision problem)")

        t = time.perf_counter()
        images = self.decode(x)
        timings["decode_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started
        return GenerationResult(images, request, width, height, timings, latents=x.detach().float().cpu())

    def generate_many(
        self, requests: Iterable[GenerationRequest | Mapping[str, Any]], *, progress: bool = True, errors: str = "raise"
    ) -> Generator[GenerationResult | Exception, None, None]:
        """``generate`` for each request (or parameter dict) in turn, yielding results in input order; see
        ``generate_many`` below."""
        return generate_many(self, requests, progress=progress, errors=errors)

    def decode(self, x: torch.Tensor) -> list[Image.Image]:
        """VAE-decode model-space latents; pixels as ComfyUI's SaveImage makes them (clip, then truncate). One image
        at a time, tiled from ``TILED_DECODE_PIXELS`` up: peak memory grows with one image, not with the batch."""
        latents = to_latent(x)
        return [self._decode_one(latents[i : i + 1]) for i in range(latents.shape[0])]

    def _decode_one(self, latent: torch.Tensor) -> Image.Image:
        latent = latent.to(self._execution_device(), self.vae.dtype)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        pixels = latent.shape[-2] * latent.shape[-1] * scale**2
        tiled = pixels >= TILED_DECODE_PIXELS and hasattr(self.vae, "enable_tiling")
        if tiled:
            self.vae.enable_tiling()
        try:
            image = self.vae.decode(latent, return_dict=False)[0]
        finally:
            if tiled:
                self.vae.disable_tiling()
        image = ((image[0].float() + 1.0) / 2.0).clamp(0.0, 1.0)
        array = (255.0 * image.permute(1, 2, 0).cpu().numpy()).clip(0, 255).astype(np.uint8)
        return Image.fromarray(array)


# Images from 2048x2048 up are VAE-decoded in overlapping tiles (bounded memory: the VAE's mid-block attention over
# all latent pixels is the peak; at exactly 2048x2048 that is 65536 tokens, so the boundary is tiled too).
TILED_DECODE_PIXELS = 2048 * 2048


def generate_many(
    pipe, requests: Iterable[GenerationRequest | Mapping[str, Any]], *, progress: bool = True, errors: str = "raise"
) -> Generator[GenerationResult | Exception, None, None]:
    """Run ``pipe.generate`` on each request in input order, the model loaded once; one progress bar over the images
    (``progress``), none per image. ``errors="raise"``: a failing request raises; ``"return"``: its exception is
    yielded in its place and the rest run (an out-of-memory error frees the cached device memory first).
    A free function so that a pipeline wrapping another (``pipeline_factory``) runs its own ``generate``."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors={errors!r} is not allowed; errors must be 'raise' or 'return'")
    total = len(requests) if isinstance(requests, Sized) else None
    bar = _images_bar(total, progress)
    try:
        for request in requests:
            if not isinstance(request, GenerationRequest):
                request = parse_request(dict(request))
            try:
                result = pipe.generate(request, progress=False)
            except Exception as exc:
                if errors == "raise":
                    raise
                if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                result = exc
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if bar is not None:
            bar.close()


def pack_latents_as(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' ``_pack_latents(x.to(device, dtype))`` ([B,C,h,w] -> [B, h/2*w/2, 4C]) as one copy, not two."""
    b, c, h, w = x.shape
    packed = torch.empty((b, h // 2, w // 2, c, 2, 2), device=device, dtype=dtype)
    packed.copy_(x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5))
    return packed.view(b, (h // 2) * (w // 2), c * 4)


def unpack_latents_float(out: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """diffusers' ``_unpack_latents(out).float()`` ([B, h/2*w/2, 4C] -> [B,C,h,w] float32) as one copy, not two."""
    b, _, channels = out.shape
    x = torch.empty((b, channels // 4, h // 2, 2, w // 2, 2), device=out.device, dtype=torch.float32)
    x.copy_(out.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5))
    return x.view(b, channels // 4, h, w)


def load_pipeline(model: str | None = None, *, lora: str | os.PathLike | None = None, log=print, **options):
    """``FluxVectorPipeline.from_pretrained`` with the defaults filled in, as every entry point loads it: ``model``
    None is ``models.default_model()``, ``lora`` None is the Simple Vector LoRA ("none": no LoRA). The plugin point
    ``$FLUX_VECTOR_PIPELINE_FACTORY`` (``pipeline_factory.py``) replaces ``from_pretrained`` when set."""
    from .pipeline_factory import factory_from_env

    factory = factory_from_env() or FluxVectorPipeline.from_pretrained
    return factory(model or default_model(log=log), lora=DEFAULT_LORA if lora is None else lora, log=log, **options)


def _choose_fast_and_offload(
    fast,
    offload: str,
    device: torch.device,
    dtype: torch.dtype,
    sizes: dict[str, int],
    modules: dict,
    *,
    resident_transformer: bool,
    quantized: bool,
):
    """(the fast plan or None, the offload choice) for these loaded components (``fast.choose_fast_and_offload``).
    ``resident_transformer``: the transformer's bitsandbytes layers stay on the device; ``quantized``: any tier."""
    from .fast import FastEnv, choose_fast_and_offload, detect_env, fp8_saved_bytes

    return choose_fast_and_offload(
        detect_env(device) if fast else FastEnv(device.type),
        fast,
        offload=offload,
        device=device,
        free_bytes=accelerator_free_bytes(device),
        component_bytes=sizes,
        largest_group=largest_group_bytes(modules, offload_plan("group", resident_transformer=resident_transformer)),
        fp8_saved_bytes=fp8_saved_bytes(modules["transformer"]) if fast else 0,
        resident_transformer=resident_transformer,
        dtype=dtype,
        quantized=quantized,
    )


def _check_text_device(text_device: str | torch.device | None, device: torch.device) -> torch.device | None:
    """``text_device`` as a device, None when it is ``device`` or None; ``ValueError`` naming the field otherwise."""
    if text_device is None:
        return None
    try:
        chosen = torch.device(text_device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"text_device={text_device!r} is not a device; use 'cpu' (or None: --device)") from exc
    return None if chosen == device else chosen


def _placed_apart(text_encoder_2, device: torch.device, text_device: torch.device | None) -> dict[str, torch.device]:
    """The components placed outside the offload plan, and where: both text encoders on ``text_device`` when it is
    set; else a T5 with bitsandbytes layers on ``device`` (offload hooks cannot move them: ``quantize.stays_resident``).
    """
    from .quantize import stays_resident

    if text_device is not None:
        return {"text_encoder": text_device, "text_encoder_2": text_device}
    return {"text_encoder_2": device} if stays_resident(text_encoder_2) else {}


def _fast_from_deprecated_compile(fast, compile: bool | None):
    """``compile=True`` (the old name of the whole fast mode) as ``fast``, with a DeprecationWarning."""
    if compile is None:
        return fast
    import warnings

    warnings.warn(
        "from_pretrained(compile=...) is deprecated: it switched on the whole fast mode (fused QKV, attention backend, "
        "fp8), not only torch.compile; use fast=True",
        DeprecationWarning,
        stacklevel=3,
    )
    if not compile:
        return fast
    if isinstance(fast, Mapping):  # compile=True with switches: the whole mode, those switches overriding it
        from .fast import FULL

        return {**FULL, **fast}
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step", leave=False)


def _images_bar(total: int | None, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="image")
