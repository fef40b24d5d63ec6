"""The one parameter contract: every field of the hosted Simple_Vector_Flux API plus the local extensions.

The pipeline, the CLI, the in-process facade and the HTTP server all validate through ``GenerationRequest``;
nothing else re-validates. Types are strict (``true`` is not a step count, ``"1.5"`` is not a seed) and every
error names the field, the value given and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .output_formats import DEFAULT_OUTPUT_FORMAT, OutputFormat
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES

# comfyui-art-venture's "SDXL Aspect Ratio" node (docs/COMFY_SAMPLING.md section 8): what the hosted API uses.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1216),
    "3:4": (896, 1152),
    "5:8": (768, 1216),
    "9:16": (768, 1344),
    "9:19": (704, 1472),
    "9:21": (640, 1536),
    "3:2": (1216, 832),
    "4:3": (1152, 896),
    "8:5": (1216, 768),
    "16:9": (1344, 768),
    "19:9": (1472, 704),
    "21:9": (1536, 640),
}
EXAMPLE_PROMPT = (
    "v3ct0r style, simple vector art, salesman giving a thumbs up in front of a car, character asset, clip art"
)
SLUG = "Simple_Vector_Flux"

AspectRatio = Literal["1:1", "2:3", "3:4", "5:8", "9:16", "9:19", "9:21", "3:2", "4:3", "8:5", "16:9", "19:9", "21:9"]
SamplerName = Literal[SAMPLER_NAMES]  # type: ignore[valid-type]
SchedulerName = Literal[SCHEDULER_NAMES]  # type: ignore[valid-type]
Detail = Literal["low", "medium", "high"]
assert list(get_args(AspectRatio)) == list(ASPECT_RATIOS)

HOSTED_FIELDS = ("prompt", "aspect_ratio", "lora_strength", "sampler_name", "scheduler", "seed", "steps")
# The fields that are image_to_svg's options (flux_vector/vectorize.py); they apply to output_format "svg" only.
VECTOR_OPTIONS = ("detail", "transparent_background")


QUOTE_CHARS = 200  # the most of a bad value an error message (and an error body's ``value``) quotes


def shorten(value: Any, limit: int = QUOTE_CHARS) -> Any:
    """``value`` as an error may quote it: a string (or a list/dict's repr) over ``limit`` characters is cut to
    ``limit`` and says how long it was."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}... ({len(value):,} characters)"
    if isinstance(value, list | dict | tuple):
        text = repr(value)
        return value if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
    return value


class RequestError(ValueError):
    """An invalid parameter: ``field``, the ``value`` given and a description of what is ``allowed``. The message
    quotes at most ``QUOTE_CHARS`` characters of the value."""

    def __init__(self, field: str, value: Any, allowed: str, problem: str | None = None):
        self.field, self.value, self.allowed = field, value, allowed
        head = f"{field} is missing" if value is _MISSING else f"{field}={shorten(value)!r} is not allowed"
        super().__init__(f"{head}{': ' + problem if problem else ''}; {field} must be {allowed}")


_MISSING = object()


class GenerationRequest(BaseModel):
    """One image request. Defaults reproduce the hosted API; extensions default to its behaviour."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    prompt: str = Field(
        min_length=1, max_length=4000, description="Text prompt (required, non-empty).", examples=[EXAMPLE_PROMPT]
    )
    aspect_ratio: AspectRatio = Field("2:3", description="Aspect ratio; maps to the 13-entry SDXL size table.")
    lora_strength: float = Field(1.0, ge=-10, le=10, description="Strength of the Simple Vector LoRA.")
    lora_strength_clip: float | None = Field(
        None,
        ge=-10,
        le=10,
        description="Strength of the LoRA's text-encoder layers (ComfyUI LoraLoader's strength_clip; 0: the LoRA on "
        "the transformer only, as LoraLoaderModelOnly); null: lora_strength.",
    )
    sampler_name: SamplerName = Field("euler", description="ComfyUI sampler name.")
    scheduler: SchedulerName = Field("simple", description="ComfyUI scheduler name.")
    seed: int = Field(6652105, ge=0, le=2**64 - 1, description="Seed of the initial and sampler noise.")
    steps: int = Field(20, ge=1, le=100, description="Number of sampling steps.")
    # Local extensions.
    guidance: float = Field(3.5, ge=0, le=100, description="Flux distilled guidance (FluxGuidance).")
    negative_prompt: str = Field("", max_length=4000, description="Used when cfg != 1 and by the *_pp samplers.")
    cfg: float = Field(1.0, ge=0, le=100, description="Classifier-free guidance scale; 1 skips the uncond pass.")
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16, description="Overrides the ratio (with height).")
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16, description="Overrides the ratio (with width).")
    batch_size: int = Field(1, ge=1, le=8, description="Images per request, one noise draw for the batch.")
    output_format: OutputFormat = Field(
        DEFAULT_OUTPUT_FORMAT, description="Encoding of the returned image; svg: traced vector art."
    )
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality.")
    base64: bool = Field(False, description="Return the image inline as base64.")
    detail: Detail = Field("medium", description="SVG only: how small a shape or colour the tracing keeps.")
    transparent_background: bool = Field(
        False, description="SVG only: leave out the background (the border colour's regions touching the border)."
    )

    @model_validator(mode="after")
    def _check(self) -> GenerationRequest:
        for name in ("lora_strength", "lora_strength_clip", "guidance", "cfg"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
        if self.lora_strength_clip == self.lora_strength:  # one form per image: null means "the same"
            object.__setattr__(self, "lora_strength_clip", None)
        if not self.prompt.replace("\x00", "").strip():
            raise ValueError("prompt must not be blank (only spaces or NUL characters)")
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        if self.output_format != "svg":
            for name in VECTOR_OPTIONS:
                if getattr(self, name) != GenerationRequest.model_fields[name].default:
                    raise ValueError(
                        f"{name} applies to output_format 'svg' only (output_format is {self.output_format!r})"
                    )
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        return ASPECT_RATIOS[self.aspect_ratio]

    @property
    def text_lora_strength(self) -> float:
        """The strength of the LoRA's text-encoder layers: ``lora_strength_clip``, else ``lora_strength``."""
        return self.lora_strength if self.lora_strength_clip is None else self.lora_strength_clip

    def vector_options(self) -> dict[str, Any]:
        """The ``image_to_svg`` options of this request."""
        return {name: getattr(self, name) for name in VECTOR_OPTIONS}

    def echo(self) -> dict[str, Any]:
        """The parameters as the final result dict echoes them, defaults filled in."""
        return self.model_dump()


class ModelCannot(ValueError):
    """A request the contract allows but the loaded model cannot serve (a lora_strength with no LoRA loaded)."""


class Prepared(NamedTuple):
    """What ``prepare(request)`` made of a request on a loaded pipeline: the request as it will be drawn (the LoRA
    strength rules applied) and the seconds switching the LoRA to its strength took (None: no switch)."""

    request: GenerationRequest
    lora_switch_s: float | None = None


def stored_params(request: GenerationRequest) -> dict[str, Any]:
    """The request as a store keeps it: JSON-ready, only the fields the caller set (so that the rules that tell a
    default from an explicit value, ``lora_strength`` without a LoRA, still can after the round trip)."""
    return request.model_dump(mode="json", exclude_unset=True)


def from_stored(params: dict[str, Any]) -> GenerationRequest:
    """``stored_params`` read back (by a store): the same request, the same fields set. A stored request that no
    longer validates (a store written by another version) is a ``RequestError`` naming the field."""
    try:
        return GenerationRequest.model_validate(params)
    except ValidationError as exc:
        raise _error_from(exc, params) from None


def allowed(field: str) -> str:
    """What a field accepts, read from the model so that it never disagrees with the validation."""
    info = GenerationRequest.model_fields[field]
    annotation = info.annotation
    choices = get_args(annotation) if getattr(annotation, "__origin__", None) is Literal else ()
    if choices:
        return "one of " + ", ".join(repr(c) for c in choices)
    bounds = {type(m).__name__: m for m in info.metadata}
    base = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    kind = next((text for t, text in base.items() if t in (annotation, *get_args(annotation))), "a value")
    if "MinLen" in bounds:
        kind += " (non-empty)"
    lo, hi = getattr(bounds.get("Ge"), "ge", None), getattr(bounds.get("Le"), "le", None)
    text = f"{kind} from {lo} to {hi}" if lo is not None and hi is not None else kind
    if "MultipleOf" in bounds:
        text += f", a multiple of {bounds['MultipleOf'].multiple_of}"
    if field in ("width", "height"):
        text += "; width and height together"
    return text


def _error_from(exc: ValidationError, params: dict[str, Any]) -> RequestError:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    field = loc[0] if loc else ""
    if not field:  # a model-level check: the message names the field
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        field = msg.split(" ", 1)[0]
        return RequestError(field, params.get(field, _MISSING), allowed(field) if field in FIELDS else msg, msg)
    if err.get("type") == "extra_forbidden":
        return RequestError(field, params.get(field), "one of the parameters " + ", ".join(FIELDS), "unknown parameter")
    if err.get("type") == "missing":
        return RequestError(field, _MISSING, allowed(field), "it is required")
    return RequestError(field, params.get(field, err.get("input")), allowed(field))


FIELDS: tuple[str, ...] = tuple(GenerationRequest.model_fields)


def parse_request(params: Any) -> GenerationRequest:
    """Validate a parameter dict (JSON body, keyword arguments) into a request, or raise ``RequestError``."""
    if not isinstance(params, dict):
        raise RequestError("body", type(params).__name__, "a JSON object of parameters", "not an object")
    for key in params:
        if not isinstance(key, str):
            raise RequestError(str(key), key, "one of the parameters " + ", ".join(FIELDS), "unknown parameter")
    try:
        return GenerationRequest(**params)
    except ValidationError as exc:
        raise _error_from(exc, params) from None


# image_to_svg's options, validated by the same field definitions (types, defaults, messages) as a request's.
_VectorOptions = create_model(  # type: ignore[call-overload]
    "VectorOptions",
    __config__=ConfigDict(strict=True, extra="forbid", frozen=True),
    **{
        name: (GenerationRequest.model_fields[name].annotation, GenerationRequest.model_fields[name])
        for name in VECTOR_OPTIONS
    },
)


def parse_vector_options(options: dict[str, Any]) -> dict[str, Any]:
    """``image_to_svg``'s keyword options with defaults filled in, or ``RequestError`` naming the bad one."""
    for key in options:
        if key not in VECTOR_OPTIONS:
            raise RequestError(
                str(key), options[key], "one of the options " + ", ".join(VECTOR_OPTIONS), "unknown option"
            )
    try:
        return _VectorOptions(**options).model_dump()
    except ValidationError as exc:
        raise _error_from(exc, options) from None


# ------------------------------------------------------------------------------------------- server settings
BYTES_PER_IMAGE_PIXEL = 1024  # device memory a pixel of one image may claim (transformer, one-image VAE decode)
MIN_IMAGE_PIXELS, MAX_IMAGE_PIXELS = 1024 * 1024, 4096 * 4096

# The work of a request, in token-calls (what the transformer is run over):
#
#     work = batch_size x steps x sampler calls per step x sum over the conditionings evaluated of
#            (image tokens + text tokens)
#
# image tokens = (width / 16) x (height / 16)  (the VAE's 8x downscale, then Flux's 2x2 patches);
# text tokens  = the T5 sequence: the prompt's T5 tokens + 1 end token, padded to at least 256 (prompt/tokens.py);
# sampler calls per step: 1, 2 (heun, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde), 3 (heunpp2,
#   dpm_adaptive), read from the sampler registry (``SamplerSpec.model_calls``);
# conditionings: the prompt, plus the negative prompt when cfg != 1 or the sampler evaluates it anyway (cfg_pp).
IMAGE_TOKEN_PIXELS = 16 * 16
T5_MIN_TOKENS = 256  # the padded T5 length (prompt/tokens.T5_MIN_LENGTH; a test keeps the two equal)
# The largest prompt accepted, in T5 tokens (``--max-prompt-tokens``). English reads 3.75-4.0 characters a T5
# token (measured on the golden prompts of tests/data/comfy_e2e), so the contract's 4000 characters of real text are
# at most ~1070 tokens; 1536 leaves half as much again for number- and punctuation-heavy prompts. The 4 KB prompts
# that are not text ("a " * 2000, "(" * 4000: 4000 tokens; "\ufdfa" * 4000: 24002 after NFKC) are over it.
DEFAULT_MAX_PROMPT_TOKENS = 1536
# The default work limit: a batch of 8 hosted-size images (1024x1024: 4096 image tokens) with a 512-token prompt,
# 100 steps, one call a step: the most the hosted API's parameters ask for at cfg 1 with a one-call sampler.
DEFAULT_MAX_WORK = 100 * 8 * (1024 * 1024 // IMAGE_TOKEN_PIXELS + 512)


class OverBudget(ValueError):
    """A valid request that is more work than this server accepts: the ``fields`` involved and the ``limit``."""

    def __init__(
        self,
        fields: tuple[str, ...],
        amount: int,
        limit: int,
        what: str,
        setting: str,
        hint: str = "ask for fewer pixels, images or steps",
    ):
        self.fields, self.amount, self.limit, self.setting = fields, amount, limit, setting
        flag = "--" + setting.replace("_", "-")
        super().__init__(
            f"{' x '.join(fields)} = {amount:,} {what} is over this server's limit of {limit:,} ({setting}); {hint} "
            f"(the limit is flux-vector serve {flag})"
        )


@dataclass(frozen=True)
class TextTokens:
    """The T5 tokens of a request's prompt and negative prompt (before the end token and the padding), counted with
    the model's own tokenizer (``prompt.count``); ``negative`` is None when the request never evaluates it."""

    prompt: int
    negative: int | None = None


def image_tokens(width: int, height: int) -> int:
    return (width * height) // IMAGE_TOKEN_PIXELS


def t5_sequence_length(tokens: int) -> int:
    """The length of the T5 sequence the model sees for a prompt of ``tokens`` tokens."""
    return max(T5_MIN_TOKENS, tokens + 1)


def uses_negative(request: GenerationRequest) -> bool:
    """Whether sampling evaluates the negative prompt: cfg != 1 (after a ``*_pp`` name's doubling) or a sampler that
    always needs the uncond prediction."""
    from .sampling.sample import resolve_sampler

    spec, cfg = resolve_sampler(request.sampler_name, request.cfg)
    return spec.needs_uncond or not math.isclose(cfg, 1.0)


def sampler_model_calls(request: GenerationRequest) -> int:
    """Denoiser calls per step of the request's sampler, from the sampler registry."""
    from .sampling.sample import resolve_sampler

    return resolve_sampler(request.sampler_name, request.cfg)[0].model_calls


def work_of(request: GenerationRequest, text: TextTokens | None = None) -> int:
    """The request's work in token-calls (the formula above). Without ``text`` every prompt counts as the padded
    minimum (256 tokens)."""
    width, height = request.size
    image = image_tokens(width, height)
    per_call = image + t5_sequence_length(text.prompt if text else 0)
    if uses_negative(request):
        negative = text.negative if text is not None and text.negative is not None else 0
        per_call += image + t5_sequence_length(negative)
    return request.batch_size * request.steps * sampler_model_calls(request) * per_call


@dataclass(frozen=True)
class WorkBudget:
    """How much work one request may ask for (``flux-vector serve --max-image-pixels/--max-batch-pixels/
    --max-work/--max-prompt-tokens``); defaults from the device's memory (``for_memory``)."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_batch_pixels: int = 2 * MAX_IMAGE_PIXELS
    max_work: int = DEFAULT_MAX_WORK
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    @classmethod
    def for_memory(cls, memory_bytes: int) -> WorkBudget:
        """Per image: 1 KiB of device memory per pixel, between 1024x1024 and 4096x4096 (the VAE decodes one image
        at a time, tiled above ``pipeline.TILED_DECODE_PIXELS``); a batch: twice that; work: ``DEFAULT_MAX_WORK``."""
        image = max(MIN_IMAGE_PIXELS, min(MAX_IMAGE_PIXELS, memory_bytes // BYTES_PER_IMAGE_PIXEL))
        return cls(max_image_pixels=image, max_batch_pixels=2 * image)

    def check_text(self, text: TextTokens) -> None:
        """Raise ``OverBudget`` naming ``prompt`` or ``negative_prompt`` when it has more T5 tokens than allowed."""
        for field, count in (("prompt", text.prompt), ("negative_prompt", text.negative)):
            if count is not None and count > self.max_prompt_tokens:
                raise OverBudget(
                    (field,), count, self.max_prompt_tokens, "T5 tokens", "max_prompt_tokens", f"shorten the {field}"
                )

    def check(self, request: GenerationRequest, text: TextTokens | None = None) -> None:
        """Raise ``OverBudget`` naming the fields and the limit the request exceeds. ``text``: the counted prompt
        tokens (checked against ``max_prompt_tokens`` and priced in the work); None prices every prompt at the
        padded minimum."""
        if text is not None:
            self.check_text(text)
        width, height = request.size
        size_fields = ("width", "height") if request.width is not None else ("aspect_ratio",)
        image = width * height
        if image > self.max_image_pixels:
            raise OverBudget(size_fields, image, self.max_image_pixels, "pixels per image", "max_image_pixels")
        batch = image * request.batch_size
        if batch > self.max_batch_pixels:
            raise OverBudget(
                (*size_fields, "batch_size"), batch, self.max_batch_pixels, "pixels per batch", "max_batch_pixels"
            )
        work = work_of(request, text)
        if work > self.max_work:
            fields = (*size_fields, "batch_size", "steps")
            if sampler_model_calls(request) > 1:
                fields += ("sampler_name",)
            if uses_negative(request):
                fields += ("cfg",)
            if text is not None and text.prompt >= T5_MIN_TOKENS:
                fields += ("prompt",)
            if text is not None and (text.negative or 0) >= T5_MIN_TOKENS:
                fields += ("negative_prompt",)
            raise OverBudget(
                fields,
                work,
                self.max_work,
                "token-calls (image + text tokens x model calls x steps x batch)",
                "max_work",
                "ask for fewer pixels, images, steps or prompt tokens, cfg 1 or a one-call sampler",
            )
