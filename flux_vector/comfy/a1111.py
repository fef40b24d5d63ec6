"""The ``parameters`` text of AUTOMATIC1111 / Forge (and flux_vector's own) read back into request parameters.

The form: the prompt (one or more lines), an optional ``Negative prompt: ...`` (also multi-line), then one line of
``Key: value`` pairs (a value with commas is a JSON string). Forge's ``Distilled CFG Scale`` is FLUX's guidance. A1111
names samplers its own way ("Euler a", "DPM++ 2M") and puts LoRAs in the prompt (``<lora:name:strength>``, or
``<lora:name:te:unet>``); both are read. These parameters are the same parameters, not a promise of the same pixels:
A1111 and Forge draw their noise and run their samplers their own way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..request import ASPECT_RATIOS
from ..sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

# A1111 sampler labels -> ComfyUI names (flux_vector's); ComfyUI's own names are accepted as they are
SAMPLERS: dict[str, str] = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "LMS": "lms",
    "DPM fast": "dpm_fast",
    "DPM adaptive": "dpm_adaptive",
    "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DDPM": "ddpm",
    "LCM": "lcm",
    "DDIM": "ddim",
    "UniPC": "uni_pc",
    "DEIS": "deis",
    "iPNDM": "ipndm",
    "iPNDM_v": "ipndm_v",
}
SCHEDULERS: dict[str, str] = {
    "Simple": "simple",
    "Normal": "normal",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
    "DDIM": "ddim_uniform",
    "Beta": "beta",
    "Automatic": "simple",  # Forge's "Automatic" for FLUX is its simple schedule
}
# what an image made from an input image or upscaled says; such an image is not a text-to-image request
NOT_TEXT_TO_IMAGE = ("Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Variation seed")
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_LORA_TAG = re.compile(r"<lora:([^:>]+)((?::[^:>]*)*)>")


class ParametersRefused(ValueError):
    """A ``parameters`` text flux_vector cannot turn into a request (the reason names the key)."""


@dataclass(frozen=True)
class ParsedParameters:
    params: dict[str, Any]
    model: str | None  # the Model key, as written
    lora: str | None  # the LoRA's name (a <lora:...> tag's or the Lora key's)


def _pairs(line: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in _PAIR.findall(line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        found[key.strip()] = value
    return found


def _number(pairs: dict[str, str], key: str, kind: type) -> Any:
    try:
        return kind(pairs[key])
    except ValueError:
        raise ParametersRefused(f"parameters: {key}: {pairs[key]!r} is not a number") from None


def _sampler(label: str) -> tuple[str, str | None]:
    """(sampler, scheduler or None) of an A1111 sampler label ("DPM++ 2M Karras": an old label with its schedule)."""
    if label in SAMPLER_NAMES:
        return label, None
    if label in SAMPLERS:
        return SAMPLERS[label], None
    for schedule, name in SCHEDULERS.items():
        base = label.removesuffix(" " + schedule)
        if base != label and base in SAMPLERS:
            return SAMPLERS[base], name
    raise ParametersRefused(f"parameters: Sampler: {label!r} has no flux_vector equivalent")


def _loras(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """The prompt without its ``<lora:...>`` tags, and each tag's (name, unet strength, text-encoder strength)."""
    found = []
    for match in _LORA_TAG.finditer(prompt):
        name, rest = match.group(1), [p for p in match.group(2).split(":")[1:]]
        named = dict(p.split("=", 1) for p in rest if "=" in p)
        positional = [p for p in rest if "=" not in p]
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError:
            raise ParametersRefused(f"parameters: {match.group(0)}: a strength is not a number") from None
        found.append((name, unet, te))
    return _LORA_TAG.sub("", prompt).strip(), found


def parse_parameters(text: str) -> ParsedParameters:
    """Request parameters from a ``parameters`` text, or ``ParametersRefused``."""
    lines = text.strip("\n").split("\n")
    if len(lines) < 2 or "Steps: " not in lines[-1]:
        raise ParametersRefused("parameters: no 'Steps: ...' line (not an A1111/Forge parameters text)")
    pairs = _pairs(lines[-1])
    body = "\n".join(lines[:-1])
    prompt, _, negative = body.partition("\nNegative prompt: ")
    if body.startswith("Negative prompt: "):
        prompt, negative = "", body.removeprefix("Negative prompt: ")
    for key in NOT_TEXT_TO_IMAGE:
        if key in pairs:
            raise ParametersRefused(f"parameters: {key}: an image made from another image or upscaled, not a prompt")
    prompt, loras = _loras(prompt)
    negative, negative_loras = _loras(negative)
    names = {name for name, *_ in loras + negative_loras}
    if len(names) > 1:
        raise ParametersRefused(f"parameters: {len(names)} LoRAs ({', '.join(sorted(names))}): flux_vector applies one")
    params: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    if "Steps" in pairs:
        params["steps"] = _number(pairs, "Steps", int)
    if "Seed" in pairs:
        params["seed"] = _number(pairs, "Seed", int)
    if "CFG scale" in pairs:
        params["cfg"] = _number(pairs, "CFG scale", float)
    if "Distilled CFG Scale" in pairs:
        params["guidance"] = _number(pairs, "Distilled CFG Scale", float)
    if "Batch size" in pairs:
        params["batch_size"] = _number(pairs, "Batch size", int)
    if "Sampler" in pairs:
        params["sampler_name"], scheduler = _sampler(pairs["Sampler"])
        if scheduler is not None:
            params["scheduler"] = scheduler
    if "Schedule type" in pairs:
        label = pairs["Schedule type"]
        if label not in SCHEDULER_NAMES and label not in SCHEDULERS:
            raise ParametersRefused(f"parameters: Schedule type: {label!r} has no flux_vector equivalent")
        params["scheduler"] = SCHEDULERS.get(label, label)
    if "Size" in pairs:
        width, _, height = pairs["Size"].partition("x")
        try:
            size = (int(width), int(height))
        except ValueError:
            raise ParametersRefused(f"parameters: Size: {pairs['Size']!r} is not WIDTHxHEIGHT") from None
        ratio = next((r for r, s in ASPECT_RATIOS.items() if s == size), None)
        params.update({"aspect_ratio": ratio} if ratio else {"width": size[0], "height": size[1]})
    lora = None
    if loras:
        lora, params["lora_strength"], params["lora_strength_clip"] = loras[0]
    elif pairs.get("Lora"):  # flux_vector's own keys
        lora = pairs["Lora"]
        if "Lora strength" in pairs:
            params["lora_strength"] = _number(pairs, "Lora strength", float)
        if "Lora strength clip" in pairs:
            params["lora_strength_clip"] = _number(pairs, "Lora strength clip", float)
    else:
        params["lora_strength"] = 0.0
    return ParsedParameters(params, pairs.get("Model") or None, lora)
