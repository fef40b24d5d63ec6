"""The short sha256 forms AUTOMATIC1111 writes in ``parameters`` (``Model hash``, ``Lora hashes``), which Civitai and
A1111-style readers use to link the resources.

- ``Model hash``: the first 10 hex digits of the file's sha256 (A1111's "shorthash").
- ``Lora hashes``: ``"name: <12 hex digits>"`` of the LoRA's hash; for a .safetensors file A1111 hashes the tensor
  data only (the bytes after the JSON header: the "addnet" hash, stable when only the file's metadata changes).

Only files flux_vector reads are hashed (a single-file transformer, the LoRA file); a diffusers folder of several
files has no such hash. Hashes are kept in ``<cache>/weight_hashes.json`` keyed by path, size and mtime, so a large
file is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MODEL_HASH_DIGITS = 10
LORA_HASH_DIGITS = 12
_BLOCK = 1 << 20
_CACHE_FILE = "weight_hashes.json"


def _sha256(path: Path, *, skip_safetensors_header: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            header = f.read(8)
            if len(header) == 8:
                f.seek(8 + int.from_bytes(header, "little"))
            else:
                f.seek(0)
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(path: Path, kind: str, compute) -> str:
    from ..cache import default_cache_dir

    stat = path.stat()
    key = f"{kind}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache_file = default_cache_dir() / _CACHE_FILE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if isinstance(cache.get(key), str):
        return cache[key]
    value = compute()
    cache[key] = value
    try:  # best effort: a read-only cache folder only means hashing again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(cache))
        staging.replace(cache_file)
    except OSError:
        pass
    return value


def model_hash(path: str | os.PathLike) -> str:
    """A1111's ``Model hash`` of a single weights file: the first 10 hex digits of its sha256."""
    file = Path(path)
    return _cached(file, "sha256", lambda: _sha256(file, skip_safetensors_header=False))[:MODEL_HASH_DIGITS]


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's hash of a LoRA in ``Lora hashes``: 12 hex digits of the sha256 of a .safetensors file's tensor data
    (of the whole file for other formats)."""
    file = Path(path)
    data_only = file.suffix == ".safetensors"
    kind = "addnet" if data_only else "sha256"
    return _cached(file, kind, lambda: _sha256(file, skip_safetensors_header=data_only))[:LORA_HASH_DIGITS]


def weights_identity(model: str | None, lora: str | os.PathLike | None) -> dict[str, str]:
    """What a pipeline's record adds about its weight files: ``model_hash`` (a single-file model), ``lora_file`` (the
    LoRA file's own name) and ``lora_hash``. Names only, never a path; nothing for weights that cannot be found."""
    from ..models import WeightsNotFound, is_single_file, resolve_lora

    found: dict[str, str] = {}
    if model is not None and is_single_file(model):
        found["model_hash"] = model_hash(Path(model).expanduser())
    if lora is not None and str(lora).lower() != "none" and model is not None:
        try:
            lora_file = resolve_lora(lora, model)
        except (WeightsNotFound, OSError):
            lora_file = None
        if lora_file is not None:
            found["lora_file"] = lora_file.name
            found["lora_hash"] = lora_hash(lora_file)
    return found
