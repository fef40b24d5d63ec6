"""``flux-vector`` command line: ``generate`` one image with the hosted API's parameters, or ``serve`` the API."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .jobs.store import StoreLocked
from .request import ASPECT_RATIOS, RequestError, allowed, parse_request
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES


def default_model(log=print) -> str:
    """$FLUX_VECTOR_MODEL, else FLUX.1-dev when it is in the local Hugging Face cache, else the tiny demo."""
    from .pipeline import DEFAULT_MODEL, WeightsNotFound, resolve_model

    if os.environ.get("FLUX_VECTOR_MODEL"):
        return os.environ["FLUX_VECTOR_MODEL"]
    try:
        resolve_model(DEFAULT_MODEL)
        return DEFAULT_MODEL
    except WeightsNotFound:
        log(f"no real weights configured ({DEFAULT_MODEL} is not in the local Hugging Face cache and "
            "$FLUX_VECTOR_MODEL is unset): using the tiny built-in random-weight checkpoint")  # fmt: skip
        return "tiny"


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate an image", description="Generate one image (or a batch).")
    p.add_argument("--prompt", required=True, help=allowed("prompt"))
    p.add_argument("--model", help="tiny | a diffusers folder | a hub id in the local cache (default: see README)")
    p.add_argument("--lora", help="LoRA file or hub id, or 'none' (default: the Simple Vector LoRA)")
    p.add_argument("--aspect-ratio", choices=list(ASPECT_RATIOS), help='default "2:3"')
    p.add_argument("--steps", type=int, help=allowed("steps"))
    p.add_argument("--seed", type=int, help=allowed("seed"))
    p.add_argument("--sampler-name", choices=SAMPLER_NAMES, metavar="NAME", help=allowed("sampler_name"))
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, help='default "simple"')
    p.add_argument("--lora-strength", type=float, help=allowed("lora_strength"))
    p.add_argument("--guidance", type=float, help=allowed("guidance"))
    p.add_argument("--negative-prompt")
    p.add_argument("--cfg", type=float, help=allowed("cfg"))
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--quantize", choices=["8bit"], help="bitsandbytes int8 transformer")
    p.add_argument("--offload", default="auto", choices=["auto", "none", "model", "sequential", "group"])
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--fast", action="store_true",
                   help="fast mode: fused QKV, best attention backend, regional torch.compile (cached on disk), fp8 "
                        "on Ada/Hopper with torchao; the first run at a size compiles")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output image (.png, .jpg, .webp)")
    p.add_argument("--no-progress", action="store_true")


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the Segmind-compatible HTTP API",
        description="Serve POST /v1/Simple_Vector_Flux, the /v2 queue, /healthz, /metrics and /docs. Point the segmind "
        "SDK at it with SegmindClient(base_url='http://HOST:PORT/v1'). Set FLUX_VECTOR_API_KEY to require x-api-key.",
    )  # fmt: skip
    p.add_argument("--model", help="tiny | a diffusers folder | a hub id in the local cache (default: as generate)")
    p.add_argument("--lora", help="LoRA file or hub id, or 'none' (default: the Simple Vector LoRA)")
    p.add_argument("--quantize", choices=["8bit"], help="bitsandbytes int8 transformer")
    p.add_argument("--offload", default="auto", choices=["auto", "none", "model", "sequential", "group"])
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--store", type=Path, help="job store SQLite file (default: <cache>/server/jobs.sqlite3)")
    p.add_argument("--max-queue", type=int, default=100, help="jobs waiting before submits get 429 (default 100)")
    p.add_argument("--retention", type=float, default=3600.0, metavar="SECONDS",
                   help="how long finished results and images are kept (default 3600)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def serve(args: argparse.Namespace) -> int:
    from .server.serve import serve as run_server

    return run_server(
        model=args.model or default_model(), lora=args.lora, quantize=args.quantize, offload=args.offload,
        device=args.device, host=args.host, port=args.port, store=args.store, max_queue=args.max_queue,
        retention_s=args.retention, log_level=args.log_level,
    )  # fmt: skip


REQUEST_ARGS = ("prompt", "aspect_ratio", "steps", "seed", "sampler_name", "scheduler", "lora_strength", "guidance",
                "negative_prompt", "cfg", "width", "height", "batch_size")  # fmt: skip


def generate(args: argparse.Namespace) -> int:
    from .pipeline import DEFAULT_LORA, FluxVectorPipeline

    params = {name: getattr(args, name) for name in REQUEST_ARGS if getattr(args, name) is not None}
    request = parse_request(params)  # fail fast, before loading any weights
    model = args.model or default_model()
    lora = DEFAULT_LORA if args.lora is None else args.lora
    pipe = FluxVectorPipeline.from_pretrained(
        model, lora=lora, lora_strength=request.lora_strength, quantize=args.quantize, offload=args.offload,
        device=args.device, compile=args.fast,
    )  # fmt: skip
    started = time.perf_counter()
    result = pipe.generate(request, progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(result.images):
        path = args.out if len(result.images) == 1 else args.out.with_stem(f"{args.out.stem}_{i}")
        image.save(path)
        paths.append(str(path))
    elapsed = time.perf_counter() - started
    print(f"saved {', '.join(paths)}: {result.width}x{result.height}, seed {request.seed}, {request.steps} steps "
          f"{request.sampler_name}/{request.scheduler}, {elapsed:.2f} s "
          f"({result.timings['per_step_s'] * 1000:.0f} ms/step)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flux-vector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "serve":
            return serve(args)
    except (RequestError, ValueError, FileNotFoundError, StoreLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
