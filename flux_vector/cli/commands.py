"""One function per ``flux-vector`` command; each checks its paths and weights before any model work."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..memory_tiers import AUTO
from ..output_formats import SUFFIXES
from ..request import FIELDS, parse_request
from .terminal import printable, printable_json

if TYPE_CHECKING:
    from PIL import Image

# ----------------------------------------------------------------------------------------------- checks


def _check_weights(model: str | None, lora: str | None, files: dict | None = None) -> None:
    """The model and the LoRA exist locally, checked before anything loads (a --model of a plugin factory,
    ``$FLUX_VECTOR_PIPELINE_FACTORY``, means what the factory says, so it is not checked here). ``files``: the
    single-file options (``_model_files``)."""
    from ..models import DEFAULT_LORA, check_weights
    from ..pipeline_factory import factory_from_env

    if model is not None and factory_from_env() is None:
        check_weights(model, DEFAULT_LORA if lora is None else lora, **(files or {}))


def _check_store(store: str | None) -> None:
    """serve's --store: a Redis URL, or a SQLite file that can be created or written (the default's too)."""
    from ..jobs.redis_store import is_redis_url
    from ..paths import check_writable_file
    from ..server.serve import default_store_path

    if store is None or not is_redis_url(store):
        path = Path(store) if store is not None else default_store_path()
        check_writable_file(path, option="--store", example="jobs.sqlite3")


# ----------------------------------------------------------------------------------------------- commands


def _load_options(args: argparse.Namespace) -> dict:
    """The shared model options (``parser._model_options``) as ``load_pipeline`` keywords."""
    options = {
        "lora": args.lora,
        "quantize": args.quantize,
        "offload": args.offload,
        "device": args.device,
        "quantize_text": args.quantize_text,
        "text_device": args.text_device,
    }
    return {**options, **_model_files(args)}


def _model_files(args: argparse.Namespace) -> dict:
    """--base/--clip-l/--t5/--vae/--comfyui-models as ``from_pretrained`` keywords: only those given (a plugin
    factory that knows none of them gets none)."""
    files = {
        "base": args.base,
        "clip_l_file": args.clip_l,
        "t5_file": args.t5,
        "vae_file": args.vae,
        "comfyui_models": args.comfyui_models,
    }
    return {name: value for name, value in files.items() if value is not None}


def _serving_options(args: argparse.Namespace) -> dict:
    """``--no-fuse`` / ``--no-warmup`` / ``--warmup-size`` (``parser._serving_options``) as ``prepare_for_serving``
    keywords."""
    return {"fuse": not args.no_fuse, "warmup": not args.no_warmup, "warmup_sizes": tuple(args.warmup_size or ())}


def run_worker_command(args: argparse.Namespace) -> int:
    from ..jobs.worker_process import check_worker_store, run_worker

    check_worker_store(args.store)
    _check_weights(args.model, args.lora, _model_files(args))
    return run_worker(
        store=args.store,
        model=args.model,
        **_load_options(args),
        name=args.name,
        lease_s=args.lease,
        max_attempts=args.max_attempts,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        allow_eviction=args.allow_redis_eviction,
        **_serving_options(args),
    )


def run_serve_command(args: argparse.Namespace) -> int:
    from ..jobs.redis_store import is_redis_url
    from ..server.serve import serve

    if args.store is not None and is_redis_url(args.store):
        loading = (
            "quantize",
            "device",
            "quantize_text",
            "text_device",
            "base",
            "clip_l",
            "t5",
            "vae",
            "comfyui_models",
        )
        ignored = [f"--{name.replace('_', '-')}" for name in loading if getattr(args, name) not in (None, AUTO)]
        if ignored:
            print(
                f"flux-vector serve: {', '.join(ignored)} ignored: with a Redis store this process only serves the "
                "API; give them to flux-vector worker (--model and --lora, when given, are recorded in every job: "
                "only workers serving them run it; --model also names the tokenizers that count prompt tokens)",
                file=sys.stderr,
            )
    else:
        _check_store(args.store)
        _check_weights(args.model, args.lora, _model_files(args))
    return serve(
        model=args.model,
        **_load_options(args),
        host=args.host,
        port=args.port,
        store=args.store,
        max_queue=args.max_queue,
        retention_s=args.retention,
        log_level=args.log_level,
        **_serving_options(args),
        public_url=args.public_url,
        allow_origins=tuple(args.allow_origin),
        allow_eviction=args.allow_redis_eviction,
        budget={
            "max_image_pixels": args.max_image_pixels,
            "max_batch_pixels": args.max_batch_pixels,
            "max_work": args.max_work,
            "max_prompt_tokens": args.max_prompt_tokens,
        },
        api_keys_file=args.api_keys,
        public_metrics=args.public_metrics,
        max_queue_per_user=args.max_queue_per_user,
    )


def _output_format(out: Path) -> str:
    from ..paths import check_output_file

    check_output_file(out, SUFFIXES)
    return SUFFIXES[out.suffix.lower()]


def run_vectorize_command(args: argparse.Namespace) -> int:
    from ..paths import check_input_file, check_output_file
    from ..request import VECTOR_OPTIONS
    from ..safe_files import replace_file
    from ..vectorize import image_to_svg

    options = {name: getattr(args, name) for name in VECTOR_OPTIONS if getattr(args, name) is not None}
    check_input_file(args.image, what="image")
    check_output_file(args.out, (".svg",))
    started = time.perf_counter()
    image = open_image_to_trace(args.image)
    with image:
        svg = image_to_svg(image, **options)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(args.out, svg.encode("utf-8"))
    print(
        f"saved {printable(str(args.out))}: {image.width}x{image.height}, {svg.count('<path')} paths, "
        f"{len(svg.encode()) / 1000:.1f} KB, {time.perf_counter() - started:.2f} s"
    )
    return 0


VECTORIZE_FORMATS = ("PNG", "JPEG", "WEBP")


def open_image_to_trace(path: Path) -> Image.Image:
    """The image at ``path`` (a regular PNG, JPEG or WebP file), its size checked against the tracing limit from its
    header, before a pixel is decoded; then loaded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from ..safe_files import open_regular_for_reading
    from ..vectorize import MAX_VECTORIZE_PIXELS, check_vectorize_size

    f = open_regular_for_reading(path, what="image")
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: our limit is far lower and says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(f, formats=VECTORIZE_FORMATS)
        check_vectorize_size(image.width, image.height, what=f"image {path}")
        image.load()
    except UnidentifiedImageError:
        f.close()
        raise ValueError(f"{path} is not an image this program can read (give a PNG, JPEG or WebP)") from None
    except Image.DecompressionBombError:
        f.close()
        raise ValueError(
            f"image {path} has more pixels than Pillow opens at all, far over the {MAX_VECTORIZE_PIXELS:,} that can "
            "be traced to SVG; scale it down first"
        ) from None
    except BaseException:
        f.close()
        raise
    f.close()
    return image


def generate_model(model: str | None) -> str:
    """generate's model: --model, else $FLUX_VECTOR_MODEL, else FLUX.1-dev when downloaded, else the shipped demo
    model, with one line saying so (it draws simple shapes; never the random-weight tiny model's noise)."""
    from ..models import default_model

    return model or default_model()


def _like(args: argparse.Namespace) -> tuple[dict, dict]:
    """The request parameters and the model/LoRA names recorded in ``--like``'s image (both empty without it); the
    whole record is checked here, before any model loads."""
    if args.like is None:
        return {}, {}
    from ..image_metadata import RECORD_FIELDS, read_metadata
    from ..paths import check_input_file

    check_input_file(args.like, what="--like image")
    record = read_metadata(args.like)
    check_like_record(record, f"--like {printable(str(args.like))}")
    params = {k: v for k, v in record["request"].items() if k not in ("output_format", "base64")}
    if args.aspect_ratio is not None and args.width is None:  # a new ratio replaces the recorded explicit size
        params.pop("width", None), params.pop("height", None)
    if record.get("source"):  # another tool's image: its file names are that install's own
        for flag, name, named in (("--model", "model", "model_file"), ("--lora", "lora", "lora_file")):
            if record.get(name) is None and getattr(args, name) is None:
                raise ValueError(
                    f"{args.like} was made by {record['source']} with the {name} file {record.get(named)!r}, which "
                    f"flux_vector does not know by that name: give {flag} (the same weights here)"
                )
    made_with = {"model": record.get("model"), "lora": record.get("lora") or "none"}
    batch_size = params.get("batch_size", 1)
    if type(batch_size) is int and batch_size > 1 and args.batch_size is None:
        made_with["batch_index"] = record.get("batch_index", 0)
    unknown = sorted(set(record) - set(RECORD_FIELDS))
    if unknown:  # a plugin pipeline's identity may name more: said, not an error
        names = ", ".join(printable(repr(k))[:80] for k in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        print(f"note: {printable(str(args.like))}: the record's keys {names} are not used", file=sys.stderr)
    return params, made_with


def check_like_record(record: dict, where: str) -> None:
    """The record as ``--like`` uses it: every request key a parameter of this version, ``batch_index`` within its
    batch, model and LoRA names (never paths). One line naming what is wrong. The request's values are checked by the
    contract once the command line's overrides are merged in (``run_generate_command``), also before any model."""
    request = record["request"]
    unknown = [k for k in request if k not in FIELDS]
    if unknown:
        names = ", ".join(printable(repr(k))[:80] for k in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"{where}: the record's request has parameters this version does not know ({names}); it was made by "
            "another version or edited: give the parameters on the command line"
        )
    index, size = record.get("batch_index", 0), request.get("batch_size", 1)
    size = size if type(size) is int and size >= 1 else 1  # a bad batch_size is the request's error, named later
    if type(index) is not int or not 0 <= index < size:
        raise ValueError(
            f"{where}: the record's batch_index={printable(repr(index))[:80]} is not allowed; batch_index must be an "
            f"integer from 0 to {size - 1} (its request's batch_size is {size})"
        )
    for key in ("model", "lora"):
        name = record.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or not _RECORDED_NAME.fullmatch(name) or ".." in name.split("/"):
            raise ValueError(
                f"{where}: the record's {key}={printable(repr(name))[:120]} is not a model name (a record names a hub "
                f"id or a file or folder name, never a path); give --{key}"
            )


# a hub id ("owner/name") or a file or folder name, as image_metadata.public_name records them
_RECORDED_NAME = re.compile(r"[A-Za-z0-9._+-][A-Za-z0-9._+ -]{0,199}(/[A-Za-z0-9._+-][A-Za-z0-9._+ -]{0,199})?")


def run_generate_command(args: argparse.Namespace) -> int:
    params, made_with = _like(args)
    params.update({name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None})
    if "prompt" not in params:
        raise ValueError("--prompt is required (or --like IMAGE, to start from an image's recorded parameters)")
    params["output_format"] = _output_format(args.out)  # the path is checked here, before any model work
    request = parse_request(params)  # fail fast, before loading any weights
    model = generate_model(args.model or made_with.get("model"))
    lora = args.lora or made_with.get("lora")
    _check_weights(model, lora, _model_files(args))
    from ..image_metadata import image_metadata  # torch and the model libraries: only once everything checked out
    from ..output_formats import encode_image
    from ..pipeline import load_pipeline
    from ..safe_files import replace_file

    pipe = load_pipeline(
        model, lora_strength=request.lora_strength, fast=args.fast, **{**_load_options(args), "lora": lora}
    )
    started = time.perf_counter()
    result = pipe.generate(request, progress=not args.no_progress)
    request = result.request  # as drawn: the LoRA strength rules applied (pipeline.prepare)
    images = list(enumerate(result.images))
    if "batch_index" in made_with:  # --like of one image of a batch: the batch is made again, that image kept
        images = [images[made_with["batch_index"]]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in images:
        path = args.out if len(images) == 1 else args.out.with_stem(f"{args.out.stem}_{i}")
        record = image_metadata(request, pipe.identity, batch_index=i, size=image.size)
        replace_file(
            path,
            encode_image(image, request.output_format, request.quality, metadata=record, **request.vector_options()),
        )
        paths.append(printable(str(path)))
    elapsed = time.perf_counter() - started
    notes = {"tiny": " (the random-weight demo: noise, not a real image)", "demo": " (the demo model, not FLUX.1-dev)"}
    demo = notes.get(model, "")
    print(
        f"saved {', '.join(paths)}: {result.width}x{result.height}, seed {request.seed}, {request.steps} steps "
        f"{request.sampler_name}/{request.scheduler}, {elapsed:.2f} s "
        f"({result.timings['per_step_s'] * 1000:.0f} ms/step), model {model}{demo}"
    )
    return 0


def run_batch_command(args: argparse.Namespace) -> int:
    from ..batching import check_batch_file, parse_seeds
    from ..models import DEFAULT_LORA, running_lora_name
    from ..paths import check_input_file, check_output_folder
    from .parser import BATCH_FIELDS

    check_input_file(args.requests, what="REQUESTS")
    check_batch_file(args.requests)
    check_output_folder(args.out)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if seeds is not None and args.repeat != 1:
        raise ValueError("--seeds and --repeat together are not allowed; give one (--seeds A..B: one image per seed)")
    defaults = {name: getattr(args, name) for name in BATCH_FIELDS if getattr(args, name, None) is not None}
    model = generate_model(args.model)
    lora = running_lora_name(DEFAULT_LORA if args.lora is None else args.lora, model)  # what runs: keys, manifest

    _check_weights(model, args.lora, _model_files(args))

    def load():
        from ..pipeline import load_pipeline

        strength = defaults.get("lora_strength", 1.0)
        return load_pipeline(model, lora_strength=strength, fast=args.fast, **_load_options(args))

    from ..batching import run_batch

    summary = run_batch(
        args.requests,
        args.out,
        load,
        model=model,
        lora=lora,
        defaults=defaults,
        repeat=args.repeat,
        seeds=seeds,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        report=lambda line: print(
            printable(line), file=sys.stderr if line.startswith("line ") else sys.stdout, flush=True
        ),
    )
    print(printable(summary.text()), flush=True)
    if summary.interrupted:
        print("stopped: run the same command again to resume (finished requests are skipped)", file=sys.stderr)
    return summary.exit_code


def run_info_command(args: argparse.Namespace) -> int:
    import json

    from ..image_metadata import parameters_text, read_metadata
    from ..paths import check_input_file

    check_input_file(args.image, what="image")
    record = read_metadata(args.image)
    if args.json:
        print(printable_json(json.dumps(record, indent=2, ensure_ascii=False)))
    else:
        print(printable(parameters_text(record)))
        names = " (--model/--lora: the weights here)" if record.get("source") else ""
        print(f"again: flux-vector generate --like {printable(str(args.image))} --out <file>{names}")
    return 0


def run_doctor_command(args: argparse.Namespace) -> int:
    from ..doctor import diagnose

    report = diagnose()
    print(report.text())
    return 0


COMMANDS = {
    "generate": run_generate_command,
    "batch": run_batch_command,
    "serve": run_serve_command,
    "worker": run_worker_command,
    "vectorize": run_vectorize_command,
    "info": run_info_command,
    "doctor": run_doctor_command,
}
