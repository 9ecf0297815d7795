"""The manual builds: ``mkdocs build --strict`` passes offline (no broken link or anchor, no page
outside the navigation), and would fail on each of those; README's links into it resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (the dev extra includes it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_manual_builds_strictly(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index  # theme.font: false, the site reads offline
    # the architecture page is ARCHITECTURE.md itself, included at build time (one copy)
    architecture = (tmp_path / "site" / "architecture" / "index.html").read_text(encoding="utf-8")
    first_heading = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    assert first_heading in architecture
    assert (tmp_path / "site" / "reference" / "cli" / "classify" / "index.html").is_file()


def test_a_broken_link_an_anchor_or_a_page_outside_the_nav_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copy(ROOT / "ARCHITECTURE.md", copy)
    (copy / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    page = copy / "docs" / "guides" / "photos.md"
    page.write_text(page.read_text() + "\n[gone](no-such-page.md) [lost](videos.md#no-such-heading)\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert "orphan.md" in done.stderr
    assert "no-such-page.md" in done.stderr
    assert "no-such-heading" in done.stderr


def slug(heading: str) -> str:
    from markdown.extensions.toc import slugify

    return slugify(re.sub(r"[`*]", "", heading), "-")


def test_readme_links_resolve() -> None:
    """README.md is not part of the site, so mkdocs does not check it: its relative links, and the
    headings they point at, are checked here (they work on GitHub the same way)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?!https?:)[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert len(links) > 20
    for target, anchor in links:
        path = ROOT / target
        assert path.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{target}#{anchor}"


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "scripts/demo    # install into .venv, then classify examples/ with the bundled fashion-mini model" in text
    assert "scripts/test    # install into .venv, then ruff, mypy and the whole test suite (offline)" in text
