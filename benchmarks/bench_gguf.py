#!/usr/bin/env python
"""What the GGUF tier's dequantize-per-call costs: the transformer's forward from a .gguf (Q8_0, Q4_1) against the
same weights as plain float32 / bfloat16 linears, in one process, plus one FLUX.1-dev-sized linear alone.

GGUF linears (``flux_vector/gguf_model.py``) keep the quantized bytes and dequantize them on every call; the cost is
per weight, the matmul's is per weight *and token*, so the ratio falls as the image grows. Reports the median
milliseconds per forward (the best of --repeats) and the ratio to the float model of the same compute dtype. On
CUDA diffusers can use
optional GGUF kernels (``DIFFUSERS_GGUF_CUDA_KERNELS=true``, the ``kernels`` package, a remote kernel); this tier
uses diffusers' torch dequantization.

    python benchmarks/bench_gguf.py                     # the tiny and demo transformers on the CPU
    python benchmarks/bench_gguf.py --tokens 1024 --linear 3072
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from flux_vector.gguf_model import GGUFLinear, dequantize, load_gguf_transformer, write_flux_gguf


def best_ms(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls after a warm one (the least disturbed by other work on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


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


def bench_model(name: str, folder: Path, tokens: int, repeats: int) -> None:
    from flux_vector.quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()
    from diffusers import FluxTransformer2DModel

    reference = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer").eval()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.bfloat16):
            plain = reference.to(dtype)
            x = inputs(plain.config, tokens, 256, dtype)
            with torch.no_grad():
                base = best_ms(lambda m=plain, x=x: m(**x), repeats)
            row = [f"{name} {str(dtype).removeprefix('torch.')}, {tokens} image tokens: float {base:.1f} ms"]
            for qtype in ("Q8_0", "Q4_1"):
                path = Path(tmp) / f"{name}-{qtype}.gguf"
                if not path.exists():
                    write_flux_gguf(reference.float(), path, qtype)
                    reference.to(dtype)
                model = load_gguf_transformer(path, folder, dtype, log=lambda *_: None)
                layers = [m for m in model.modules() if isinstance(m, GGUFLinear)]
                with torch.no_grad():
                    ms = best_ms(lambda m=model, x=x: m(**x), repeats)
                    deq = best_ms(lambda layers=layers, d=dtype: [q.dequantized(d) for q in layers], repeats)
                row.append(
                    f"{qtype} {ms:.1f} ms ({ms / base:.2f}x; dequantizing its {len(layers)} linears {deq:.1f} ms)"
                )
            print("; ".join(row))


def bench_linear(width: int, tokens: int, repeats: int) -> None:
    import gguf
    from gguf.quants import quantize

    weight = torch.randn(width, width) * 0.02
    x = torch.randn(tokens, width)
    base = best_ms(lambda: torch.nn.functional.linear(x, weight), repeats)
    row = [f"one {width}x{width} linear, {tokens} tokens, float32: {base:.1f} ms"]
    for qtype in ("Q8_0", "Q4_1"):
        kind = gguf.GGMLQuantizationType[qtype]
        data = torch.from_numpy(quantize(weight.numpy(), kind))
        layer = GGUFLinear(width, width, kind, data)
        ms = best_ms(lambda layer=layer: layer(x), repeats)
        deq = best_ms(lambda data=data, kind=kind: dequantize(data, kind, torch.float32), repeats)
        row.append(f"{qtype} {ms:.1f} ms ({ms / base:.2f}x; dequantize alone {deq:.1f} ms)")
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
