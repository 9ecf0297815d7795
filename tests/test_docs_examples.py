"""Every shell example in README.md and docs/ that can run offline is run, and its shown output checked.

An example is a fenced ``console`` block: ``$ COMMAND`` lines (a line ending in ``\\`` goes on to the
next), each followed by the output it shows. A block's commands run in order in one bash, in a
folder holding a copy of ``examples/`` (as a fresh clone has it), with ``zeroshot`` on PATH and one
cache folder for the whole module (its CPU-engine export made first, so no first-run note shows).
What a command prints, stdout and stderr as a terminal shows them, is compared with the lines shown:
a line ``...`` stands for any number of lines, ``...`` inside a line for any text; a command that
shows nothing is not compared. A command that fails (exit status not 0) fails the example, unless
the next command is ``echo $?``, which shows its status.

A block that cannot run offline (a real CLIP download, a GPU, a Ray cluster, a running server, the
user's own photos) says so in an HTML comment on the line before it: ``<!-- not run: REASON -->``.
Other fences (``bash``, ``text``, ``python``, ...) are not run; a runnable shell example is a
``console`` block. :func:`test_the_examples_are_counted` holds the counts to what the manual claims.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"<!--\s*not run:\s*(?P<why>.+?)\s*-->")


@dataclass
class Command:
    line: int
    text: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Example:
    file: str
    line: int
    commands: list[Command]
    skipped: str | None

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples_in(path: Path) -> list[Example]:
    """The ``console`` blocks of one Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, marks, language = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(marks):
            end += 1
        if language == "console":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skipped = SKIP.search(before)
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]]
            found.append(Example(str(path.relative_to(ROOT)), i + 1, parse(body, i + 2), skipped and skipped["why"]))
        i = end + 1
    return found


def parse(body: list[str], first_line: int) -> list[Command]:
    """A block's commands. A line ending in ``\\`` goes on to the next; a here-document (``<<'EOF'``)
    takes the lines up to its delimiter; then come the lines the command shows."""
    commands: list[Command] = []
    going_on, until = False, None
    for n, line in enumerate(body, first_line):
        if going_on or until is not None:
            commands[-1].text += "\n" + line
            going_on = line.endswith("\\")
            until = None if line == until else until
        elif line.startswith("$ "):
            commands.append(Command(n, line[2:]))
            going_on = line.endswith("\\")
            heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
            until = heredoc[1] if heredoc else None
        elif commands:
            commands[-1].shown.append(line.rstrip())
        elif line.strip():
            raise AssertionError(f"line {n}: output before any $ command")
    for c in commands:
        while c.shown and not c.shown[-1]:
            c.shown.pop()
    return commands


ALL = [e for path in doc_files() for e in examples_in(path)]
RUN = [e for e in ALL if not e.skipped]


def matches(shown: list[str], got: list[str]) -> bool:
    """``got`` fits ``shown``: line by line, ``...`` alone matching any lines, inside a line any text."""
    if not shown:
        return not got
    head = shown[0]
    if head.strip() == "...":
        return any(matches(shown[1:], got[k:]) for k in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, got[0].rstrip()) is not None and matches(shown[1:], got[1:])


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("docs-cache")
    bin_dir = Path(sys.executable).parent
    # a user's environment: the suite's own settings (ZEROSHOT_RUNTIME=torch, the cache) left out
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROSHOT_") or k == "ZEROSHOT_FASHION_MNIST_DIR"}
    env.update(
        ZEROSHOT_CACHE_DIR=str(cache), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1",
        HF_HUB_OFFLINE="1", HF_ENDPOINT="https://hub.invalid", LC_ALL="C.UTF-8",
    )  # fmt: skip
    # the CPU engine's export, once, so that no example shows its "once" note
    subprocess.run(
        ["zeroshot", "classify", str(ROOT / "examples/fashion/bag-0018.png"), "-m", "fashion-mini", "--label", "bag"],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return env


def run_example(example: Example, env: dict[str, str], work: Path) -> list[tuple[str, int]]:
    """Run the block's commands in one bash in ``work``; each command's output and exit status."""
    shutil.copytree(ROOT / "examples", work / "examples")
    out = work.parent / (work.name + "-out")
    out.mkdir()
    script = ["__rc=0"]
    for i, command in enumerate(example.commands):
        script.append(
            f"(exit $__rc); {{ {command.text}\n}} >{out}/{i} 2>&1 </dev/null; __rc=$?; echo $__rc >{out}/{i}.rc"
        )
    subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, timeout=300, check=False)
    results = []
    for i in range(len(example.commands)):
        text = (out / str(i)).read_text(encoding="utf-8", errors="replace")
        results.append((text, int((out / f"{i}.rc").read_text())))
    return results


@pytest.mark.parametrize("example", RUN, ids=[e.name for e in RUN])
def test_example_runs_as_shown(example: Example, shell_env: dict[str, str], tmp_path: Path) -> None:
    if (
        any(re.search(r"\bjq\b", c.text) for c in example.commands)
        and shutil.which("jq", path=shell_env["PATH"]) is None
    ):
        pytest.skip("jq is not installed (apt-get install jq): this example pipes records into it")
    work = tmp_path / "work"
    work.mkdir()
    results = run_example(example, shell_env, work)
    for n, (command, (output, rc)) in enumerate(zip(example.commands, results, strict=True)):
        where = f"{example.file}:{command.line}: $ {command.text}"
        shows_status = n + 1 < len(example.commands) and example.commands[n + 1].text.strip() == "echo $?"
        assert rc == 0 or shows_status, f"{where}\nexit status {rc}; it printed:\n{output}"
        if command.shown:
            got = [line.rstrip() for line in output.splitlines()]
            while got and not got[-1]:
                got.pop()
            assert matches(command.shown, got), (
                f"{where}\nshows:\n" + "\n".join(command.shown) + "\nprinted:\n" + "\n".join(got)
            )


def test_the_examples_are_counted() -> None:
    """The manual's examples are mostly run, and each one left out says why."""
    assert len(ALL) >= 20, [e.name for e in ALL]
    assert len(RUN) >= 15, [e.name for e in RUN]
    for e in ALL:
        assert e.commands, f"{e.name}: a console block without a $ command"
        if e.skipped:
            assert len(e.skipped) > 10, f"{e.name}: say why it is not run"


def test_the_matcher_holds_output_to_what_is_shown() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert matches(["score 0.9..."], ["score 0.9971"])
    assert not matches(["a", "b"], ["a", "b", "c"])
    assert not matches(["score 0.9..."], ["score 0.8971"])
    assert not matches(["a"], [])


def test_a_wrong_example_fails(shell_env: dict[str, str], tmp_path: Path) -> None:
    """The runner itself: a command that fails, and output that differs from what is shown, are caught."""
    body = ["$ zeroshot classify examples/fashion/bag-0018.png -m fashion-mini -d fashion-mnist -f table",
            "...", "│ examples/fashion/bag-0018.png │ coat ...", "...",
            "$ zeroshot classify nothing-here.png -m fashion-mini --label bag", "$ echo $?", "1"]  # fmt: skip
    example = Example("made-up.md", 1, parse(body, 2), None)
    (work := tmp_path / "work").mkdir()
    (classified, rc), (missing, missing_rc), (status, _) = run_example(example, shell_env, work)
    assert rc == 0 and "bag" in classified
    assert not matches(example.commands[0].shown, classified.splitlines())  # it says bag, not coat
    assert missing_rc == 1 and '"error"' in missing
    assert status.strip() == "1"
