"""The project's docs point only at things in the repository: every relative link and every path
they quote resolves to a file or folder here, and none reaches outside (`../shared/...`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a quoted repository path: `seekd/engine/scheduler.py`, `benchmarks/results/x.json`, `engine/structured/`
QUOTED_PATH = re.compile(r"`((?:[\w.-]+/)+(?:[\w.-]+\.(?:py|md|json|yml|yaml|toml))?)`")


def project_docs() -> list[Path]:
    """Markdown files git tracks (or would: untracked but not ignored), outside tests' fixtures."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


DOCS = project_docs()


def test_the_docs_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/architecture.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        resolved = (doc.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_doc_points_at_the_shared_folder_outside_the_repository(doc: Path) -> None:
    assert "../shared" not in doc.read_text(), f"{doc.name} mentions ../shared"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_quoted_paths_exist(doc: Path) -> None:
    """Paths are quoted from the repository root or, for modules, from the package (`server/app.py`)."""
    for path in QUOTED_PATH.findall(doc.read_text()):
        candidates = [ROOT / path, ROOT / "seekd" / path, doc.parent / path]
        assert any(c.exists() for c in candidates), f"{doc.name}: `{path}` names nothing in the repository"
