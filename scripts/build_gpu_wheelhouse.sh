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
  bitsandbytes==0.50.2 torchao==0.18.0 gguf==0.19.0
  torchsde==0.2.6 trampoline==0.1.2
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
)
# What the GPU machine's image already holds (the device tool's KINDS.md, read 2026-11-17), lower-case, '-' form,
# with the version where KINDS.md's pip list gives one (name==version); a bare name: present, version not known.
GPU_HAS="accelerate==1.15.0 anyio certifi charset-normalizer filelock fsspec h11 hf-xet httpcore httpx
huggingface-hub==1.33.0 idna jinja2 markupsafe mpmath networkx numpy==2.5.2 nvidia-ml-py packaging peft pillow
protobuf psutil pyyaml regex requests safetensors==0.8.0 scipy sentencepiece==0.2.2 setuptools sympy
tokenizers==0.23.2 torch==2.11.0 tqdm transformers==5.17.0 triton==3.6.0 typing-extensions urllib3 zipp
prometheus-client click"
# Requirements the GPU image does not meet that a GPU run accepts, one per line (NAME: why); any other unmet version
# fails the build. torch cannot be carried (gigabytes against the device tool's 64 MiB); transformers 5.25 would
# bring huggingface-hub 2.x, typer and kernels. The GPU run builds the models from configs with random weights and
# reads the tiny checkpoint's tokenizer files (no hub, no sentencepiece model), and gpu_run.sh writes every version
# it ran with into env.json: its figures say which torch they come from.
ACCEPTED=${ACCEPTED:-"torch: the image's torch is used (a wheel is gigabytes); gpu_run.sh reports the version
transformers: the image's is used (models built from configs); gpu_run.sh reports the version
huggingface-hub: the GPU run reads no hub; gpu_run.sh reports the version
sentencepiece: the GPU run's tokenizers are tokenizers-library files; gpu_run.sh reports the version"}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"

"$PYTHON" - "$DEST" "$BNB_CUDA" "$CARRY_LIMIT_MIB" "$GPU_HAS" "$ACCEPTED" "$PY_VERSION" <<'PY'
"""Slim bitsandbytes to the one CUDA build the GPU machine loads; check every requirement's VERSION (the carried
wheels' and flux_vector's own pyproject) against what is carried or on the GPU image; check the size."""
import re, subprocess, sys, tomllib, zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

dest, bnb_cuda, limit_mib = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
gpu_has = {}
for item in sys.argv[4].split():
    name, _, version = item.partition("==")
    gpu_has[name] = version or None
accepted = dict(line.split(":", 1) for line in sys.argv[5].splitlines() if ":" in line)
accepted = {k.strip(): v.strip() for k, v in accepted.items()}
marker_env = {"python_version": sys.argv[6], "python_full_version": sys.argv[6] + ".0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "os_name": "posix", "extra": ""}


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

carried = {}
for wheel in wheels:
    name, version = wheel.name.split("-")[:2]
    carried[norm(name)] = version


def check(requirement: str, who: str, problems: list[str], notes: list[str]) -> None:
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate(marker_env):
        return
    name = norm(req.name)
    if name in carried:
        where, version = "carried", carried[name]
    elif name in gpu_has:
        where, version = "on the GPU image", gpu_has[name]
    else:
        problems.append(f"{who}: {requirement}: neither carried nor on the GPU machine")
        return
    if version is None:
        if req.specifier:
            notes.append(f"{who}: {requirement}: {where}, its version not known (not checked)")
        return
    if req.specifier and not req.specifier.contains(Version(version), prereleases=True):
        line = f"{who}: {requirement}: {where} is {version}"
        if name in accepted and where != "carried":
            notes.append(f"{line} -- accepted: {accepted[name]}")
        else:
            problems.append(line)


problems, notes = [], []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            check(line.split(":", 1)[1].strip(), wheel.name, problems, notes)
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
run_needs = {"torch", "numpy", "scipy", "torchsde", "safetensors", "diffusers", "transformers", "accelerate",
             "tokenizers", "sentencepiece", "huggingface-hub", "pydantic", "pillow", "tqdm", "bitsandbytes"}
for dependency in project["dependencies"]:  # what the GPU run imports (not the server's packages)
    if norm(Requirement(dependency).name) in run_needs:
        check(dependency, "flux_vector", problems, notes)
for dependency in project["optional-dependencies"]["fast"]:
    check(dependency, "flux_vector[fast]", problems, notes)
for note in notes:
    print("note:", note)
if problems:
    sys.exit("requirements the GPU run would not meet:\n  " + "\n  ".join(problems))

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
