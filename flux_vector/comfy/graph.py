"""A request as a ComfyUI API-format graph (the ``prompt`` chunk ComfyUI's SaveImage writes and its loader reads).

The layout is the KSampler one of docs/COMFY_E2E.md section 1, the graph flux_vector's pipeline reproduces:

    UNETLoader -> LoraLoader -> ModelSamplingFlux(1.15, 0.5, W, H) -> KSampler -> VAEDecode -> SaveImage
    DualCLIPLoader(flux) -> LoraLoader.clip -> CLIPTextEncode(prompt) -> FluxGuidance(g) -> KSampler.positive
                                            -> CLIPTextEncode(negative) (no FluxGuidance: 3.5) -> KSampler.negative
    EmptySD3LatentImage(W, H, batch) -> KSampler.latent_image; VAELoader -> VAEDecode

LoraLoader carries ``strength_model`` = lora_strength and ``strength_clip`` = the text-encoder strength (ComfyUI's
own semantics); without a LoRA the loaders feed the rest directly. Two name mappings: the hosted ``euler_pp`` /
``euler_ancestral_pp`` are written as ComfyUI's migration writes them (the plain sampler at twice the cfg: the same
computation), and an aspect ratio as its width and height.

Seeds: written exactly (JSON integers). ComfyUI's server reads them exactly (``POST /prompt``), but a browser reads
JSON numbers as doubles: a seed above 2^53 dropped onto ComfyUI's page becomes the nearest double, another seed. The
KSampler's title says so for such seeds; queue that graph through the API to get the same image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..request import GenerationRequest
from ..sampling.names import PP_MIGRATION
from .names import file_names, lora_file_name

# ModelSamplingFlux's shifts: sampling.flux_mu's defaults (a test holds them equal; this module stays torch-free)
MAX_SHIFT, BASE_SHIFT = 1.15, 0.5
NEGATIVE_GUIDANCE = 3.5  # ComfyUI's guidance for a conditioning without FluxGuidance (the negative prompt)
BROWSER_SAFE_SEED = 2**53  # integers up to this are exact as JSON doubles
CFG_MAX = 100.0  # KSampler's cfg bound (node_inputs.json)


class GraphUnwritable(ValueError):
    """A request ComfyUI's nodes cannot express (the reason names the input)."""


def _link(node: str, output: int = 0) -> list[Any]:
    return [node, output]


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def graph_for(
    request: GenerationRequest, identity: Mapping[str, Any], *, size: tuple[int, int] | None = None
) -> dict[str, dict[str, Any]]:
    """The API-format graph that makes ``request``'s images in ComfyUI from the same files (``identity``: the
    pipeline's, ``FluxVectorPipeline.identity``; ``size``: the image's own when the model draws at sizes of its own).
    ``GraphUnwritable`` when a value is outside what the nodes accept."""
    width, height = size or request.size
    files = file_names(identity.get("model"))
    sampler, cfg = request.sampler_name, float(request.cfg)
    if sampler in PP_MIGRATION:
        sampler, cfg = PP_MIGRATION[sampler], 2.0 * cfg
        if cfg > CFG_MAX:
            raise GraphUnwritable(f"cfg={request.cfg} with {request.sampler_name} is cfg {cfg} in ComfyUI (max 100)")
    graph: dict[str, dict[str, Any]] = {
        "12": _node("UNETLoader", "Load Diffusion Model", unet_name=files["unet_name"], weight_dtype="default"),
        "11": _node(
            "DualCLIPLoader",
            "DualCLIPLoader",
            clip_name1=files["clip_name1"],
            clip_name2=files["clip_name2"],
            type="flux",
        ),
    }
    model, clip = _link("12"), _link("11")
    lora_name = lora_file_name(identity)
    if lora_name is not None:
        graph["20"] = _node(
            "LoraLoader",
            "Load LoRA",
            lora_name=lora_name,
            strength_model=float(request.lora_strength),
            strength_clip=float(request.text_lora_strength),
            model=model,
            clip=clip,
        )
        model, clip = _link("20", 0), _link("20", 1)
    graph["30"] = _node(
        "ModelSamplingFlux",
        "ModelSamplingFlux",
        max_shift=MAX_SHIFT,
        base_shift=BASE_SHIFT,
        width=width,
        height=height,
        model=model,
    )
    graph["6"] = _node("CLIPTextEncode", "CLIP Text Encode (Positive Prompt)", text=request.prompt, clip=clip)
    graph["26"] = _node("FluxGuidance", "FluxGuidance", guidance=float(request.guidance), conditioning=_link("6"))
    graph["33"] = _node("CLIPTextEncode", "CLIP Text Encode (Negative Prompt)", text=request.negative_prompt, clip=clip)
    graph["27"] = _node(
        "EmptySD3LatentImage", "EmptySD3LatentImage", width=width, height=height, batch_size=request.batch_size
    )
    title = "KSampler"
    if request.seed > BROWSER_SAFE_SEED:
        title = "KSampler (seed above 2^53: exact only when queued through the API, not loaded in a browser)"
    graph["3"] = _node(
        "KSampler",
        title,
        seed=request.seed,
        steps=request.steps,
        cfg=cfg,
        sampler_name=sampler,
        scheduler=request.scheduler,
        denoise=1.0,
        model=_link("30"),
        positive=_link("26"),
        negative=_link("33"),
        latent_image=_link("27"),
    )
    graph["10"] = _node("VAELoader", "Load VAE", vae_name=files["vae_name"])
    graph["8"] = _node("VAEDecode", "VAE Decode", samples=_link("3"), vae=_link("10"))
    graph["9"] = _node("SaveImage", "Save Image", filename_prefix="flux_vector", images=_link("8"))
    return graph


def graph_for_record(record: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The graph for an image's record (``image_metadata.image_metadata``), or None when the record is not a whole
    request or the request cannot be written as a graph."""
    from ..request import RequestError, parse_request

    try:
        request = parse_request(dict(record.get("request") or {}))
    except RequestError:
        return None
    width, height = record.get("width"), record.get("height")
    size = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    try:
        return graph_for(request, record, size=size)
    except GraphUnwritable:
        return None
