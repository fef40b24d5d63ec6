"""A ComfyUI API-format graph back into a flux_vector request, or a one-line refusal naming the node and why.

Both common FLUX layouts are read: K (KSampler; docs/COMFY_E2E.md section 1, what ``graph_for`` writes) and A
(RandomNoise, KSamplerSelect, BasicScheduler, BasicGuider, SamplerCustomAdvanced: ComfyUI's FLUX dev example), with
LoraLoader or LoraLoaderModelOnly (the LoRA on the transformer only: a text-encoder strength of 0), CLIPTextEncode or
CLIPTextEncodeFlux (the same text for both encoders), and ConditioningZeroOut as the negative where it equals an
empty one. Whatever flux_vector cannot reproduce exactly is ``Unreproducible`` (a ValueError: one line on the command
line): an unknown node, an img2img latent or denoise < 1, a layout-A sampler whose sigma list differs from the
KSampler's, a negative at another guidance, weights in another precision, values outside the request's bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..request import ASPECT_RATIOS, GenerationRequest, RequestError, parse_request
from ..sampling.names import SAMPLER_NAMES
from .graph import BASE_SHIFT, MAX_SHIFT, NEGATIVE_GUIDANCE

KNOWN_NODES = frozenset(
    {
        "UNETLoader",
        "DualCLIPLoader",
        "VAELoader",
        "CheckpointLoaderSimple",
        "LoraLoader",
        "LoraLoaderModelOnly",
        "CLIPTextEncode",
        "CLIPTextEncodeFlux",
        "FluxGuidance",
        "ConditioningZeroOut",
        "ModelSamplingFlux",
        "EmptySD3LatentImage",
        "KSampler",
        "BasicGuider",
        "KSamplerSelect",
        "BasicScheduler",
        "RandomNoise",
        "SamplerCustomAdvanced",
        "VAEDecode",
        "SaveImage",
        "PreviewImage",
    }
)
OUTPUT_NODES = ("SaveImage", "PreviewImage")
_LORA_NODES = ("LoraLoader", "LoraLoaderModelOnly")
# samplers whose KSampler sigma list (steps+1, the next-to-last dropped) BasicScheduler does not make
DISCARD_PENULTIMATE = frozenset({"uni_pc", "uni_pc_bh2", "dpm_2", "dpm_2_ancestral"})
# samplers that evaluate the negative prompt even at cfg 1
NEEDS_NEGATIVE = frozenset(name for name in SAMPLER_NAMES if name.endswith("_cfg_pp"))


class Unreproducible(ValueError):
    """A graph flux_vector cannot reproduce exactly: ``node`` (id), ``class_type`` and the ``reason``."""

    def __init__(self, node: str, class_type: str, reason: str):
        self.node, self.class_type, self.reason = node, class_type, reason
        super().__init__(f"ComfyUI node {node} ({class_type}): {reason}; flux_vector cannot reproduce this graph")


@dataclass(frozen=True)
class ComfyImage:
    """What a graph makes: the equivalent request and the file names it loads (the other install's names)."""

    request: GenerationRequest
    unet_name: str
    lora_name: str | None
    clip_names: tuple[str, ...]
    vae_name: str


@dataclass
class _Lora:
    node: str
    name: str
    strength: float


class _Reader:
    def __init__(self, graph: Mapping[str, Any]):
        if not isinstance(graph, Mapping) or not graph:
            raise Unreproducible("-", "graph", "not an API-format graph (an object of nodes)")
        self.graph = graph
        for node_id, node in graph.items():
            if not isinstance(node, Mapping) or not isinstance(node.get("inputs", {}), Mapping):
                raise Unreproducible(str(node_id), "?", "not a node (an object with class_type and inputs)")
            class_type = node.get("class_type")
            if class_type not in KNOWN_NODES:
                raise Unreproducible(
                    str(node_id),
                    str(class_type),
                    "a node flux_vector does not have (it reads the FLUX text-to-image nodes)",
                )
        self.fields: dict[str, str] = {}  # request field -> the node id it came from (for refusals)

    # ------------------------------------------------------------------------------------------------ access
    def cls(self, node_id: str) -> str:
        return str(self.graph[node_id]["class_type"])

    def fail(self, node_id: str, reason: str) -> Unreproducible:
        return Unreproducible(node_id, self.cls(node_id), reason)

    def link(self, node_id: str, name: str, *, allowed: tuple[str, ...]) -> tuple[str, int]:
        """The (node, output) input ``name`` of ``node_id`` links to; it must be one of the ``allowed`` classes."""
        value = self.graph[node_id].get("inputs", {}).get(name)
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            raise self.fail(node_id, f"input {name} is {'missing' if value is None else 'not a link'}")
        source = str(value[0])
        if source not in self.graph:
            raise self.fail(node_id, f"input {name} links to node {source}, which is not in the graph")
        if self.cls(source) not in allowed:
            raise self.fail(
                node_id, f"input {name} comes from {self.cls(source)} (node {source}), not {' or '.join(allowed)}"
            )
        return source, value[1]

    def value(self, node_id: str, name: str, kind: type) -> Any:
        value = self.graph[node_id].get("inputs", {}).get(name)
        if value is None:
            raise self.fail(node_id, f"input {name} is missing")
        if isinstance(value, list):
            raise self.fail(node_id, f"input {name} comes from another node, not a value flux_vector can read")
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, float) and value.is_integer():  # ComfyUI reads 4.0 as the INT 4
            return int(value)
        if kind is str and isinstance(value, str):
            return value
        what = {int: "an integer", float: "a number", str: "a text"}[kind]
        raise self.fail(node_id, f"input {name}={value!r} is not {what}")

    def field(self, name: str, node_id: str, value: Any) -> Any:
        self.fields[name] = node_id
        return value

    # ------------------------------------------------------------------------------------------------ chains
    def model_chain(self, link: tuple[str, int]) -> tuple[tuple, _Lora | None, str]:
        """ModelSamplingFlux -> [LoRA] -> loader: ((max_shift, base_shift, width, height) node, lora, unet name)."""
        node, _ = link
        if self.cls(node) != "ModelSamplingFlux":
            raise self.fail(
                node,
                "the model reaches the sampler without ModelSamplingFlux (ComfyUI then samples "
                "every size with one fixed shift, flux_vector with the image size's)",
            )
        shift = (
            node,
            self.value(node, "max_shift", float),
            self.value(node, "base_shift", float),
            self.value(node, "width", int),
            self.value(node, "height", int),
        )
        if shift[1:3] != (MAX_SHIFT, BASE_SHIFT):
            raise self.fail(
                node, f"max_shift {shift[1]:g} / base_shift {shift[2]:g}: flux_vector samples with 1.15 / 0.5"
            )
        source = self.link(
            node, "model", allowed=("LoraLoader", "LoraLoaderModelOnly", "UNETLoader", "CheckpointLoaderSimple")
        )
        lora = None
        if self.cls(source[0]) in ("LoraLoader", "LoraLoaderModelOnly"):
            lora_node = source[0]
            if source[1] != 0:
                raise self.fail(node, "input model links to the LoRA's CLIP output")
            lora = _Lora(
                lora_node, self.value(lora_node, "lora_name", str), self.value(lora_node, "strength_model", float)
            )
            source = self.link(lora_node, "model", allowed=(*_LORA_NODES, "UNETLoader", "CheckpointLoaderSimple"))
            self.one_lora(lora_node, source[0])
        return shift, lora, self.loader_name(source, "MODEL")

    def one_lora(self, lora_node: str, below: str) -> None:
        if self.cls(below) in _LORA_NODES:
            raise self.fail(
                lora_node,
                f"a second LoRA ({self.value(lora_node, 'lora_name', str)} over "
                f"{self.value(below, 'lora_name', str)}): flux_vector applies one",
            )

    def loader_name(self, source: tuple[str, int], what: str) -> str:
        node, output = source
        if self.cls(node) == "CheckpointLoaderSimple":
            if output != {"MODEL": 0, "CLIP": 1, "VAE": 2}[what]:
                raise self.fail(node, f"output {output} used as the {what}")
            return self.value(node, "ckpt_name", str)
        if self.cls(node) == "UNETLoader":
            dtype = self.value(node, "weight_dtype", str)
            if dtype != "default":
                raise self.fail(
                    node, f"weight_dtype {dtype}: the transformer in 8-bit float, which flux_vector does not run"
                )
            return self.value(node, "unet_name", str)
        if self.cls(node) == "VAELoader":
            return self.value(node, "vae_name", str)
        kind = self.value(node, "type", str)
        if kind != "flux":
            raise self.fail(node, f"type {kind}: flux_vector's text encoders are FLUX's (type flux)")
        return self.value(node, "clip_name1", str) + "|" + self.value(node, "clip_name2", str)

    def clip_chain(self, link: tuple[str, int]) -> tuple[_Lora | None, str]:
        """[LoraLoader] -> DualCLIPLoader / CheckpointLoaderSimple: (the LoRA at its strength_clip, the loader)."""
        node, output = link
        lora = None
        if self.cls(node) == "LoraLoader":
            if output != 1:
                raise self.fail(node, "its MODEL output used as a CLIP")
            lora = _Lora(node, self.value(node, "lora_name", str), self.value(node, "strength_clip", float))
            link = self.link(node, "clip", allowed=("LoraLoader", "DualCLIPLoader", "CheckpointLoaderSimple"))
            self.one_lora(node, link[0])
        return lora, self.loader_name(link, "CLIP")

    def conditioning(self, link: tuple[str, int], *, negative: bool) -> tuple[str | None, float, Any]:
        """(text, guidance, clip chain) of a conditioning; text None: ConditioningZeroOut."""
        node, _ = link
        guidance: float | None = None
        seen: set[str] = set()
        while self.cls(node) == "FluxGuidance":
            if node in seen:
                raise self.fail(node, "its conditioning links round in a loop")
            seen.add(node)
            if guidance is None:  # the outermost FluxGuidance sets the value the model sees
                guidance = self.field(
                    "negative_guidance" if negative else "guidance", node, self.value(node, "guidance", float)
                )
            node, _ = self.link(
                node,
                "conditioning",
                allowed=("FluxGuidance", "CLIPTextEncode", "CLIPTextEncodeFlux", "ConditioningZeroOut"),
            )
        kind = self.cls(node)
        if kind == "ConditioningZeroOut":
            if not negative:
                raise self.fail(node, "a zeroed positive prompt")
            return None, NEGATIVE_GUIDANCE, None
        clip = self.clip_chain(
            self.link(node, "clip", allowed=("LoraLoader", "DualCLIPLoader", "CheckpointLoaderSimple"))
        )
        if kind == "CLIPTextEncodeFlux":
            clip_l, t5xxl = self.value(node, "clip_l", str), self.value(node, "t5xxl", str)
            if clip_l != t5xxl:
                raise self.fail(node, "different texts for CLIP-L and T5 (a request has one prompt for both)")
            if guidance is None:
                guidance = self.field(
                    "negative_guidance" if negative else "guidance", node, self.value(node, "guidance", float)
                )
            text = clip_l
        else:
            text = self.value(node, "text", str)
        self.fields["negative_prompt" if negative else "prompt"] = node
        return text, NEGATIVE_GUIDANCE if guidance is None else guidance, clip

    def latent(self, link: tuple[str, int]) -> tuple[int, int, int]:
        node, _ = link
        return (
            self.field("width", node, self.value(node, "width", int)),
            self.field("height", node, self.value(node, "height", int)),
            self.field("batch_size", node, self.value(node, "batch_size", int)),
        )

    # ------------------------------------------------------------------------------------------------ the graph
    def read(self) -> ComfyImage:
        outputs = [n for n in self.graph if self.cls(n) in OUTPUT_NODES]
        if len(outputs) != 1:
            first = outputs[1] if outputs else next(iter(self.graph))
            raise self.fail(
                first, f"{len(outputs)} image outputs (SaveImage/PreviewImage): the graph must make one set of images"
            )
        decode, _ = self.link(outputs[0], "images", allowed=("VAEDecode",))
        vae_name = self.loader_name(self.link(decode, "vae", allowed=("VAELoader", "CheckpointLoaderSimple")), "VAE")
        sampler_node, output = self.link(decode, "samples", allowed=("KSampler", "SamplerCustomAdvanced"))
        if output != 0:
            raise self.fail(sampler_node, "its denoised_output decoded (flux_vector returns the sampled output)")
        if self.cls(sampler_node) == "KSampler":
            params, model_link, positive, negative, latent = self.ksampler(sampler_node)
        else:
            params, model_link, positive, negative, latent = self.custom_advanced(sampler_node)
        shift, model_lora, unet_name = self.model_chain(model_link)
        width, height, batch = self.latent(latent)
        if shift[3:] != (width, height):
            raise self.fail(
                shift[0],
                f"width/height {shift[3]}x{shift[4]} differ from the latent's {width}x{height} "
                "(flux_vector shifts by the image's own size)",
            )
        text, guidance, clip = self.conditioning(positive, negative=False)
        params.update(prompt=text, guidance=guidance)
        if negative is not None:
            negative_text, negative_guidance, negative_clip = self.conditioning(negative, negative=True)
            if negative_guidance != NEGATIVE_GUIDANCE:
                raise self.fail(
                    self.fields["negative_guidance"],
                    f"the negative prompt at guidance {negative_guidance:g}: "
                    "flux_vector runs it at 3.5 (no FluxGuidance on the negative)",
                )
            if negative_text is None:  # ConditioningZeroOut
                if params["cfg"] != 1.0 or params["sampler_name"] in NEEDS_NEGATIVE:
                    raise self.fail(
                        negative[0],
                        "a zeroed negative equals an empty one only at cfg 1 with a sampler "
                        "that does not use the negative",
                    )
                negative_text = ""
            elif negative_clip != clip:
                raise self.fail(
                    negative[0], "the negative prompt is encoded with another CLIP or LoRA strength than the positive"
                )
            params["negative_prompt"] = negative_text
        clip_lora, clip_files = clip if clip is not None else (None, "")
        lora_name = self.lora_strengths(params, model_lora, clip_lora)
        params.update(self.size(width, height), batch_size=batch)
        return ComfyImage(self.request(params), unet_name, lora_name, tuple(clip_files.split("|")), vae_name)

    def ksampler(self, node: str):
        params = {
            "seed": self.field("seed", node, self.value(node, "seed", int)),
            "steps": self.field("steps", node, self.value(node, "steps", int)),
            "cfg": self.field("cfg", node, self.value(node, "cfg", float)),
            "sampler_name": self.field("sampler_name", node, self.value(node, "sampler_name", str)),
            "scheduler": self.field("scheduler", node, self.value(node, "scheduler", str)),
        }
        denoise = self.value(node, "denoise", float)
        if denoise != 1.0:
            raise self.fail(node, f"denoise {denoise:g}: flux_vector makes images from noise (denoise 1) only")
        model = self.link(
            node,
            "model",
            allowed=("ModelSamplingFlux", "LoraLoader", "LoraLoaderModelOnly", "UNETLoader", "CheckpointLoaderSimple"),
        )
        conditioning = ("FluxGuidance", "CLIPTextEncode", "CLIPTextEncodeFlux", "ConditioningZeroOut")
        positive = self.link(node, "positive", allowed=conditioning)
        negative = self.link(node, "negative", allowed=conditioning)
        latent = self.link(node, "latent_image", allowed=("EmptySD3LatentImage",))
        return params, model, positive, negative, latent

    def custom_advanced(self, node: str):
        noise, _ = self.link(node, "noise", allowed=("RandomNoise",))
        guider, _ = self.link(node, "guider", allowed=("BasicGuider",))
        select, _ = self.link(node, "sampler", allowed=("KSamplerSelect",))
        scheduler, _ = self.link(node, "sigmas", allowed=("BasicScheduler",))
        latent = self.link(node, "latent_image", allowed=("EmptySD3LatentImage",))
        sampler_name = self.field("sampler_name", select, self.value(select, "sampler_name", str))
        if sampler_name in DISCARD_PENULTIMATE:
            raise self.fail(
                select,
                f"{sampler_name} with BasicScheduler samples another sigma list than a KSampler "
                "(which drops the next-to-last of steps+1 sigmas for it); no request gives that list",
            )
        if sampler_name in NEEDS_NEGATIVE:
            raise self.fail(select, f"{sampler_name} uses the negative prompt, which BasicGuider does not have")
        denoise = self.value(scheduler, "denoise", float)
        if denoise != 1.0:
            raise self.fail(scheduler, f"denoise {denoise:g}: flux_vector makes images from noise (denoise 1) only")
        params = {
            "seed": self.field("seed", noise, self.value(noise, "noise_seed", int)),
            "steps": self.field("steps", scheduler, self.value(scheduler, "steps", int)),
            "cfg": 1.0,
            "sampler_name": sampler_name,
            "scheduler": self.field("scheduler", scheduler, self.value(scheduler, "scheduler", str)),
        }
        model_kinds = ("ModelSamplingFlux", "LoraLoader", "LoraLoaderModelOnly", "UNETLoader", "CheckpointLoaderSimple")
        model = self.link(guider, "model", allowed=model_kinds)
        if self.model_chain(self.link(scheduler, "model", allowed=model_kinds)) != self.model_chain(model):
            raise self.fail(scheduler, "its model is not the guider's (another shift or LoRA)")
        conditioning = self.link(
            guider, "conditioning", allowed=("FluxGuidance", "CLIPTextEncode", "CLIPTextEncodeFlux")
        )
        return params, model, conditioning, None, latent

    def lora_strengths(self, params: dict[str, Any], model_lora: _Lora | None, clip_lora: _Lora | None) -> str | None:
        """lora_strength (the model side) and lora_strength_clip (the CLIP side); the one LoRA file's name."""
        if model_lora is not None and clip_lora is not None and model_lora.name != clip_lora.name:
            raise self.fail(
                clip_lora.node, f"a second LoRA ({clip_lora.name} beside {model_lora.name}): flux_vector applies one"
            )
        params["lora_strength"] = (
            self.field("lora_strength", model_lora.node, model_lora.strength) if model_lora else 0.0
        )
        params["lora_strength_clip"] = (
            self.field("lora_strength_clip", clip_lora.node, clip_lora.strength) if clip_lora else 0.0
        )
        lora = model_lora or clip_lora
        return lora.name if lora is not None else None

    @staticmethod
    def size(width: int, height: int) -> dict[str, Any]:
        """An aspect ratio when the size is one of the table's (the request's own form), else width and height."""
        for ratio, table_size in ASPECT_RATIOS.items():
            if table_size == (width, height):
                return {"aspect_ratio": ratio}
        return {"width": width, "height": height}

    def request(self, params: dict[str, Any]) -> GenerationRequest:
        try:
            return parse_request(params)
        except RequestError as exc:
            node = self.fields.get(exc.field) or self.fields.get("width", next(iter(self.graph)))
            raise self.fail(node, str(exc)) from None


def read_graph(graph: Mapping[str, Any]) -> ComfyImage:
    """The request a ComfyUI API-format graph makes and the files it names, or ``Unreproducible``."""
    return _Reader(graph).read()


def request_from(graph: Mapping[str, Any]) -> GenerationRequest:
    """The flux_vector request equivalent to a ComfyUI API-format graph, or ``Unreproducible`` (one line naming the
    node and why)."""
    return read_graph(graph).request
