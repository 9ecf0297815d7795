"""``zeroshot classify --server URL``: the installed console script sends the run to a real
``zeroshot serve`` and prints the records a local run prints, in every format, with the same exit
code; options that need the local model are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import EXAMPLES, ZEROSHOT
from .serving import Server

TEXT = ["--dataset", "fashion-mnist", "-k", "3"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("server-inputs")
    for p in sorted(EXAMPLES.glob("*.png"))[:6]:
        shutil.copyfile(p, folder / p.name)
    (folder / "not-an-image.png").write_bytes(b"plain text, not a PNG")
    return [str(folder), str(folder / "missing.png")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(tmp_path_factory.mktemp("server-cache")))
    with Server("-m", BUNDLED_NAME, "--workers", "0", env=env) as running:
        yield running


def run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([ZEROSHOT, "classify", *args], capture_output=True, text=True, env=env, timeout=120)


def test_records_equal_a_local_runs_in_every_format(server, inputs, tmp_path):
    local_args = [*inputs, "-m", BUNDLED_NAME, *TEXT, "--workers", "0"]
    remote_args = [*inputs, *TEXT, "--server", server.url]
    labels = [*inputs, "--label", "shirt", "--label", "sneaker", "--label", "bag", "-k", "2"]
    with ThreadPoolExecutor(2) as pool:
        local, remote, csv_out, local_labels, remote_labels = pool.map(
            lambda a: run(*a),
            [local_args, remote_args, [*remote_args, "-f", "csv", "-o", str(tmp_path / "out.csv")],
             [*labels, "-m", BUNDLED_NAME, "--workers", "0"], [*labels, "--server", server.url]],
        )  # fmt: skip
    for done in (local, remote, local_labels, remote_labels):
        assert done.returncode == 1, done.stderr  # the broken and the missing input
    assert remote.stderr == local.stderr == "zeroshot: 2 of 8 inputs could not be classified\n"
    ours, theirs = map(lambda d: [json.loads(line) for line in d.stdout.splitlines()], (remote, local))
    assert [r["path"] for r in ours] == [r["path"] for r in theirs] and len(ours) == 8
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        if "error" in b:
            assert a["error"] == b["error"]
            continue
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-6
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert all(abs(x["score"] - y["score"]) < 1e-6 for x, y in zip(a["top_k"], b["top_k"], strict=True))
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("path,") and len(rows) == 9
    mine, local_l = ([json.loads(x) for x in d.stdout.splitlines()] for d in (remote_labels, local_labels))
    assert [r.get("label") for r in mine] == [r.get("label") for r in local_l]
    assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(mine, local_l, strict=True) if "score" in b)


def test_options_for_the_local_model_are_refused_and_a_dead_server_is_one_line(server, inputs):
    refused = run(*inputs, *TEXT, "--server", server.url, "-m", "ViT-B-32", "--resume")
    assert refused.returncode == 2 and not refused.stdout
    assert refused.stderr == (
        "zeroshot: error: --model, --resume do not go with --server: the server runs its own model and reads "
        "images only; leave them out, or classify here without --server\n"
    )
    dead = run(*inputs, *TEXT, "--server", "http://127.0.0.1:9")
    assert dead.returncode == 1 and not dead.stdout
    assert dead.stderr.startswith("zeroshot: error: cannot reach the zeroshot server at http://127.0.0.1:9")
    assert len(dead.stderr.splitlines()) == 1


def test_paths_from_stdin_are_sent_as_they_come(server, inputs):
    folder = Path(inputs[0])
    paths = sorted(str(p) for p in folder.glob("*.png"))
    done = subprocess.run([ZEROSHOT, "classify", "-", *TEXT, "--server", server.url], input="\n".join(paths) + "\n",
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert [json.loads(line)["path"] for line in done.stdout.splitlines()] == paths
