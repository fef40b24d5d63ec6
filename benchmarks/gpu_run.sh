#!/usr/bin/env bash
# One prepared GPU measurement run, from a bare machine with Python 3.12 and torch preinstalled (the lent H100/H200):
# installs the wheels carried in .whl/ (scripts/build_gpu_wheelhouse.sh) with --no-index into a target folder, then
#   1. samplers: bench_samplers.py on the GPU (model = a spinning GPU kernel): wall / model time for all 29 names
#   2. speed:    bench_gpu.py at 1024x1024, random FLUX.1-dev weights, random rank-16 LoRA as a runtime adapter:
#                plain diffusers bf16, ours eager (512 and 256 text tokens), compiled (fast), fp8, step cache
#   3. memory:   8-bit + model offload, and bf16 group offload, each capped at 12 GiB of GPU memory
# and writes gpu_run.json + gpu_run.md (+ the log and the charts) to $OUT. Each phase has a time limit, so the
# whole run ends within 8 minutes; a phase cut short keeps the modes it finished.
#
#   benchmarks/gpu_run.sh            # on the GPU machine (device tool: carry [".whl"])
#   benchmarks/gpu_run.sh --tiny     # the same phases on CPU with the tiny checkpoint (a smoke test, ~2 min)
# Environment: OUT (default ./gpu_out), PYTHON (python3), WHEELS (.whl), SITE (where the wheels go).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_out}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/flux_vector_site}
WORK=$(mktemp -d)
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
started=$(date +%s)
say() { echo "[gpu_run +$(($(date +%s) - started))s] $*" | tee -a "$LOG"; }

say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$WHEELS"/*.whl >>"$LOG" 2>&1 || { say "wheel install failed (see the log)"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PYTHON" -c "import torch, diffusers, torchsde; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"; } >>"$LOG" 2>&1

phase() {  # phase NAME SECONDS SCRIPT ARGS...: run with a time limit, output into $WORK/NAME
  local name=$1 limit=$2 script=$3
  shift 3
  mkdir -p "$WORK/$name"
  say "phase $name (at most ${limit}s): $script $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" "$script" "$@" >>"$LOG" 2>&1
  say "phase $name: exit $?"
}

if [[ $TINY == 1 ]]; then
  phase samplers 40 benchmarks/bench_samplers.py --device cpu --model-ms 30 --steps 4 --size 256 --repeats 1 \
    --samplers euler,euler_ancestral,dpmpp_2m_sde,uni_pc --json "$WORK/samplers/bench_samplers.json"
  phase speed 120 benchmarks/bench_gpu.py --tiny --steps 2 --size 64 --repeats 1 \
    --modes diffusers,ours,ours-512tok,fast,fast-fp8 --out "$WORK/speed"
  phase memory 40 benchmarks/bench_gpu.py --tiny --steps 2 --size 64 --repeats 1 --vram-limit-gib 12 \
    --modes 8bit,8bit-offload,offload-group --out "$WORK/memory"
else
  phase samplers 45 benchmarks/bench_samplers.py --device cuda --model-ms 60 --steps 10 --repeats 1 \
    --json "$WORK/samplers/bench_samplers.json"
  phase speed 290 benchmarks/bench_gpu.py --steps 10 --repeats 2 \
    --modes diffusers,ours,ours-512tok,fast,fast-fp8,step-cache --out "$WORK/speed"
  phase memory 110 benchmarks/bench_gpu.py --steps 10 --repeats 1 --vram-limit-gib 12 \
    --modes 8bit-offload,offload-group --out "$WORK/memory"
fi

"$PYTHON" - "$WORK" "$OUT" "$TINY" <<'PY' 2>&1 | tee -a "$LOG"
"""Merge the phases into one JSON and one markdown."""
import json, shutil, sys
from pathlib import Path

work, out, tiny = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
merged = {"tiny": tiny, "phases": {}}
md = ["# gpu_run" + (" --tiny (CPU smoke test)" if tiny else ""), ""]
samplers = work / "samplers" / "bench_samplers.json"
if samplers.exists():
    data = json.loads(samplers.read_text())
    merged["phases"]["samplers"] = data
    md += [f"## samplers: wall / model time, model {data['model_ms']:g} ms/eval on {data['device']}, "
           f"{data['steps']} steps {data['scheduler']}", "", "| sampler | evals | wall/model |", "|---|---:|---:|"]
    md += [f"| {r['sampler']} | {r['evals']} | {r['wall_over_model']:.3f} |" for r in data["rows"]]
    md.append("")
else:
    md += ["## samplers: no result", ""]
for name in ("speed", "memory"):
    folder = work / name
    if (folder / "bench_gpu.json").exists():
        merged["phases"][name] = json.loads((folder / "bench_gpu.json").read_text())
        md += [f"## {name}", "", (folder / "bench_gpu.md").read_text().replace("# bench_gpu:", "### bench_gpu:", 1), ""]
        if (folder / "bench_gpu.png").exists():
            shutil.copy(folder / "bench_gpu.png", out / f"gpu_run_{name}.png")
    else:
        md += [f"## {name}: no result", ""]
(out / "gpu_run.json").write_text(json.dumps(merged, indent=1, default=str))
(out / "gpu_run.md").write_text("\n".join(md))
print("\n".join(md))
print(f"wrote {out / 'gpu_run.json'} and {out / 'gpu_run.md'}")
PY
say "done"
rm -rf "$WORK"
