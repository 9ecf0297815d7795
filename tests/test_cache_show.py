"""``zeroshot cache show`` lists every kind of file zeroshot keeps in its cache folder, and ``clear``
frees exactly what ``show`` counted as zeroshot's: run from outside, as a user runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zeroshot.model.models import BUNDLED_NAME

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
HEX = "ab" * 32  # a name shaped like the cache's own (a SHA-256 digest)


def console(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ZEROSHOT, *args], capture_output=True, text=True, env=env, timeout=300)


def walk_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) of everything under ``root`` that is not a folder, links not followed."""
    files = size = 0
    for folder, dirs, names in os.walk(root):  # os.walk does not descend into linked folders
        for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            files += 1
            size += (Path(folder) / name).lstat().st_size
    return files, size


def show_json(env: dict[str, str]) -> dict:
    done = console("cache", "show", "--json", env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return json.loads(done.stdout)


def test_show_lists_every_kind_a_run_writes_and_clear_frees_what_show_counted(tmp_path):
    """A first run with the CPU engine and --cache-images writes a text classifier, the engine's
    export, an image-embedding database and a checkpoint hash memo: each is listed with its files
    and bytes, the total is the folder's, and ``clear`` frees that many bytes."""
    root = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "ZEROSHOT_RUNTIME"}  # the default: ONNX Runtime
    env["ZEROSHOT_CACHE_DIR"] = str(root)
    pictures = [str(p) for p in sorted(EXAMPLES.glob("*.png"))[:2]]
    run = console("classify", *pictures, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q", "--cache-images",
                  env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    files, size = walk_bytes(root)
    assert size > 1_000_000  # the exported image tower is most of it

    info = show_json(env)
    kinds = {k["kind"]: k for k in info["kinds"]}
    assert (info["files"], info["bytes"]) == (files, size)
    assert sum(k["bytes"] for k in kinds.values()) == size and sum(k["files"] for k in kinds.values()) == files
    for kind, folder in (("text-classifier", "text"), ("image-embeddings", "images"), ("checkpoint-hash", "hashes")):
        assert kinds[kind]["entries"] == 1, kind
        assert (kinds[kind]["files"], kinds[kind]["bytes"]) == walk_bytes(root / folder), kind
    engines, locks = kinds["onnx-engine"], kinds["lock"]  # the export, and the lock taken to make it
    assert engines["entries"] == 1 and (locks["entries"], locks["files"], locks["bytes"]) == (1, 1, 0)
    assert (engines["files"] + locks["files"], engines["bytes"]) == walk_bytes(root / "onnx")
    assert kinds["other"]["files"] == 0 and kinds["unfinished-write"]["files"] == 0
    by_kind = {e["kind"]: e for e in info["entries"]}
    text = by_kind["text-classifier"]  # the fields it always had, classes and templates as numbers
    assert text["classes"] == 10 and text["templates"] == 8 and text["name"] == "fashion-mnist"
    assert Path(text["file"]).parent == root / "text" and text["bytes"] == Path(text["file"]).stat().st_size
    engine = by_kind["onnx-engine"]
    assert engine["tower"] == "image" and engine["model"] == BUNDLED_NAME and engine["precision"] == "fp32"
    assert engine["files"] == 2 and engine["bytes"] == walk_bytes(Path(engine["path"]))[1]

    table = console("cache", env=env)  # piped: tab-separated lines
    assert table.returncode == 0, table.stderr
    rows = [line.split("\t") for line in table.stdout.splitlines()]
    named = {row[0]: row for row in rows if len(row) > 3}
    for kind in ("text classifiers", "CPU engine exports", "image embeddings", "checkpoint hashes"):
        assert kind in named, table.stdout
    assert named["CPU engine exports"][1:4] == ["1", "2", str(kinds["onnx-engine"]["bytes"])]
    assert f"{size:,} bytes in {files} files" in rows[0][0], table.stdout

    cleared = console("cache", "clear", env=env)
    assert cleared.returncode == 0 and cleared.stderr == "", cleared.stderr
    record = json.loads(cleared.stdout)
    assert (record["removed"], record["bytes_freed"]) == (files, size)
    assert record["left"] == [] and walk_bytes(root) == (0, 0)


def make_cache(root: Path, outside: Path) -> dict[str, list[Path]]:
    """A cache folder holding a file of every kind zeroshot writes, its leftovers, and things it
    did not write (a note, links out of the folder): what each is."""
    import sqlite3

    from safetensors.numpy import save

    text = root / "text" / f"{HEX}.safetensors"
    text.parent.mkdir(parents=True)
    weights = np.eye(2, 4, dtype="float32")
    text.write_bytes(
        save({"weights": weights}, metadata={"key": "{}", "name": "pets", "classes": "2", "templates": "1"})
    )
    broken = root / "text" / f"{'cd' * 32}.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    memo = root / "hashes" / f"{HEX}.sha256"
    memo.parent.mkdir()
    memo.write_text("0" * 64)
    db = root / "images" / f"{HEX}.sqlite"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE emb (digest TEXT PRIMARY KEY, data BLOB NOT NULL)")
    conn.close()
    (root / "images" / f"{HEX}.sqlite-wal").write_bytes(b"w" * 100)
    engine = root / "onnx" / HEX
    engine.mkdir(parents=True)
    (engine / "image.onnx").write_bytes(b"o" * 5000)
    (engine / "image.onnx.data").write_bytes(b"d" * 7000)
    key = {"kind": "onnx-image-tower", "precision": "int8", "model_key": json.dumps({"model": "ViT-B-32"})}
    (engine / "meta.json").write_text(json.dumps({"key": json.dumps(key), "precision": "int8"}))
    rejected = root / "onnx" / ("ef" * 32)
    rejected.mkdir()
    (rejected / "rejected.json").write_text(json.dumps({"key": "{}", "reason": "its text tower is another kind"}))
    lock = root / "onnx" / f"{HEX}.lock"
    lock.write_bytes(b"")
    unfinished = [root / "text" / f".{HEX}.safetensors.k2j3.tmp", root / "onnx" / ".export-x1y2" / "image.onnx",
                  root / "onnx" / ".export-x1y2" / "fp32" / "image.onnx"]  # fmt: skip
    for i, path in enumerate(unfinished):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"u" * (300 + i))
    outside.mkdir()
    (outside / "precious.txt").write_text("not zeroshot's" * 100)
    other = [root / "notes.txt", root / "text" / "mine.safetensors", root / "text" / f"{'aa' * 32}.safetensors",
             root / "onnx" / HEX / "README", root / "onnx" / "linked"]  # fmt: skip
    other[0].write_text("the user's own notes")
    other[1].write_bytes(b"x" * 10)
    other[2].symlink_to(outside / "precious.txt")  # a link named like an entry: still not ours
    other[3].write_text("a file zeroshot never writes there")
    other[4].symlink_to(outside, target_is_directory=True)
    return {"text-classifier": [text, broken], "checkpoint-hash": [memo],
            "image-embeddings": [db, db.with_name(db.name + "-wal")],
            "onnx-engine": [engine / "image.onnx", engine / "image.onnx.data", engine / "meta.json",
                            rejected / "rejected.json"],
            "lock": [lock], "unfinished-write": unfinished, "other": other}  # fmt: skip


def test_show_names_each_kind_and_clear_leaves_what_zeroshot_did_not_make(tmp_path):
    """Leftovers of interrupted writes and lock files are zeroshot's and go; a note, a file of
    another name, links (even named like an entry) are listed as "other" and left, their targets
    untouched; a damaged entry is listed with its problem on one line."""
    root, outside = tmp_path / "cache", tmp_path / "outside"
    made = make_cache(root, outside)
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(root)}
    info = show_json(env)
    kinds = {k["kind"]: k for k in info["kinds"]}
    for kind, paths in made.items():
        want = sum(p.lstat().st_size for p in paths)
        assert (kinds[kind]["files"], kinds[kind]["bytes"]) == (len(paths), want), kind
    assert (info["files"], info["bytes"]) == walk_bytes(root)
    assert kinds["onnx-engine"]["entries"] == 2 and kinds["image-embeddings"]["entries"] == 1
    entries = {e["path"]: e for e in info["entries"]}
    assert {str(p) for p in made["other"]} <= set(entries)
    problem = entries[str(made["text-classifier"][1])]["problem"]
    assert "\n" not in problem and "header" in problem
    engine = entries[str(root / "onnx" / HEX)]
    assert (engine["model"], engine["precision"], engine["files"]) == ("ViT-B-32", "int8", 3)
    assert "another kind" in entries[str(root / "onnx" / ("ef" * 32))]["reason"]

    ours = [p for kind, paths in made.items() if kind != "other" for p in paths]
    ours_bytes = sum(p.stat().st_size for p in ours)
    cleared = console("cache", "clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    record = json.loads(cleared.stdout)
    assert (record["removed"], record["bytes_freed"]) == (len(ours), ours_bytes)
    assert record["bytes_freed"] == info["bytes"] - kinds["other"]["bytes"]
    assert record["removed"] == info["files"] - kinds["other"]["files"]
    assert sorted(e["path"] for e in record["left"]) == sorted(map(str, made["other"]))
    assert not any(p.exists() for p in ours)
    assert all(os.path.lexists(p) for p in made["other"])
    assert (outside / "precious.txt").read_text() == "not zeroshot's" * 100
    note = cleared.stderr.strip().splitlines()
    assert len(note) == 1 and "left 5 files" in note[0] and "zeroshot did not make" in note[0], cleared.stderr
    assert walk_bytes(root) == (5, kinds["other"]["bytes"])
    assert stat.S_ISLNK(os.lstat(made["other"][4]).st_mode)


def test_show_of_a_missing_cache_folder_is_empty(tmp_path):
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(tmp_path / "none")}
    info = show_json(env)
    assert (info["files"], info["bytes"], info["entries"]) == (0, 0, [])
    assert json.loads(console("cache", "clear", env=env).stdout)["bytes_freed"] == 0
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1_234_567, 5 * 10**12, None])
def test_sizes_read_as_rich_writes_them(size):
    """Download notes give sizes as rich writes them ("1 byte", "5.0 TB"); None is "size unknown"."""
    from rich.filesize import decimal

    from zeroshot.cli.common import human_size

    assert human_size(size) == ("size unknown" if size is None else decimal(size))


def test_clear_leaves_the_lock_of_an_export_under_way(tmp_path, monkeypatch):
    """A lock file a run holds (it is exporting now) stays, so a run started meanwhile still waits
    on the same file; once let go, clear deletes it."""
    from zeroshot.base import cache

    root = tmp_path / "cache"
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(root))
    lock = root / "onnx" / f"{HEX}.lock"
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(root)}
    with cache.exclusive(lock) as held:
        assert held
        done = console("cache", "clear", env=env)
        record = json.loads(done.stdout)
        assert record["removed"] == 0 and record["left"] == [{"path": str(lock), "bytes": 0,
                                                               "why": "in use by a running zeroshot"}]  # fmt: skip
        assert lock.is_file() and "in use by a running zeroshot" in done.stderr
    record = json.loads(console("cache", "clear", env=env).stdout)
    assert record["removed"] == 1 and record["left"] == [] and not lock.exists()
