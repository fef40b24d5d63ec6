"""docs/ARCHITECTURE.md matches the code: every module it names exists, and no layer imports one above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flux_vector"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# Lowest first; a module may import its own layer and the layers below (docs/ARCHITECTURE.md, "Layers").
LAYERS = [
    {
        "request",
        "sampling",
        "vectorize",
        "bfl",
        "offload",
        "quantize",
        "cache",
        "tiny",
        "demo",
        "pipeline_factory",
        "paths",
        "quiet",
    },
    {"models", "image_metadata", "comfy"},
    {"prompt", "lora", "fast"},
    {"pipeline"},
    {"jobs", "serving", "batching"},
    {"server", "facade"},
    {"cli", "doctor"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_top_levels(path: Path) -> set[str]:
    """The flux_vector top-level modules ``path`` imports (module-level and inside functions)."""
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "flux_vector":
                    continue
                targets = [parts[1:]] if len(parts) > 1 else [[alias.name] for alias in node.names]
            else:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                module = (node.module or "").split(".") if node.module else []
                targets = [base + module] if base + module else [[alias.name] for alias in node.names]
            found.update(t[0] for t in targets if t and t[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "flux_vector" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_is_in_a_layer():
    modules = {top_level(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert modules - set(LAYER_OF) == set(), "add new top-level modules to LAYERS and to docs/ARCHITECTURE.md"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = top_level(path)
    if own in ("__init__", "__main__"):
        return
    above = {name for name in imported_top_levels(path) if LAYER_OF.get(name, -1) > LAYER_OF[own]}
    assert not above, f"{path.relative_to(ROOT)} imports {sorted(above)}, a layer above {own!r}"


def test_nothing_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if top_level(path) != "cli":
            assert "cli" not in imported_top_levels(path), path


def test_every_module_the_architecture_page_names_exists():
    names = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", DOC.read_text()))
    assert len(names) > 25
    missing = []
    for name in sorted(names):
        if name.startswith(("tests/", "docs/")):
            target = ROOT / name
        else:
            target = PACKAGE / name
            if not target.exists():  # a path given relative to its package, e.g. `samplers/` under sampling/
                target = next(PACKAGE.rglob(name.rstrip("/")), target)
        if not target.exists():
            missing.append(name)
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"
