"""The text-embedding cache: location, keys, hits, atomic writes, corruption and listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zeroshot.base import cache
from zeroshot.cli import app
from zeroshot.model.models import resolve_spec
from zeroshot.text.classifier import text_cache_key
from zeroshot.text.prompts import resolve_prompt_set

from .conftest import ARCH


def build(checkpoint, *extra):
    result = CliRunner().invoke(
        app, ["build-prompts", "-m", ARCH, "-p", str(checkpoint), "--label", "cat", "--label", "dog", *extra]
    )
    return result


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ZEROSHOT_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "zeroshot"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "zeroshot"


def test_key_covers_everything_that_changes_numbers(checkpoint, tmp_path):
    spec = resolve_spec(ARCH, str(checkpoint))
    base = resolve_prompt_set(labels=["cat", "dog"])
    keys = {
        text_cache_key(spec, base),
        text_cache_key(spec, resolve_prompt_set(labels=["dog", "cat"])),  # class order
        text_cache_key(spec, resolve_prompt_set(labels=["cat", "dog", "cow"])),
        text_cache_key(spec, resolve_prompt_set(labels=["cat", "dog"], dataset="cifar10")),  # templates
        text_cache_key(resolve_spec("ViT-B-32", str(checkpoint)), base),  # architecture
        text_cache_key(resolve_spec(ARCH, "openai"), base),  # weights tag
    }
    assert len(keys) == 6
    # Same content under another name: same weights identity. Different content: different key.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert text_cache_key(resolve_spec(ARCH, str(copy)), base) == text_cache_key(spec, base)
    with copy.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert text_cache_key(resolve_spec(ARCH, str(copy)), base) != text_cache_key(spec, base)
    assert json.loads(text_cache_key(spec, base))["open_clip"]


def test_second_build_is_a_hit_with_identical_weights(checkpoint):
    first = build(checkpoint)
    assert first.exit_code == 0, first.output
    rec1 = json.loads(first.stdout)
    assert rec1["cache_hit"] is False and rec1["classes"] == 2 and rec1["prompts"] == 14
    path = Path(rec1["cache_file"])
    assert path.is_file() and path.parent.parent == cache.cache_dir()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    before = path.read_bytes()
    second = build(checkpoint)
    rec2 = json.loads(second.stdout)
    assert rec2["cache_hit"] is True and rec2["cache_file"] == rec1["cache_file"]
    assert path.read_bytes() == before
    forced = json.loads(build(checkpoint, "--force").stdout)
    assert forced["cache_hit"] is False


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "not-unit", "empty"])
def test_damaged_entry_is_reported_and_rebuilt(checkpoint, damage):
    rec = json.loads(build(checkpoint).stdout)
    path = Path(rec["cache_file"])
    good = cache.load_entry(path, cache.read_metadata(path)["key"], 2).weights.copy()
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.numpy import save

        meta = cache.read_metadata(path)
        weights = good.copy()
        if damage == "foreign":
            meta["key"] = meta["key"].replace("cat", "cow")
        else:
            weights *= 3.0
        path.write_bytes(save({"weights": weights}, metadata=meta))
    again = build(checkpoint)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["cache_hit"] is False
    warning = again.stderr.strip().splitlines()
    assert len(warning) == 1 and "unusable" in warning[0] and "rebuilding" in warning[0]
    rebuilt = cache.load_entry(path, cache.read_metadata(path)["key"], 2).weights
    np.testing.assert_allclose(rebuilt, good, atol=1e-6)
    assert json.loads(build(checkpoint).stdout)["cache_hit"] is True


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "entry.bin"
    cache.atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", boom)
    with pytest.raises(OSError):
        cache.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.bin"]


def test_cache_command_lists_and_clears(checkpoint):
    build(checkpoint)
    listing = CliRunner().invoke(app, ["cache", "--json"])
    assert listing.exit_code == 0
    info = json.loads(listing.stdout)
    assert info["cache_dir"] == str(cache.cache_dir())
    texts = [e for e in info["entries"] if e["kind"] == "text-classifier"]
    assert len(texts) == 1 and texts[0]["classes"] == 2  # a number, for jq comparisons
    assert {e["kind"] for e in info["entries"]} == {"text-classifier", "checkpoint-hash"}  # and the file's hash
    table = CliRunner().invoke(app, ["cache"])
    assert "text classifiers\t1\t1\t" in table.stdout and "labels+default" in table.stdout
    cleared = json.loads(CliRunner().invoke(app, ["cache", "--clear"]).stdout)
    assert (cleared["removed"], cleared["bytes_freed"], cleared["left"]) == (2, info["bytes"], [])
    assert json.loads(CliRunner().invoke(app, ["cache", "--json"]).stdout)["entries"] == []
    build(checkpoint)
    assert json.loads(CliRunner().invoke(app, ["cache", "clear"]).stdout)["removed"] == 2
    assert CliRunner().invoke(app, ["cache", "wipe"]).exit_code == 2


def test_classify_uses_and_fills_the_same_cache(checkpoint, image_dir):
    args = [
        "classify",
        str(image_dir / "a.png"),
        "-m",
        ARCH,
        "-p",
        str(checkpoint),
        "--label",
        "cat",
        "--label",
        "dog",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0
    assert len(cache.list_entries()) == 1
    rec = json.loads(build(checkpoint).stdout)
    assert rec["cache_hit"] is True
    nocache = CliRunner().invoke(app, [*args, "--no-cache"])
    assert nocache.stdout == first.stdout


def test_cache_hit_needs_no_torch(checkpoint):
    import subprocess
    import sys

    args = ["build-prompts", "-m", ARCH, "-p", str(checkpoint), "--label", "cat", "--device", "cpu"]
    assert json.loads(CliRunner().invoke(app, args).stdout)["cache_hit"] is False
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from zeroshot.cli import app\n"
        f"out = CliRunner().invoke(app, {args!r}).stdout\n"
        "print(json.loads(out)['cache_hit'], 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


@pytest.fixture
def opens(monkeypatch):
    """Counts every opening of a file by path: Python's own, safetensors' ``safe_open`` and ``load_file``."""
    import builtins

    import safetensors
    import safetensors.numpy

    seen: list[str] = []

    def counting(fn):
        def wrapper(path, *args, **kwargs):
            seen.append(str(path))
            return fn(path, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: counting(builtins.open)(self, *a, **k))
    monkeypatch.setattr(safetensors, "safe_open", counting(safetensors.safe_open))
    monkeypatch.setattr(safetensors.numpy, "load_file", counting(safetensors.numpy.load_file))
    return seen


def test_an_entry_is_read_once_to_load_and_once_to_list(checkpoint, opens):
    """safetensors reads the header and the tensor from one opening: loading an entry opens it
    once, listing opens each entry once (and reads no tensor)."""
    path = Path(json.loads(build(checkpoint).stdout)["cache_file"])
    key = cache.read_metadata(path)["key"]
    opens.clear()
    entry = cache.load_entry(path, key, 2)
    assert entry.weights.shape[0] == 2 and opens == [str(path)]
    opens.clear()
    (listed,) = cache.list_entries()
    assert listed.meta["key"] == key and opens == [str(path)]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated"),
        (b"\x05\x00\x00", "truncated"),
        (b"\xff" * 8 + b"{}", "truncated or not a safetensors file"),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00{not js}", "header is not valid JSON"),
    ],
)
def test_a_damaged_entry_is_listed_with_its_problem_on_one_line(data, problem):
    path = cache.entry_path("ab" * 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    (listed,) = cache.list_entries()
    assert listed.problem is not None and problem in listed.problem and "\n" not in listed.problem
    with pytest.raises(cache.CorruptEntry, match=problem):
        cache.load_entry(path, "{}", 2)
    table = CliRunner().invoke(app, ["cache", "--json"])
    (shown,) = [e for e in json.loads(table.stdout)["entries"] if e.get("file") == str(path)]
    assert shown["problem"] == listed.problem
