"""Every relative link in the README and docs/ resolves, and every file the code or docs name by path exists
(issue 25: STACK_NOTES.md and the SDK wire notes were referenced but not in the repository)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_notes_the_code_refers_to_are_in_the_repository():
    for name in ("docs/STACK_NOTES.md", "docs/SEGMIND_SDK_WIRE.md", "docs/spec/segmind_simple_vector_flux_page.txt"):
        assert (ROOT / name).is_file(), name
    assert "docs/SEGMIND_SDK_WIRE.md" in (ROOT / "flux_vector/facade/http.py").read_text()
    assert "docs/STACK_NOTES.md" in (ROOT / "pyproject.toml").read_text()


def test_the_readme_documents_every_environment_variable_the_code_reads():
    readme = (ROOT / "README.md").read_text()
    names = set()
    for source in (ROOT / "flux_vector").rglob("*.py"):
        names |= set(re.findall(r"\bFLUX_VECTOR_[A-Z_]+\b", source.read_text()))
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, missing
