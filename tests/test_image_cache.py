"""--cache-images: embeddings by file content, reused across label sets, never across models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import open_clip
import pytest
from typer.testing import CliRunner

from zeroshot.base import cache
from zeroshot.cli import app

from .conftest import ARCH, make_image


def run(checkpoint, folder, labels, *extra):
    args = ["classify", str(folder), "-m", ARCH, "-p", str(checkpoint), *extra]
    for label in labels:
        args += ["--label", label]
    result = CliRunner().invoke(app, args)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def assert_same(a, b, tol=1e-6):
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert ("error" in x) == ("error" in y)
        if "error" in x:
            assert x == y
            continue
        assert [t["label"] for t in x["top_k"]] == [t["label"] for t in y["top_k"]]
        assert max(abs(s["score"] - t["score"]) for s, t in zip(x["top_k"], y["top_k"], strict=True)) < tol


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        make_image(folder / f"{i}.png", 20 + i, (64 + 16 * i, 80))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_relabelling_reuses_embeddings_and_matches_a_fresh_run(checkpoint, photos, monkeypatch):
    first, recs = run(checkpoint, photos, ["cat", "dog"], "--cache-images")
    assert first.exit_code == 1  # broken.jpg
    _, plain = run(checkpoint, photos, ["cat", "dog"])
    assert_same(recs, plain)
    dbs = list((cache.cache_dir() / "images").glob("*.sqlite"))
    assert len(dbs) == 1
    _, expected = run(checkpoint, photos, ["car", "tree", "boat"])

    def no_image_tower(*args, **kwargs):
        raise AssertionError("the image tower ran although every embedding was cached")

    monkeypatch.setattr(open_clip.model.CLIP, "encode_image", no_image_tower)
    again, cached = run(checkpoint, photos, ["car", "tree", "boat"], "--cache-images")
    assert again.exit_code == 1, again.output
    assert_same(cached, expected)


def test_changed_content_and_other_weights_are_not_served(checkpoint, photos, tmp_path):
    run(checkpoint, photos, ["cat", "dog"], "--cache-images")
    make_image(photos / "0.png", 99, (50, 50))  # same path, new content
    _, recs = run(checkpoint, photos, ["cat", "dog"], "--cache-images")
    _, plain = run(checkpoint, photos, ["cat", "dog"])
    assert_same(recs, plain)
    other = tmp_path / "other.pt"
    import torch

    state = torch.load(checkpoint, weights_only=True)
    state["visual.proj"] = state["visual.proj"] * -1
    torch.save(state, other)
    _, a = run(other, photos, ["cat", "dog"], "--cache-images")
    _, b = run(other, photos, ["cat", "dog"])
    assert_same(a, b)
    assert len(list((cache.cache_dir() / "images").glob("*.sqlite"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "foreign"])
def test_damaged_or_foreign_database_is_replaced(checkpoint, photos, damage):
    run(checkpoint, photos, ["cat", "dog"], "--cache-images")
    (db,) = (cache.cache_dir() / "images").glob("*.sqlite")
    if damage == "garbage":
        for suffix in ("-wal", "-shm"):
            if os.path.exists(f"{db}{suffix}"):
                os.unlink(f"{db}{suffix}")
        db.write_bytes(b"this is not a database" * 100)
    else:
        import sqlite3

        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE meta SET value = 'someone else' WHERE name = 'key'")
    result, recs = run(checkpoint, photos, ["cat", "dog"], "--cache-images")
    assert "image cache" in result.stderr and "afresh" in result.stderr
    _, plain = run(checkpoint, photos, ["cat", "dog"])
    assert_same(recs, plain)


@pytest.mark.slow
def test_concurrent_runs_share_the_cache_safely(checkpoint, photos):
    many = photos.parent / "many"
    many.mkdir()
    for i in range(24):
        make_image(many / f"{i:02d}.png", 100 + i, (48, 48))
    cmd = [sys.executable, "-m", "zeroshot", "classify", str(many), "-m", ARCH, "-p", str(checkpoint),
           "--label", "cat", "--label", "dog", "--cache-images", "-b", "4"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1] + outs[1][1]
    a, b = ([json.loads(line) for line in out.splitlines()] for out, _ in outs)
    # Embeddings here were computed in batches of 4 or fewer (-b 4, some images served by the other
    # run): float32 sums in another order than plain's batches of 32, so allow batch-size noise.
    assert_same(a, b, tol=1e-5)
    assert len(a) == 24
    _, plain = run(checkpoint, many, ["cat", "dog"])
    assert_same(a, plain, tol=1e-5)
