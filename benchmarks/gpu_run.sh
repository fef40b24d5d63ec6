#!/usr/bin/env bash
# One prepared GPU run for a 15-minute device budget, from a bare machine with Python 3.12 and torch preinstalled
# (the lent H100/H200): installs the wheels carried in .whl/ (scripts/build_gpu_wheelhouse.sh) with --no-index into a
# target folder, then runs the phases in priority order, each under its own time limit, each writing its result into
# $OUT/<phase>/ as it goes (after every combination or mode), so a limit or a crash keeps what finished:
#   0. env          the torch / CUDA / GPU / package versions the figures come from ($OUT/env.json, first)
#   1. correctness  gpu_matrix.py: every offload x quantize x fast combination generates one 512x512 image; finite?
#                   peak GPU memory (8-bit + offload: three generations, the peak after each)
#   2. tiers        bench_tiers.py at 1024x1024, 8 steps, FLUX.1-dev random weights, per quantization tier (none,
#                   nf4, fp8, GGUF Q8_0 and Q4_0 written from the loaded transformer and read back, 8bit): peak GPU
#                   memory, s/image, PSNR against tier none's image, memory_tiers' estimate beside the measured bytes;
#                   a tier whose code is not in the checkout is reported "not available"
#   3. speed        bench_gpu.py at 1024x1024, random FLUX.1-dev weights, random rank-16 LoRA: plain diffusers, ours
#                   eager, ours with the LoRA fused (the fused strength-switch time), compiled (fast), fp8
#   4. memory       8-bit + model offload and bf16 group offload under a 12 GiB cap (three generations each)
#   5. samplers     bench_samplers.py (wall / model time per sampler), last: the least at stake
# then merges them into $OUT/gpu_run.json + gpu_run.md. The limits add up to 545 s (+ the install); the estimate
# of ~9.5 minutes for the whole run on an H100 is from the limits, not a measurement (no GPU has run it yet).
#
#   benchmarks/gpu_run.sh            # on the GPU machine (device tool: carry [".whl"])
#   benchmarks/gpu_run.sh --tiny     # the CPU rehearsal: every phase with the tiny checkpoint, limits adding to
#                                    # 220 s (under 4 minutes); on a loaded machine a phase keeps what it finished
# Environment: OUT (default ./gpu_out), PYTHON (python3), WHEELS (.whl), SITE (where the wheels go).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_out}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/flux_vector_site}
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
started=$(date +%s)
say() { echo "[gpu_run +$(($(date +%s) - started))s] $*" | tee -a "$LOG"; }

if [[ $TINY == 0 ]]; then
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >>"$LOG" 2>&1 || { say "wheel install failed (see the log)"; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

# 0. env: which torch the figures come from (flux_vector's pyproject asks for torch >= 2.13; the GPU image has 2.11
# and torch cannot be carried in 64 MiB, so a GPU run says which it used rather than refusing).
"$PYTHON" - "$OUT/env.json" <<'PY' 2>&1 | tee -a "$LOG"
import importlib.metadata as md, json, sys
import torch
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("diffusers", "transformers", "accelerate", "bitsandbytes", "torchao", "triton", "safetensors",
             "huggingface_hub", "sentencepiece", "tokenizers", "gguf"):
    try:
        env[name] = md.version(name)
    except md.PackageNotFoundError:
        env[name] = None
from packaging.version import Version
env["torch_meets_pyproject"] = Version(torch.__version__.split("+")[0]) >= Version("2.13")
json.dump(env, open(sys.argv[1], "w"), indent=1)
print("env:", json.dumps(env))
PY
nvidia-smi >>"$LOG" 2>&1 || echo "no nvidia-smi" >>"$LOG"

phase() {  # phase NAME SECONDS SCRIPT ARGS...: run with a time limit; the script writes into $OUT/NAME itself
  local name=$1 limit=$2 script=$3
  shift 3
  mkdir -p "$OUT/$name"
  say "phase $name (at most ${limit}s): $script $*"
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" "$script" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "{\"phase\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t0)), \"limit\": $limit}" \
    >"$OUT/$name/phase.json"
  say "phase $name: exit $rc in $(($(date +%s) - t0))s"
}

if [[ $TINY == 1 ]]; then
  # limits that add up to 220 s: with the env step and the merge the rehearsal ends within 4 minutes by construction
  phase correctness 60 benchmarks/gpu_matrix.py --tiny --steps 1 --out "$OUT/correctness"
  phase tiers 60 benchmarks/bench_tiers.py --tiny --steps 2 --size 64 --out "$OUT/tiers"
  phase speed 60 benchmarks/bench_gpu.py --tiny --steps 2 --size 64 --repeats 1 \
    --modes diffusers,ours,ours-fused,fast,fast-fp8 --out "$OUT/speed"
  phase memory 25 benchmarks/bench_gpu.py --tiny --steps 2 --size 64 --repeats 2 --vram-limit-gib 12 \
    --modes 8bit-offload,offload-group --out "$OUT/memory"
  phase samplers 15 benchmarks/bench_samplers.py --device cpu --model-ms 30 --steps 4 --size 256 --repeats 1 \
    --samplers euler,euler_ancestral,dpmpp_2m_sde,uni_pc --json "$OUT/samplers/bench_samplers.json"
else
  phase correctness 140 benchmarks/gpu_matrix.py --size 512 --steps 2 --out "$OUT/correctness"
  phase tiers 200 benchmarks/bench_tiers.py --steps 8 --repeats 1 --out "$OUT/tiers"
  phase speed 120 benchmarks/bench_gpu.py --steps 10 --repeats 1 \
    --modes diffusers,ours,ours-fused,fast,fast-fp8 --out "$OUT/speed"
  phase memory 60 benchmarks/bench_gpu.py --steps 4 --repeats 2 --vram-limit-gib 12 \
    --modes 8bit-offload,offload-group --out "$OUT/memory"
  phase samplers 25 benchmarks/bench_samplers.py --device cuda --model-ms 60 --steps 10 --repeats 1 \
    --json "$OUT/samplers/bench_samplers.json"
fi

"$PYTHON" - "$OUT" "$TINY" <<'PY' 2>&1 | tee -a "$LOG"
"""Merge the phases into one JSON and one markdown."""
import json, shutil, sys
from pathlib import Path

out, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
merged = {"tiny": tiny, "env": env, "phases": {}}
title = "# gpu_run" + (" --tiny (CPU rehearsal)" if tiny else "")
md = [title, "", f"torch {env.get('torch')} (CUDA {env.get('cuda')}), GPU {env.get('gpu')}, diffusers "
      f"{env.get('diffusers')}, transformers {env.get('transformers')}, bitsandbytes {env.get('bitsandbytes')}, "
      f"torchao {env.get('torchao')}" + ("" if env.get("torch_meets_pyproject", True) else
      " — below flux_vector's torch>=2.13: these figures are from this older torch"), ""]
for name, result in (("correctness", "gpu_matrix"), ("tiers", "bench_tiers"), ("speed", "bench_gpu"),
                     ("memory", "bench_gpu")):
    folder = out / name
    phase = json.loads((folder / "phase.json").read_text()) if (folder / "phase.json").exists() else {}
    if (folder / f"{result}.json").exists():
        merged["phases"][name] = {**json.loads((folder / f"{result}.json").read_text()), "run": phase}
        md += [f"## {name} (exit {phase.get('exit')}, {phase.get('seconds')} s of {phase.get('limit')})", "",
               (folder / f"{result}.md").read_text().replace("# ", "### ", 1), ""]
        if (folder / "bench_gpu.png").exists():
            shutil.copy(folder / "bench_gpu.png", out / f"gpu_run_{name}.png")
    else:
        md += [f"## {name}: no result (exit {phase.get('exit')})", ""]
samplers = out / "samplers" / "bench_samplers.json"
if samplers.exists():
    data = json.loads(samplers.read_text())
    merged["phases"]["samplers"] = data
    md += [f"## samplers: wall / model time, model {data['model_ms']:g} ms/eval on {data['device']}, "
           f"{data['steps']} steps {data['scheduler']}", "", "| sampler | evals | wall/model |", "|---|---:|---:|"]
    md += [f"| {r['sampler']} | {r['evals']} | {r['wall_over_model']:.3f} |" for r in data["rows"]]
else:
    md += ["## samplers: no result"]
(out / "gpu_run.json").write_text(json.dumps(merged, indent=1, default=str))
(out / "gpu_run.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
print(f"wrote {out / 'gpu_run.json'} and {out / 'gpu_run.md'}")
PY
say "done"
