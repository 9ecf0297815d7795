"""The package's modules import each other without loops, and only downwards through the layers of
ARCHITECTURE.md: each import, at the top of a module or inside a function or an ``if TYPE_CHECKING``
block, is an edge. The module paths of 0.1 still import, as the same modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zeroshot"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (``from . import x`` is an import of ``x``)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                found = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            # the package itself is imported before any of its modules: not an edge
            graph[name].update(t for t in found if t in modules and t not in (name, PACKAGE.name))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_imports_of_every_kind():
    graph = import_graph()
    assert "zeroshot.base.errors" in graph["zeroshot.image.reading"]  # at the top, two levels up
    assert "zeroshot.image.reading" in graph["zeroshot.image.images"]  # inside a function
    assert "zeroshot.cli.common" in graph["zeroshot.cli.classify"]  # relative, within a folder
    assert "zeroshot.image.video" in graph["zeroshot.towers.pipeline"]  # from ..image import video
    assert "zeroshot.uses.evaluate" in graph["zeroshot.uses.calibration"]  # if TYPE_CHECKING


def test_no_import_loops():
    assert cycles(import_graph()) == []


def test_a_loop_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Lowest first. A module may import its own folder and the layers below its own; the text side and
# the image side share a layer and do not import each other.
LAYERS = {
    "base": 0,
    "model": 1,
    "text": 2,
    "image": 2,
    "towers": 3,
    "uses": 4,
    "assembly": 5,
    "engines": 6,
    "client": 6,  # zeroshot.Client and classify --server's sender: the standard library and base only
    "api": 7,  # the package itself: the library's API
    "serve": 8,  # the HTTP face: routes, batching and limits over the library
    "cli": 9,
    "__main__": 10,
}


def part(module: str) -> str:
    """The folder (or top-level module) a module belongs to."""
    return module.split(".")[1] if "." in module else "api"  # the package itself


def layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in graph.items():
        for other in imported:
            mine, theirs = part(module), part(other)
            if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module} -> {other}")
    return sorted(bad)


def test_every_module_has_a_layer():
    assert {part(m) for m in import_graph()} <= set(LAYERS)


def test_imports_go_down_the_layers():
    assert layer_breaches(import_graph()) == []


def test_a_breach_is_found():
    graph = {
        "zeroshot.text.classifier": {"zeroshot.image.imagecache", "zeroshot.model.models"},
        "zeroshot.image.images": {"zeroshot.uses.ranking"},
        "zeroshot.uses.ranking": set(),
    }
    assert layer_breaches(graph) == [
        "zeroshot.image.images -> zeroshot.uses.ranking",
        "zeroshot.text.classifier -> zeroshot.image.imagecache",
    ]


def test_no_old_module_paths_and_no_import_hooks():
    """0.1's flat module paths were never released and are gone: no meta-path finder rewrites
    modules, so ``zeroshot.models`` is simply missing (in a fresh process, and from ``python -m``)."""
    import subprocess
    import sys

    code = """
import importlib, sys
before = list(sys.meta_path)
import zeroshot
assert sys.meta_path == before, sys.meta_path
for old in ("models", "pipeline", "catalog", "cache", "ranking"):
    try:
        importlib.import_module("zeroshot." + old)
    except ModuleNotFoundError as e:
        assert e.name == "zeroshot." + old, e.name
    else:
        raise AssertionError(old)
print("ok")
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    ran = subprocess.run([sys.executable, "-m", "zeroshot.catalog", "--write"], capture_output=True, text=True)
    assert ran.returncode == 1 and ran.stderr.strip().endswith("No module named zeroshot.catalog"), ran.stderr
    assert "AttributeError" not in ran.stderr
