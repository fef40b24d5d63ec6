"""docs/ARCHITECTURE.md matches the code: every module it names exists, no layer imports one above it (the root
package, whose public names re-export the facade, counts as the top layer), and no module-level import cycle."""

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
        "gguf_model",
        "offload",
        "quantize",
        "fp8_linear",
        "memory_tiers",
        "cache",
        "tiny",
        "demo",
        "pipeline_factory",
        "paths",
        "quiet",
        "version",
        "output_formats",
        "safe_files",
        "image_chunks",
        "timesteps",
        # which weights, and how an image records (and reads back) how it was made: they import only leaves, and
        # output_formats (a leaf) writes each image's record through image_metadata
        "models",
        "image_metadata",
        "comfy",
        # the files a single-file model loads with (ComfyUI's): reads bfl, models and demo's tokenizers
        "single_file",
    },
    {"prompt", "lora", "fast"},
    {"pipeline"},
    {"jobs", "serving", "batching"},
    {"server", "facade"},
    {"cli", "doctor"},
]
ROOT_PACKAGE = "flux_vector"  # ``from flux_vector import X`` / ``from .. import X``: the root's public names
LAYERS.append({ROOT_PACKAGE})  # the root re-exports the facade: importing it is importing the top of the stack
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def is_module(parts: list[str]) -> bool:
    """``parts`` (relative to the package) name a module or a subpackage, not an attribute of one."""
    where = PACKAGE.joinpath(*parts)
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def imported_modules(path: Path, nodes=None) -> set[tuple[str, ...]]:
    """The flux_vector modules ``path`` imports, as parts relative to the package (``()`` is the root package):
    ``from x import name`` counts as importing ``x.name`` when that is a module, else ``x``."""
    package_parts = path.relative_to(PACKAGE).parent.parts
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text())) if nodes is None else nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "flux_vector":
                    continue
                base = parts[1:]
            else:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                base += node.module.split(".") if node.module else []
            for alias in node.names:
                found.add(tuple(base + [alias.name]) if is_module(base + [alias.name]) else tuple(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "flux_vector":
                    found.add(tuple(parts[1:]))
    return found


def imported_top_levels(path: Path) -> set[str]:
    """The flux_vector top-level modules ``path`` imports (module-level and inside functions); ``ROOT_PACKAGE`` for
    a name taken from the root package itself."""
    return {parts[0] if parts else ROOT_PACKAGE for parts in imported_modules(path)}


def test_every_module_is_in_a_layer():
    modules = {top_level(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert ROOT_PACKAGE not in modules
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


def module_of(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def module_level_imports(path: Path) -> set[tuple[str, ...]]:
    """What importing ``path`` imports: its top-level statements, ``if TYPE_CHECKING:`` blocks included (a type
    checker follows them), not the imports inside functions (they run later, when the cycle is complete)."""
    nodes = []
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.If, ast.Try)):
            pending.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            pending.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
        else:
            nodes.append(node)
    own = module_of(path)
    # importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those are not cycles of this module's making
    return {m for m in imported_modules(path, nodes) if m != own and own[: len(m)] != m}


def test_no_import_cycle():
    graph = {module_of(p): module_level_imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[tuple[str, ...], str] = {}
    cycles: list[str] = []

    def visit(node: tuple[str, ...], trail: list[tuple[str, ...]]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                loop = trail[trail.index(target) :] + [target] if target in trail else [node, target]
                cycles.append(" -> ".join(".".join(m) or ROOT_PACKAGE for m in loop))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"module-level import cycles: {cycles}"


LIGHT_MODULES = ["flux_vector", "flux_vector.sampling", "flux_vector.request", "flux_vector.version"]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_a_light_import_loads_neither_the_facade_nor_the_job_layer(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('flux_vector.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("flux_vector.facade", "flux_vector.jobs", "flux_vector.pipeline"):
        assert f"'{heavy}" not in loaded, f"import {module} loaded {heavy}: {loaded}"


def test_the_job_layer_imports_no_lora_and_the_worker_parses_no_request():
    """The request is parsed once at the edge and carried through the store; what a loaded model does with it
    (the LoRA strength rules, the switch) is the pipeline's ``prepare``, not the job layer's."""
    for path in (PACKAGE / "jobs").rglob("*.py"):
        assert not any(parts[:1] == ("lora",) for parts in imported_modules(path)), path
    worker = (PACKAGE / "jobs" / "worker.py").read_text()
    assert "parse_request" not in worker and "lora_strength" not in worker
