"""``--help`` groups every option and ends with examples, and the manual's command-line reference
(docs/reference/cli/, written by scripts/gen-cli-docs) is what ``--help`` prints today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from zeroshot.cli import app
from zeroshot.cli.helptext import EXAMPLES, ORDER, UNGROUPED

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen-cli-docs"


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_the_cli_reference_is_not_stale() -> None:
    done = generate("--check")
    assert done.returncode == 0, f"run scripts/gen-cli-docs:\n{done.stderr}"


def test_a_stale_or_missing_page_fails_the_check(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    pages = docs / "reference" / "cli"
    classify = pages / "classify.md"
    classify.write_text(classify.read_text().replace("--top-k", "--top-n"))
    (pages / "serve.md").unlink()
    (pages / "gone.md").write_text("# zeroshot gone\n")
    done = generate("--check", "--docs-dir", str(docs))
    assert done.returncode == 1
    assert f"stale: {classify}" in done.stderr
    assert f"stale: {pages / 'serve.md'}" in done.stderr
    assert f"left over: {pages / 'gone.md'}" in done.stderr
    assert "eval.md" not in done.stderr  # the pages that are right are not named
    # and writing puts them right
    assert generate("--docs-dir", str(docs)).returncode == 0
    assert generate("--check", "--docs-dir", str(docs)).returncode == 1  # gone.md is left for a person to delete
    (pages / "gone.md").unlink()
    assert generate("--check", "--docs-dir", str(docs)).returncode == 0
    assert classify.read_text() == (ROOT / "docs" / "reference" / "cli" / "classify.md").read_text()


def commands() -> dict[str, object]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_is_in_a_group_and_the_help_ends_with_examples(name: str) -> None:
    command = commands()[name]
    assert name in EXAMPLES and command.epilog and command.epilog.startswith("Examples:")  # type: ignore[attr-defined]
    if name in UNGROUPED:
        return
    options = [p for p in command.params if p.param_type_name == "option"]  # type: ignore[attr-defined]
    loose = [p.opts[0] for p in options if getattr(p, "rich_help_panel", None) not in ORDER]
    assert not loose, f"zeroshot {name}: options outside the groups of zeroshot.cli.helptext.PANELS: {loose}"
    shown = [p.rich_help_panel for p in options]
    assert shown == sorted(shown, key=ORDER.index), "the groups come in ORDER"


def test_help_shows_the_groups_defaults_and_examples() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zeroshot", "classify", "--help"], capture_output=True, text=True, timeout=60,
        env={"TERMINAL_WIDTH": "100", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    boxes = [line.split("─ ", 1)[1].split(" ─")[0] for line in out.splitlines() if line.startswith("╭─ ")]
    assert boxes == ["Arguments", "Input", "Classes and prompts", "Model", "Scoring", "Output", "Videos", "Speed",
                     "Cache", "Limits", "Engine", "Help"]  # fmt: skip
    assert "[default: 5]" in out  # --top-k
    assert out.index("Examples:") > out.index("╭─ Help")
    assert "$ zeroshot classify photos/ --label cat --label dog" in out
