"""The ``flux-vector`` argument parser: the request flags read from the contract, the options model-loading commands
share as parent parsers, and every default imported from the module that defines it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..jobs.store import DEFAULT_RETENTION_S
from ..request import FIELDS, GenerationRequest, allowed

DESCRIPTION = "FLUX.1-dev + the Simple Vector LoRA locally, as Segmind's Simple_Vector_Flux API."
# request fields generate takes as flags (prompt is required; output_format comes from --out's suffix)
# output_format comes from --out's suffix; quality applies to .jpg/.webp (ignored for .png/.svg, as in the API)
GENERATE_FIELDS = tuple(f for f in FIELDS if f not in ("prompt", "output_format", "base64"))
# the request defaults batch takes as flags (a row gives its prompt; files are written, never base64)
BATCH_FIELDS = tuple(f for f in FIELDS if f not in ("prompt", "base64"))


# ----------------------------------------------------------------------------------------------- parsers


def _model_options(*, falls_back_to_demo: bool) -> argparse.ArgumentParser:
    """--model/--lora/--quantize/--quantize-text/--text-device/--offload/--device: what every command that loads the
    model takes.
    ``falls_back_to_demo``: without --model and $FLUX_VECTOR_MODEL, a missing FLUX.1-dev means the shipped demo model
    (generate, serve, worker: they say so on the console, the banner and the playground)."""
    from ..memory_tiers import AUTO, QUANTIZE_OPTIONS
    from ..models import DEFAULT_LORA, DEMO_MODEL, MODEL_ENV, builtin_lora_name
    from ..offload import DEFAULT_OFFLOAD, OFFLOAD_MODES
    from ..quantize import QUANTIZE_CHOICES

    otherwise = "else FLUX.1-dev if downloaded, else demo" if falls_back_to_demo else "else FLUX.1-dev"
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="demo (the shipped toy: simple shapes at 128 px) | tiny (random weights: noise) | a diffusers folder | "
        f"a hub id in the local cache | a BFL .safetensors, bf16 or fp8, ComfyUI's all-in-one checkpoint, or a GGUF "
        f".gguf (a bare file name is looked up in --comfyui-models) (default: ${MODEL_ENV}, {otherwise})",
    )
    _single_file_options(g)
    g.add_argument(
        "--lora",
        help=f"LoRA file or hub id, or 'none' (default: the model's: {DEFAULT_LORA}, Simple Vector, for FLUX.1-dev "
        f"and other models; {builtin_lora_name(DEMO_MODEL)}, the demo's outline LoRA, for demo; its own for tiny)",
    )
    g.add_argument(
        "--quantize",
        default=AUTO,
        choices=QUANTIZE_OPTIONS,
        help=f"the transformer's weights: {' | '.join(QUANTIZE_OPTIONS)} (default: auto: the fastest tier that fits "
        "the GPU's free memory, with --offload; none on the CPU; `flux-vector doctor` shows the pick)",
    )
    g.add_argument(
        "--quantize-text",
        choices=QUANTIZE_CHOICES,
        help="the T5 text encoder's weights, the same tiers; its wo layers stay in bf16 (default: none)",
    )
    g.add_argument(
        "--text-device",
        help="where the text encoders stay and run, e.g. cpu: only the prompt embeddings move to --device "
        "(default: --device)",
    )
    g.add_argument(
        "--offload",
        default=DEFAULT_OFFLOAD,
        choices=OFFLOAD_MODES,
        help="move weights between GPU and CPU to save VRAM (default: auto, chosen from free VRAM; "
        "`flux-vector doctor` shows the choice)",
    )
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    return p


def _single_file_options(g) -> None:
    """The files a single-file --model loads with (``single_file/``): ComfyUI's, or a diffusers folder's."""
    g.add_argument(
        "--comfyui-models",
        metavar="DIR",
        help="ComfyUI's models/ folder: a bare --model file name is looked up in its diffusion_models/, unet/ and "
        "checkpoints/, the text encoders in text_encoders/ or clip/ (clip_l*, t5*: fp16 preferred over fp8), "
        "the VAE in vae/ (ae.safetensors) (default: none)",
    )
    found = "(default: the model file's own, else found in --comfyui-models, else --base's)"
    g.add_argument("--clip-l", metavar="FILE", help=f"with a single-file --model: the CLIP-L file {found}")
    g.add_argument("--t5", metavar="FILE", help=f"with a single-file --model: the T5-XXL file, fp16 or fp8 {found}")
    g.add_argument("--vae", metavar="FILE", help=f"with a single-file --model: the VAE file (ae.safetensors) {found}")
    g.add_argument(
        "--base",
        metavar="MODEL",
        help="with a single-file --model: a diffusers folder or cached hub id giving the configs, tokenizers and "
        "the components no file gives (default: FLUX.1-dev's configs shipped with flux_vector when the files give "
        "every component, else FLUX.1-dev from the local Hugging Face cache)",
    )


def _output_options() -> argparse.ArgumentParser:
    """--verbose/--debug: what every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--verbose", action="store_true", help="show the libraries' own warnings and progress bars (default: hidden)"
    )
    g.add_argument("--debug", action="store_true", help="a full traceback on any error (default: one line)")
    return p


def _serving_options() -> argparse.ArgumentParser:
    """--no-fuse/--no-warmup/--warmup-size: how a long-running process prepares its pipeline
    (``serving.prepare_for_serving``)."""
    from ..serving import parse_size

    def size(text: str) -> tuple[int, int]:
        try:
            return parse_size(text)
        except ValueError as exc:  # argparse prints an ArgumentTypeError's own text
            raise argparse.ArgumentTypeError(str(exc)) from None

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("serving")
    g.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep the LoRA as a runtime adapter instead of fusing it (default: fused)",
    )
    g.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up (default: a 1-step generation at each size served: the default size and --warmup-size)",
    )
    g.add_argument(
        "--warmup-size",
        action="append",
        type=size,
        metavar="WxH",
        help="also warm up at this size, WIDTHxHEIGHT or an aspect ratio such as 16:9 (repeatable): the sizes "
        "clients ask for; with --fast each size compiles once, at start, not on its first job (default: none, only the "
        "default size)",
    )
    return p


def _request_flag(p, field: str, **kwargs: Any) -> None:
    """``--field-name`` for a contract field: help and default read from the contract (argparse's default stays
    None, so a flag left out is left out of the request)."""
    info = GenerationRequest.model_fields[field]
    default = " (default: not set)" if info.default is None else f" (default: {info.default!r})"
    kwargs.setdefault("help", f"{info.description} Allowed: {allowed(field)}{default}.")
    p.add_argument("--" + field.replace("_", "-"), **kwargs)


def _add_generate(sub, parents) -> None:
    p = sub.add_parser(
        "generate",
        parents=parents,
        help="generate an image",
        description="Generate one image (or a batch) with the hosted API's parameters.",
    )
    p.add_argument("--prompt", help=allowed("prompt") + " (default: --like's, else required)")
    p.add_argument(
        "--like",
        type=Path,
        metavar="IMAGE",
        help="start from the parameters, model and LoRA recorded in an image flux_vector made, a ComfyUI PNG (its "
        "graph) or an A1111/Forge image (its parameters text); `flux-vector info` shows them; the other flags "
        "override them (default: none)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output image: .png, .jpg, .webp, or .svg (the image traced to vector shapes)",
    )
    _request_flags(
        p.add_argument_group("request (the hosted API's parameters and the local extensions)"), GENERATE_FIELDS
    )
    _fast_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no sampling progress bar (default: shown)")


def _request_flags(group, fields: tuple[str, ...]) -> None:
    """A flag per contract field, typed as the field is."""
    for field in fields:
        annotation = GenerationRequest.model_fields[field].annotation
        if field == "transparent_background":
            _request_flag(group, field, action="store_true", default=None)
        elif field == "sampler_name":
            _request_flag(group, field, metavar="NAME")
        elif annotation in (int, int | None):
            _request_flag(group, field, type=int)
        elif annotation in (float, float | None):
            _request_flag(group, field, type=float)
        else:
            _request_flag(group, field)


def _fast_flag(p) -> None:
    p.add_argument(
        "--fast",
        action="store_true",
        help="fast mode: fused QKV, best attention backend, regional torch.compile (cached on disk), fp8 "
        "on Ada/Hopper with torchao; the first run at a size compiles (default: off)",
    )


def _add_batch(sub, parents) -> None:
    from ..batching import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID_SKIPPED, MANIFEST

    p = sub.add_parser(
        "batch",
        parents=parents,
        help="generate the images of many requests from a file, resumably",
        description="Generate every request of REQUESTS into --out, the model loaded once, same-size requests "
        "together. REQUESTS: .jsonl (one request object per line, any parameter), .csv (a header of parameter "
        f"names) or .txt (one prompt per line). The request options below are defaults a row overrides. {MANIFEST} "
        "in --out records each finished request; the same command again skips those (resume after Ctrl-C or a "
        "crash). Exit status: 0 all done; "
        f"{EXIT_INVALID_SKIPPED} invalid rows were skipped; {EXIT_FAILED} a request failed (recorded, the rest "
        f"ran); {EXIT_INTERRUPTED} stopped by Ctrl-C; 2 nothing ran (bad file, or --strict with invalid rows).",
    )
    p.add_argument("requests", type=Path, metavar="REQUESTS", help="a .jsonl, .csv or .txt file of requests")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; holds the images and manifest)")
    g = p.add_argument_group("batch")
    g.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="each row N times, seeds seed, seed+1, ... (default: 1)"
    )
    g.add_argument(
        "--seeds",
        metavar="A..B",
        help="each row once per seed A..B inclusive, replacing its seed (default: each row once, its own seed)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="any invalid row stops the batch before any work (default: invalid rows are reported and skipped)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help=f"redo every request, starting a new {MANIFEST} (default: skip what the manifest says is done)",
    )
    _request_flags(p.add_argument_group("request defaults (a row's own fields win)"), BATCH_FIELDS)
    _fast_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar, one line per image (default: shown)")


def _add_vectorize(sub, parents) -> None:
    p = sub.add_parser(
        "vectorize",
        parents=parents,
        help="trace an existing image to SVG",
        description="Trace an image (PNG, JPEG, WebP...) to an SVG of flat shapes, as output_format "
        "svg does for generated images.",
    )
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, WebP...)")
    p.add_argument("--out", required=True, type=Path, help="output .svg")
    _request_flag(p, "detail")
    _request_flag(p, "transparent_background", action="store_true", default=None)


def _add_serve(sub, parents) -> None:
    from ..server.serve import DEFAULT_LOG_LEVEL, default_store_path
    from ..serving import API_KEY_ENV, DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT

    p = sub.add_parser(
        "serve",
        parents=parents,
        help="serve the Segmind-compatible HTTP API",
        description="Serve POST /v1/Simple_Vector_Flux, the /v2 queue, the playground at /, /healthz, /metrics and "
        "/docs. Point the segmind SDK at it with SegmindClient(base_url='http://HOST:PORT/v1'). Set "
        f"{API_KEY_ENV} to require x-api-key, or give each user a key with --api-keys FILE.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST} (loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--store",
        help=f"job store: a SQLite file (default: {default_store_path()}), or "
        "redis://HOST:PORT/DB for an API-only process whose jobs run on flux-vector worker processes",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"jobs waiting before submits get 429 (default {DEFAULT_MAX_QUEUE})",
    )
    p.add_argument(
        "--max-queue-per-user",
        type=int,
        metavar="N",
        help="jobs one user may have waiting before its submits get 429 with Retry-After (default: no cap; the "
        "worker takes the users' jobs in turns whatever each queued)",
    )
    p.add_argument(
        "--api-keys",
        metavar="FILE",
        help="one 'NAME KEY' pair a line (# comments): each user's key; a job is seen and cancelled only by its "
        f"user. Refused if readable by all (chmod 600). {API_KEY_ENV} adds the user 'default'",
    )
    p.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without a key (default: a key, in x-api-key or Authorization: Bearer)",
    )
    p.add_argument(
        "--retention",
        type=float,
        default=DEFAULT_RETENTION_S,
        metavar="SECONDS",
        help=f"how long finished results and images are kept (default {DEFAULT_RETENTION_S:g})",
    )
    p.add_argument(
        "--log-level",
        default=DEFAULT_LOG_LEVEL,
        choices=["critical", "error", "warning", "info", "debug"],
        help=f"default {DEFAULT_LOG_LEVEL}",
    )
    p.add_argument(
        "--public-url",
        default="",
        metavar="URL",
        help="the URL clients reach this server by (behind a proxy or a DNS name): its host is accepted in Host "
        "and it is the base of status_url and image URLs (default: none; URLs use the request's own host)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) whose pages may call this API from a browser; repeatable "
        "(default: none, so pages of other origins get 403)",
    )
    from ..request import DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_WORK

    for flag, what in (
        ("--max-image-pixels", "pixels of one image (default: 1 KiB of device memory per pixel, 1024^2..4096^2)"),
        ("--max-batch-pixels", "pixels x batch_size (default: twice the image limit)"),
        (
            "--max-work",
            "token-calls: (image tokens + T5 tokens) per model call x calls per step (cfg != 1, two-call samplers) "
            f"x steps x batch_size (default {DEFAULT_MAX_WORK:,}: 100 steps of 8 one-megapixel images, 512-token "
            "prompt)",
        ),
        (
            "--max-prompt-tokens",
            f"T5 tokens of prompt or negative_prompt (default {DEFAULT_MAX_PROMPT_TOKENS}: 4000 characters of "
            "English are ~1070)",
        ),
    ):
        p.add_argument(flag, type=int, metavar="N", help=f"work budget of a request: {what}; over it: 400")
    _add_redis_eviction(p)


def _add_redis_eviction(p) -> None:
    from ..jobs.redis_store import EVICTION_OVERRIDE

    p.add_argument(
        EVICTION_OVERRIDE,
        action="store_true",
        help="with a Redis store: start even when Redis's maxmemory-policy is not noeviction (an evicting Redis "
        "loses accepted jobs and images without a word; default: refused)",
    )


def _add_worker(sub, parents) -> None:
    from ..jobs.redis_store import DEFAULT_LEASE_S, DEFAULT_REDIS_MAX_ATTEMPTS
    from ..jobs.worker_process import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT

    p = sub.add_parser(
        "worker",
        parents=parents,
        help="run one GPU worker on a Redis job store",
        description="Run jobs queued by flux-vector serve --store redis://... API processes: one worker per GPU, on "
        "any machine that reaches Redis. Loads the model once, fuses the LoRA once, warms up, then runs jobs until "
        "SIGTERM (the running job goes back to the queue). A worker killed mid-job has its job re-run by another "
        "after --lease seconds, at most --max-attempts runs in all.",
    )
    p.add_argument("--store", required=True, help="redis://HOST:PORT/DB (the same as the API processes')")
    p.add_argument("--name", help="this worker's name in Redis and the logs (default: HOST-PID-xxxx)")
    p.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="SECONDS",
        help="a job whose worker stops renewing it for this long runs again elsewhere; give every worker "
        f"the same value (default {DEFAULT_LEASE_S:g})",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_REDIS_MAX_ATTEMPTS,
        help=f"runs of a job whose workers keep dying before it is FAILED (default {DEFAULT_REDIS_MAX_ATTEMPTS})",
    )
    p.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        help=f"address of /metrics and /healthz (default {DEFAULT_METRICS_HOST})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"port of /metrics and /healthz (default {DEFAULT_METRICS_PORT}; 0: any free port, logged; -1: none)",
    )
    _add_redis_eviction(p)


def _add_doctor(sub, parents) -> None:
    sub.add_parser(
        "doctor",
        parents=parents,
        help="check this machine before a real run",
        description="Report torch and CUDA, the GPU and its free memory, the offload/quantization --offload auto "
        "would choose for FLUX.1-dev here, whether FLUX.1-dev and the LoRA are downloaded (and the hf download "
        "commands if not), bitsandbytes/torchao, and the job store's free space. Downloads and loads nothing.",
    )


def _add_info(sub, parents) -> None:
    p = sub.add_parser(
        "info",
        parents=parents,
        help="show how an image was made",
        description="Print the parameters, model and LoRA recorded in an image flux_vector wrote (PNG, JPEG, WebP, "
        "SVG), a ComfyUI PNG (read from its graph) or an A1111/Forge image (its parameters text); "
        "`flux-vector generate --like IMAGE` makes it again.",
    )
    p.add_argument("image", type=Path, help="an image flux_vector, ComfyUI or A1111/Forge wrote")
    p.add_argument("--json", action="store_true", help="print the record as JSON (default: readable text)")


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="flux-vector", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"flux-vector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    output, serving = _output_options(), _serving_options()
    falling_back = _model_options(falls_back_to_demo=True)
    _add_generate(sub, [output, falling_back])
    _add_batch(sub, [output, falling_back])
    _add_serve(sub, [output, falling_back, serving])
    _add_worker(sub, [output, falling_back, serving])
    _add_vectorize(sub, [output])
    _add_info(sub, [output])
    _add_doctor(sub, [output])
    return parser
