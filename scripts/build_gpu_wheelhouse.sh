#!/usr/bin/env bash
# Build .whl/: the wheels the lent GPU machine lacks, for its Python 3.12 on manylinux x86_64, then check that
# every carried wheel's requirements are either carried or already on that machine, and that the folder fits the
# device tool's 64 MiB (the working tree travels too). See README "GPU benchmark".
#
#   scripts/build_gpu_wheelhouse.sh [DEST]          # DEST defaults to .whl (ignored by git)
#   PY_VERSION=3.11 scripts/build_gpu_wheelhouse.sh /tmp/whl311   # the same set for a CPU test on Python 3.11
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
BNB_CUDA=${BNB_CUDA:-130}  # the GPU machine's torch is 2.11.0+cu130: bitsandbytes loads libbitsandbytes_cuda130.so
CARRY_LIMIT_MIB=${CARRY_LIMIT_MIB:-64}

# Pinned to the versions the test suite runs with (pyproject); torchao 0.18 loads its kernels on torch >= 2.11.
PACKAGES=(
  diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
  bitsandbytes==0.50.2 torchao==0.18.0
  torchsde==0.2.6 trampoline==0.1.2
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
)
# What the GPU machine's image already holds (the device tool's KINDS.md, read 2026-11-17), lower-case, '-' form.
GPU_HAS="accelerate anyio certifi charset-normalizer filelock fsspec h11 hf-xet httpcore httpx huggingface-hub idna
jinja2 markupsafe mpmath networkx numpy nvidia-ml-py packaging peft pillow protobuf psutil pyyaml regex requests
safetensors scipy sentencepiece setuptools sympy tokenizers torch tqdm transformers triton typing-extensions
urllib3 zipp prometheus-client click"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"

"$PYTHON" - "$DEST" "$BNB_CUDA" "$CARRY_LIMIT_MIB" "$GPU_HAS" <<'PY'
"""Slim bitsandbytes to the one CUDA build the GPU machine loads, check requirements and size."""
import base64, hashlib, re, subprocess, sys, zipfile
from pathlib import Path

dest, bnb_cuda, limit_mib, gpu_has = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), set(sys.argv[4].split())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def slim_bitsandbytes(wheel: Path) -> None:
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{bnb_cuda})\.so$")
    drop = lambda n: re.search(r"libbitsandbytes_\w+\.so$", n) and not keep.search(n)  # noqa: E731
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        names = [n for n in src.namelist() if not drop(n)]
        if not any(keep.search(n) and "cuda" in n for n in names):
            sys.exit(f"{wheel.name} has no libbitsandbytes_cuda{bnb_cuda}.so")
        for name in names:
            data = src.read(name)
            if name.endswith(".dist-info/RECORD"):
                data = b"".join(line + b"\n" for line in data.splitlines() if not drop(line.split(b",")[0].decode()))
            out.writestr(src.getinfo(name), data)
    slim.replace(wheel)


wheels = sorted(dest.glob("*.whl"))
for wheel in wheels:
    if wheel.name.startswith("bitsandbytes-"):
        before = wheel.stat().st_size
        slim_bitsandbytes(wheel)
        print(f"bitsandbytes: kept the cpu and cuda{bnb_cuda} builds, {before / 2**20:.1f} -> "
              f"{wheel.stat().st_size / 2**20:.1f} MiB")

carried, missing = set(), []
for wheel in wheels:
    carried.add(norm(wheel.name.split("-")[0]))
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            req = norm(re.match(r"Requires-Dist:\s*([A-Za-z0-9_.\-]+)", line).group(1))
            if req not in carried and req not in gpu_has:
                missing.append(f"{wheel.name}: {line.split(':', 1)[1].strip()}")
if missing:
    sys.exit("requirements neither carried nor on the GPU machine:\n  " + "\n  ".join(missing))

wheels_mib = sum(w.stat().st_size for w in wheels) / 2**20
tree = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                      check=True).stdout.split(b"\0")
tree_mib = sum(Path(p.decode()).stat().st_size for p in tree if p and Path(p.decode()).is_file()) / 2**20
print(f"{len(wheels)} wheels, {wheels_mib:.1f} MiB; the working tree beside them {tree_mib:.1f} MiB; "
      f"together {wheels_mib + tree_mib:.1f} of {limit_mib:g} MiB")
for wheel in wheels:
    print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
if wheels_mib + tree_mib > limit_mib:
    sys.exit(f"too big: {wheels_mib + tree_mib:.1f} MiB > {limit_mib:g} MiB")
PY
