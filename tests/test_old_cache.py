"""A cache written by zeroshot 0.1, before the package was grouped into folders, is still hit.

``data/cache-0.1/`` was written at commit f4db962 (the last flat layout) by::

    ZEROSHOT_CACHE_DIR=cache zeroshot classify <every fifth PNG of examples/fashion> \\
        -m fashion-mini --dataset fashion-mnist --cache-images --runtime torch > records.jsonl

(``cache/hashes/`` left out: it only remembers file hashes by path), with ``keys.json`` holding the
cache keys that version computed for the bundled model and the package versions they name. Cache
keys name the open_clip and torch versions on purpose (new versions may change the numbers), so
these tests run with those versions reported, whatever is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from zeroshot.base import cache

OLD = Path(__file__).parent / "data" / "cache-0.1"
ROOT = Path(__file__).resolve().parent.parent
STORED = json.loads((OLD / "keys.json").read_text())
INPUTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples" / "fashion").glob("*.png"))[::5]


def test_the_keys_are_those_of_0_1(monkeypatch):
    from zeroshot.assembly import ModelChoice, prepare_model
    from zeroshot.model.weightfiles import image_cache_key
    from zeroshot.text.classifier import text_cache_key
    from zeroshot.text.prompts import resolve_prompt_set
    from zeroshot.towers.onnxexport import _engine_key, runtime_image_key

    versions = STORED["versions"]
    monkeypatch.setattr(cache, "package_version", lambda name: versions[name])
    loaded = prepare_model(ModelChoice("fashion-mini", None, None, "cpu", "fp32", "torch"))
    image = image_cache_key(loaded)
    now = {
        "text": text_cache_key(loaded.spec, resolve_prompt_set(dataset="fashion-mnist"), "fp32"),
        "image": image,
        "image_onnx": runtime_image_key(image, "onnx", "fp32"),
        "image_onnx_int8": runtime_image_key(image, "onnx", "int8"),
        "onnx_image_engine": _engine_key(image, "fp32"),
        "onnx_image_engine_int8": _engine_key(image, "int8"),
        "onnx_text_engine": _engine_key(image, "fp32", "text"),
    }
    assert now == STORED["keys"]
    # and the stored entries are the files those keys name
    assert (OLD / "cache" / "text" / f"{cache.key_digest(now['text'])}.safetensors").is_file()
    assert (OLD / "cache" / "images" / f"{cache.key_digest(now['image'])}.sqlite").is_file()


# The console script's own entry, in a fresh process, with the stored versions reported and, by
# {blocked}, a part of the model made unusable: the run can only succeed from the cache of 0.1.
RUN = """
import sys
import open_clip
from zeroshot.base import cache
from zeroshot.model import models
versions = {versions!r}
cache.package_version = lambda name: versions[name]
def blocked(*args, **kwargs):
    raise SystemExit("{blocked} ran: a cache entry of 0.1 was missed")
if "{blocked}" == "load_model":
    models.load_model = blocked
else:
    open_clip.model.CLIP.encode_image = open_clip.model.CustomTextCLIP.encode_image = blocked
from zeroshot.cli import run
sys.argv[0] = "zeroshot"
run()
"""


def run_from(folder: Path, blocked: str, *labels: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(folder)}
    args = ["classify", *INPUTS, "-m", "fashion-mini", "--cache-images", "--runtime", "torch"]
    args += [f"--label={label}" for label in labels] if labels else ["--dataset", "fashion-mnist"]
    code = RUN.format(versions=STORED["versions"], blocked=blocked)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def files_in(folder: Path) -> list[str]:
    """The cache's entries (not its hash memos, nor SQLite's side files)."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if not n.startswith("hashes/") and not n.endswith(("-wal", "-shm")))


def test_a_cache_written_by_0_1_is_hit(tmp_path):
    folder = tmp_path / "cache"
    shutil.copytree(OLD / "cache", folder)
    stored = files_in(folder)
    # the text classifier (with the scoring facts it keeps) and every image's embedding: no model
    done = run_from(folder, "load_model")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (OLD / "records.jsonl").read_text()  # the records 0.1 printed, to the last digit
    assert files_in(folder) == stored  # nothing was made again
    # new labels: the model is loaded for the text side, and its image-cache key finds 0.1's embeddings
    again = run_from(folder, "encode_image", "a boot", "a bag")
    assert again.returncode == 0, again.stderr
    assert len(again.stdout.splitlines()) == len(INPUTS)
    assert [n for n in files_in(folder) if n not in stored and not n.startswith("text/")] == []
