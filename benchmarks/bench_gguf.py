#!/usr/bin/env python
"""What the GGUF tier's dequantize-per-call costs: the transformer's forward from a .gguf (Q8_0, Q4_1) against the
same weights as plain float32 / bfloat16 linears, in one process, plus one FLUX.1-dev-sized linear alone.

GGUF linears (``flux_vector/gguf_model.py``) keep the quantized bytes and dequantize them on every call; the cost is
per weight, the matmul's is per weight *and token*, so the ratio falls as the image grows. Reports the milliseconds
per forward (the best of --repeats rounds), the ratio to the float model of the same compute dtype, and the time of
dequantizing every GGUF linear once (the overhead itself, steadier than a difference of two noisy forwards). On CUDA
diffusers can use optional GGUF kernels (``DIFFUSERS_GGUF_CUDA_KERNELS=true``, the ``kernels`` package, a remote
kernel); this tier uses diffusers' torch dequantization.

    python benchmarks/bench_gguf.py                     # the tiny and demo transformers on the CPU
    python benchmarks/bench_gguf.py --tokens 1024 --linear 3072
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from flux_vector.gguf_model import GGUFLinear, dequantize, load_gguf_transformer, write_flux_gguf

QTYPES = ("Q8_0", "Q4_1")


def inputs(config, tokens: int, text: int, dtype: torch.dtype) -> dict:
    return dict(
        hidden_states=torch.randn(1, tokens, config.in_channels, dtype=dtype),
        encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim, dtype=dtype),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, dtype=dtype),
        timestep=torch.tensor([0.5], dtype=dtype),
        guidance=torch.tensor([3.5], dtype=dtype),
        img_ids=torch.zeros(tokens, 3),
        txt_ids=torch.zeros(text, 3),
        return_dict=False,
    )


def best_of_rounds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` rounds per call, in milliseconds; each round runs every call once in turn, so a
    burst of other work on a shared machine slows all of them alike."""
    for call in calls.values():
        call()  # warm
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            best[name] = min(best[name], (time.perf_counter() - started) * 1000)
    return best


def bench_model(name: str, folder: Path, tokens: int, repeats: int) -> None:
    from flux_vector.quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()
    from diffusers import FluxTransformer2DModel

    reference = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer").eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for qtype in QTYPES:
            paths[qtype] = Path(tmp) / f"{name}-{qtype}.gguf"
            write_flux_gguf(reference, paths[qtype], qtype)
        for dtype in (torch.float32, torch.bfloat16):
            models = {"float": reference.to(dtype)}
            models.update({q: load_gguf_transformer(p, folder, dtype, log=lambda *_: None) for q, p in paths.items()})
            x = inputs(reference.config, tokens, 256, dtype)
            calls: dict[str, Callable[[], object]] = {k: (lambda m=m, x=x: m(**x)) for k, m in models.items()}
            for qtype in QTYPES:
                layers = [m for m in models[qtype].modules() if isinstance(m, GGUFLinear)]
                calls[f"dequantize {qtype}"] = lambda layers=layers, d=dtype: [q.dequantized(d) for q in layers]
            with torch.no_grad():
                ms = best_of_rounds(calls, repeats)
            print_row(f"{name} {str(dtype).removeprefix('torch.')}, {tokens} image tokens", ms)
            reference.float()


def bench_linear(width: int, tokens: int, repeats: int) -> None:
    import gguf
    from gguf.quants import quantize

    weight = torch.randn(width, width) * 0.02
    x = torch.randn(tokens, width)
    calls: dict[str, Callable[[], object]] = {"float": lambda: torch.nn.functional.linear(x, weight)}
    for qtype in QTYPES:
        kind = gguf.GGMLQuantizationType[qtype]
        data = torch.from_numpy(quantize(weight.numpy(), kind))
        layer = GGUFLinear(width, width, kind, data)
        calls[qtype] = lambda layer=layer: layer(x)
        calls[f"dequantize {qtype}"] = lambda data=data, kind=kind: dequantize(data, kind, torch.float32)
    print_row(f"one {width}x{width} linear, {tokens} tokens, float32", best_of_rounds(calls, repeats))


def print_row(what: str, ms: dict[str, float]) -> None:
    """One line: the float time, then each type's time, its ratio to float and its dequantization alone."""
    row = [f"{what}: float {ms['float']:.1f} ms"]
    for qtype in QTYPES:
        row.append(
            f"{qtype} {ms[qtype]:.1f} ms ({ms[qtype] / ms['float']:.2f}x; dequantizing its linears alone "
            f"{ms[f'dequantize {qtype}']:.1f} ms)"
        )
    print("; ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (1024: a 512x512 image)")
    parser.add_argument("--linear", type=int, default=3072, help="width of the lone linear (FLUX.1-dev: 3072)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from flux_vector.demo import DEMO_MODEL_DIR
    from flux_vector.tiny import tiny_checkpoint_dir

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench_model("tiny", tiny_checkpoint_dir(), args.tokens, args.repeats)
    bench_model("demo", DEMO_MODEL_DIR, args.tokens, args.repeats)
    bench_linear(args.linear, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
