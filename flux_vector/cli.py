"""``flux-vector`` command line: ``generate`` one image with the hosted API's parameters, ``serve`` the API, run a
GPU ``worker`` for API processes sharing a Redis job store, or ``vectorize`` an existing image to SVG."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .jobs.store import StoreLocked, StoreUnavailable
from .request import ASPECT_RATIOS, FIELDS, RequestError, allowed, parse_request
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES

# --out's suffix chooses output_format
OUTPUT_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".svg": "svg"}


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
    p.add_argument("--out", required=True, type=Path,
                   help="output image: .png, .jpg, .webp, or .svg (the image traced to vector shapes)")  # fmt: skip
    _add_vector_options(p)
    p.add_argument("--no-progress", action="store_true")


def _add_vector_options(p) -> None:
    p.add_argument("--detail", help="SVG: " + allowed("detail") + ' (default "medium")')
    p.add_argument("--transparent-background", action="store_true", default=None,
                   help="SVG: leave out the background region touching the border")  # fmt: skip


def _add_vectorize(sub) -> None:
    p = sub.add_parser("vectorize", help="trace an existing image to SVG",
                       description="Trace an image (PNG, JPEG, WebP...) to an SVG of flat shapes, as output_format "
                       "svg does for generated images.")  # fmt: skip
    p.add_argument("image", type=Path, help="input image")
    p.add_argument("--out", required=True, type=Path, help="output .svg")
    _add_vector_options(p)


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
    p.add_argument("--store", help="job store: a SQLite file (default: <cache>/server/jobs.sqlite3), or "
                   "redis://HOST:PORT/DB for an API-only process whose jobs run on flux-vector worker processes")
    p.add_argument("--max-queue", type=int, default=100, help="jobs waiting before submits get 429 (default 100)")
    p.add_argument("--retention", type=float, default=3600.0, metavar="SECONDS",
                   help="how long finished results and images are kept (default 3600)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _add_worker(sub) -> None:
    p = sub.add_parser(
        "worker", help="run one GPU worker on a Redis job store",
        description="Run jobs queued by flux-vector serve --store redis://... API processes: one worker per GPU, on "
        "any machine that reaches Redis. Loads the model once, fuses the LoRA once, warms up, then runs jobs until "
        "SIGTERM (the running job goes back to the queue). A worker killed mid-job has its job re-run by another "
        "after --lease seconds, at most --max-attempts runs in all.",
    )  # fmt: skip
    p.add_argument("--store", required=True, help="redis://HOST:PORT/DB (the same as the API processes')")
    p.add_argument("--model", help="tiny | a diffusers folder | a hub id in the local cache (default: as generate)")
    p.add_argument("--lora", help="LoRA file or hub id, or 'none' (default: the Simple Vector LoRA)")
    p.add_argument("--quantize", choices=["8bit"], help="bitsandbytes int8 transformer (the LoRA then stays unfused)")
    p.add_argument("--offload", default="auto", choices=["auto", "none", "model", "sequential", "group"])
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--name", help="this worker's name in Redis and the logs (default: HOST-PID-xxxx)")
    p.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                   help="a job whose worker stops renewing it for this long runs again elsewhere; give every worker "
                        "the same value (default 60)")  # fmt: skip
    p.add_argument("--max-attempts", type=int, default=3,
                   help="runs of a job whose workers keep dying before it is FAILED (default 3)")  # fmt: skip
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics and /healthz (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=9400,
                   help="port of /metrics and /healthz (default 9400; 0: any free port, logged; -1: none)")  # fmt: skip
    p.add_argument("--no-fuse", action="store_true", help="keep the LoRA as a runtime adapter instead of fusing it")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation")


def worker(args: argparse.Namespace) -> int:
    from .jobs.worker_process import run_worker

    return run_worker(
        store=args.store, model=args.model or default_model(), lora=args.lora, quantize=args.quantize,
        offload=args.offload, device=args.device, name=args.name, lease_s=args.lease, max_attempts=args.max_attempts,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port, fuse=not args.no_fuse,
        warmup=not args.no_warmup,
    )  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    from .jobs.redis_store import is_redis_url
    from .server.serve import serve as run_server

    if args.store is not None and is_redis_url(args.store):
        ignored = [f"--{name}" for name in ("model", "lora", "quantize", "device") if getattr(args, name)]
        if ignored:
            print(f"flux-vector serve: {', '.join(ignored)} ignored: with a Redis store this process only serves the "
                  "API; give them to flux-vector worker", file=sys.stderr)  # fmt: skip
        model = ""
    else:
        model = args.model or default_model()
    return run_server(
        model=model, lora=args.lora, quantize=args.quantize, offload=args.offload,
        device=args.device, host=args.host, port=args.port, store=args.store, max_queue=args.max_queue,
        retention_s=args.retention, log_level=args.log_level,
    )  # fmt: skip


def _output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise RequestError("out", str(out), "a file name ending in " + ", ".join(OUTPUT_SUFFIXES), "unknown suffix")
    return OUTPUT_SUFFIXES[suffix]


def vectorize(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from .request import VECTOR_OPTIONS
    from .vectorize import image_to_svg

    options = {name: getattr(args, name) for name in VECTOR_OPTIONS if getattr(args, name) is not None}
    if args.out.suffix.lower() != ".svg":
        raise RequestError("out", str(args.out), "a file name ending in .svg", "unknown suffix")
    started = time.perf_counter()
    try:
        with Image.open(args.image) as image:
            image.load()
            svg = image_to_svg(image, **options)
    except UnidentifiedImageError:
        raise ValueError(f"{args.image} is not an image this program can read") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg, encoding="utf-8")
    print(f"saved {args.out}: {image.width}x{image.height}, {svg.count('<path')} paths, "
          f"{len(svg.encode()) / 1000:.1f} KB, {time.perf_counter() - started:.2f} s")  # fmt: skip
    return 0


def generate(args: argparse.Namespace) -> int:
    from .jobs.bodies import encode_image
    from .pipeline import DEFAULT_LORA, FluxVectorPipeline

    # every contract field that generate exposes as a --flag; the names come from the contract itself
    params = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    params["output_format"] = _output_format(args.out)
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
        if request.output_format == "svg":
            path.write_bytes(encode_image(image, "svg", request.quality, **request.vector_options()))
        else:
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
    _add_worker(sub)
    _add_vectorize(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "worker":
            return worker(args)
        if args.command == "vectorize":
            return vectorize(args)
    except (RequestError, ValueError, FileNotFoundError, StoreLocked, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
