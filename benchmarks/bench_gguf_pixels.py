"""PSNR of GGUF files of the demo transformer (written by ``write_flux_gguf``, read back as a user's file is) against
the demo model's float32 run, with its LoRA at strength 0 and 1 (CPU).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_gguf_pixels.py
"""

import tempfile
from pathlib import Path

import numpy as np
from bench_tier_pixels import psnr

from flux_vector import FluxVectorPipeline
from flux_vector.gguf_model import write_flux_gguf
from flux_vector.models import builtin_lora_name, resolve_model

RUN = dict(width=128, height=128, steps=12, seed=3, progress=False)
P = "v3ct0r style, simple vector art, a large red heart in the center on a white background"


def quiet(*_):
    pass


folder = resolve_model("demo")
lora = folder / builtin_lora_name("demo")
ref = FluxVectorPipeline.from_pretrained(str(folder), lora=str(lora), log=quiet)
refs = {}
for s in (0.0, 1.0):
    ref.set_lora_strength(s)
    refs[s] = np.asarray(ref(P, **RUN).image)
print("float32 LoRA 0 vs 1:", round(psnr(refs[0.0], refs[1.0]), 1))
plain = FluxVectorPipeline.from_pretrained(str(folder), lora="none", log=quiet)
with tempfile.TemporaryDirectory() as tmp:
    for qt in ("Q8_0", "Q5_1", "Q4_1", "Q4_0"):
        path = Path(tmp) / f"demo-{qt}.gguf"
        write_flux_gguf(plain.transformer, path, qt)
        pipe = FluxVectorPipeline.from_pretrained(str(path), base=str(folder), lora=str(lora), log=quiet)
        row = []
        for s in (0.0, 1.0):
            pipe.set_lora_strength(s)
            row.append(psnr(np.asarray(pipe(P, **RUN).image), refs[s]))
        print(f"{qt}: LoRA 0 {row[0]:.1f} dB, LoRA 1 {row[1]:.1f} dB")
