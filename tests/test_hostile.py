"""Hostile inputs and faults: a generated corpus, signals, concurrent cache writers, long prompts.

Invariants for the corpus run: exactly one record per input, in input order; each good input
classified exactly as when run alone; a one-line error for each bad one; exit 1; no traceback.
The model is the bundled fashion-mini (fast); nothing here needs a network.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroshot import resolve_prompt_set
from zeroshot.image.images import Input
from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.text.classifier import get_text_classifier
from zeroshot.uses.records import classify_inputs

from .conftest import default_sigint, make_image, run_cli

LABELS = ["t-shirt", "trouser", "bag", "sneaker"]
MODEL = ["--model", BUNDLED_NAME] + [a for label in LABELS for a in ("--label", label)]


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid-looking PNG of a few dozen bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def with_exif_orientation(src: Path, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.open(src).convert("RGB").save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def build_corpus(root: Path) -> tuple[list[str], list[str], set[str]]:
    """(command-line inputs, expected record paths in order, paths expected to fail)."""
    root.mkdir(parents=True, exist_ok=True)
    base = make_image(root / "good.png", 1, (64, 48))
    good_jpg = make_image(root / "good.jpg", 2, (80, 60))
    bad: set[str] = set()
    inputs: list[str] = [str(base)]

    def add_bad(path: Path) -> None:
        inputs.append(str(path))
        bad.add(str(path))

    (root / "zero.jpg").write_bytes(b"")
    add_bad(root / "zero.jpg")
    (root / "trunc.jpg").write_bytes(good_jpg.read_bytes()[:300])
    add_bad(root / "trunc.jpg")
    (root / "trunc.png").write_bytes(base.read_bytes()[:60])
    add_bad(root / "trunc.png")
    (root / "text.png").write_text("just some text\n", encoding="utf-8")
    add_bad(root / "text.png")
    (root / "page.jpg").write_text("<!doctype html><html><body>404</body></html>", encoding="utf-8")
    add_bad(root / "page.jpg")
    (root / "folder.jpg").mkdir()
    add_bad(root / "folder.jpg")  # a directory named like an image, with nothing inside
    add_bad(root / "missing.jpg")
    inputs.append(str(base))  # the same path twice: two records
    add_bad(png_bomb(root / "bomb.png", 100_000, 100_000))

    rgb = Image.open(make_image(root / "src.png", 3, (90, 70)))
    modes = root / "modes"
    modes.mkdir()
    for mode in ["1", "L", "LA", "P", "RGBA", "I;16"]:
        name = mode.replace(";", "")
        rgb.convert(mode).save(modes / f"m_{name}.png")
        inputs.append(str(modes / f"m_{name}.png"))
    pal = rgb.convert("P")
    pal.save(modes / "m_P_transparent.png", transparency=5)
    rgb.convert("CMYK").save(modes / "m_CMYK.jpg", quality=95)
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 100, "I").save(modes / "m_I.tif")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0, "F").save(modes / "m_F.tif")
    frames = [rgb, Image.open(make_image(root / "src2.png", 4, (90, 70)))]
    frames[0].save(modes / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(modes / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    for name in ["m_P_transparent.png", "m_CMYK.jpg", "m_I.tif", "m_F.tif", "anim.gif", "anim.webp"]:
        inputs.append(str(modes / name))
    for o in range(1, 9):
        inputs.append(str(with_exif_orientation(root / "src.png", modes / f"orient{o}.jpg", o)))

    names = root / "names"
    names.mkdir()
    for name in [
        "with space.png",
        "ünïcødé 猫.png",
        "quote\"s 'and' back\\slash.png",
        "new\nline.png",
        "tab\there.png",
    ]:
        inputs.append(str(make_image(names / name, 5, (40, 40))))
    deep = names
    while len(str(deep)) < 3600:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    inputs.append(str(make_image(deep / ("f" * min(250, 4000 - len(str(deep))) + ".png"), 6, (40, 40))))

    # A folder: recursed, sorted, a symlink loop and a sub-folder named like an image.
    tree = root / "tree"
    (tree / "b" / "sub.jpg").mkdir(parents=True)
    make_image(tree / "a.png", 7, (30, 30))
    make_image(tree / "b" / "c.png", 8, (30, 30))
    make_image(tree / "b" / "sub.jpg" / "d.png", 9, (30, 30))
    (tree / "b" / "e.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    os.symlink(tree, tree / "b" / "loop")
    inputs.append(str(tree))
    expected = [p for p in inputs if p != str(tree)]
    expected += [
        str(tree / "a.png"),
        str(tree / "b" / "c.png"),
        str(tree / "b" / "e.jpg"),
        str(tree / "b" / "sub.jpg" / "d.png"),
    ]
    bad.add(str(tree / "b" / "e.jpg"))
    return inputs, expected, bad


@pytest.fixture(scope="module")
def fashion():
    loaded = load_model(resolve_spec(BUNDLED_NAME))
    text = get_text_classifier(loaded.spec, resolve_prompt_set(labels=LABELS), lambda: loaded, use_cache=False)
    return loaded, text


def test_hostile_corpus_loses_nothing(tmp_path, fashion):
    inputs, expected, bad = build_corpus(tmp_path / "corpus")
    result = run_cli("classify", *inputs, *MODEL, "-k", "2", "--workers", "2")
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == expected  # one record per input, in order
    assert {r["path"] for r in records if "error" in r} == bad
    for r in records:
        if "error" in r:
            assert r["error"] and "\n" not in r["error"]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 2
    assert "refused" in next(r["error"] for r in records if r["path"].endswith("bomb.png"))

    loaded, text = fashion  # each good input alone, in process
    for r in records:
        if "error" not in r:
            (alone,) = classify_inputs(loaded, text, [Input(r["path"])], top_k=2, workers=0)
            assert alone["label"] == r["label"] and abs(alone["score"] - r["score"]) < 1e-6, r["path"]
    print(f"\nhostile corpus: {len(inputs)} inputs on the command line, {len(expected)} expected records, "
          f"{len(records)} out, {len(bad)} errors, {len(expected) - len(records)} lost")  # fmt: skip


def test_animated_images_use_their_first_frame(tmp_path, fashion):
    loaded, text = fashion
    a = Image.open(make_image(tmp_path / "a.png", 11, (60, 60)))
    b = Image.open(make_image(tmp_path / "b.png", 12, (60, 60)))
    a.save(tmp_path / "anim.gif", save_all=True, append_images=[b], duration=100)
    with Image.open(tmp_path / "anim.gif") as gif:
        gif.save(tmp_path / "first.png")  # frame 0, in the mode Pillow reads it (P)
        gif.seek(1)
        gif.save(tmp_path / "second.png")
    paths = [tmp_path / "anim.gif", tmp_path / "first.png", tmp_path / "second.png"]
    recs = list(classify_inputs(loaded, text, [Input(str(p)) for p in paths]))
    assert recs[0]["top_k"] == recs[1]["top_k"]
    assert recs[0]["top_k"] != recs[2]["top_k"]


def test_pa_mode_in_memory_matches_open_clip(fashion):
    """Pillow cannot write PA files, but decoders can produce PA images: same numbers as open_clip."""
    import torch

    from zeroshot.image.decoding import split_preprocess, to_model_input

    loaded, _ = fashion
    split = split_preprocess(loaded.preprocess)
    image = Image.open(make_image(Path(os.environ["ZEROSHOT_CACHE_DIR"]).parent / "pa.png", 13, (50, 40)))
    pa = image.convert("P").convert("PA")
    pixels = np.array(split.pil_stage(pa), dtype=np.uint8)
    assert torch.equal(to_model_input(pixels[None], split, "cpu", torch.float32)[0], loaded.preprocess(pa))


def test_max_pixels_is_checked_before_decoding(tmp_path):
    small = make_image(tmp_path / "small.png", 1, (200, 150))  # 30,000 pixels
    bomb = png_bomb(tmp_path / "bomb.png", 60_000, 60_000)
    result = run_cli("classify", str(small), str(bomb), *MODEL, "--max-pixels", "20000")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "over the --max-pixels limit of 20,000" in records[0]["error"]
    assert "3,600,000,000 pixels" in records[1]["error"]
    result = run_cli("classify", str(small), *MODEL, "--max-pixels", "0")
    assert result.returncode == 0
    # A thin strip within the limit whose resize for the model would not be (28 x 70,000 here).
    Image.new("L", (2, 5000), 128).save(tmp_path / "strip.png")
    result = run_cli("classify", str(tmp_path / "strip.png"), *MODEL, "--max-pixels", "20000")
    assert "would be resized to 28x70000" in json.loads(result.stdout)["error"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for i in range(10_000):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / f"{i:05d}.png")
    return folder


def peak_rss_kb(args: list[str], env: dict[str, str]) -> tuple[int, list[float], int]:
    """(peak RSS of the run in kB, seconds at which records 1, 100 and the last arrived, records)."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); times = []; n = 0\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)\n"
        "for line in p.stdout:\n"
        "    n += 1\n"
        "    if n in (1, 100): times.append(time.perf_counter() - t)\n"
        "times.append(time.perf_counter() - t); p.wait()\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, *times, n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    rss, *times, n = out.stdout.split()
    return int(rss), [float(t) for t in times], int(n)


def test_ten_thousand_tiny_images_stream_in_bounded_memory(tiny_folder, tmp_path):
    env = dict(os.environ)
    files = sorted(tiny_folder.iterdir())
    small = tmp_path / "small"
    small.mkdir()
    for f in files[:500]:
        (small / f.name).symlink_to(f)
    cmd = [sys.executable, "-m", "zeroshot", "classify", *MODEL, "-q", "-k", "1"]
    rss_small, _, n_small = peak_rss_kb([*cmd, str(small)], env)
    rss_big, (first, hundredth, last), n_big = peak_rss_kb([*cmd, str(tiny_folder)], env)
    assert (n_small, n_big) == (500, 10_000)
    # Streaming: records arrive over the run, not in one burst at the end.
    assert last - first > 0.5 and last - hundredth > 0.5 * (last - first)
    assert rss_big - rss_small < 100 * 1024  # 20x the images, not 20x the memory
    print(f"\n10,000 tiny images: peak RSS {rss_big / 1024:.0f} MB (500 images: {rss_small / 1024:.0f} MB), "
          f"first record after {first:.1f} s of {last:.1f} s")  # fmt: skip


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_keeps_what_was_done(tiny_folder, tmp_path, sig, code):
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "zeroshot", "classify", str(tiny_folder), *MODEL, "-q", "-k", "1", "--cache-images"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(40)]  # the run is under way
    proc.send_signal(sig)
    rest = proc.stdout.read()  # not communicate(): it would skip what readline() has buffered
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait(timeout=60)
    lines += rest.splitlines(keepends=True)
    records = [json.loads(line) for line in lines if line.strip()]
    expected = sorted(str(p) for p in tiny_folder.iterdir())
    assert 40 <= len(records) < 10_000
    assert [r["path"] for r in records] == expected[: len(records)]  # done records are all there
    assert proc.returncode == code
    assert "Traceback" not in err
    # No cache file left half-written: the image database is intact, no temporary files remain.
    dbs = list((tmp_path / "cache").rglob("*.sqlite"))
    assert len(dbs) == 1
    with sqlite3.connect(dbs[0]) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM emb").fetchone()[0] >= 32
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]
    time.sleep(0.5)  # no worker process outlives the run
    left = subprocess.run(["pgrep", "-f", str(tiny_folder)], capture_output=True, text=True).stdout.split()
    assert not left
    print(f"\n{signal.Signals(sig).name}: exit {proc.returncode}, {len(records)} records kept")


def test_two_processes_building_one_cache_entry(tmp_path):
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "zeroshot", "build-prompts", "--dataset", "cifar100", "--model", BUNDLED_NAME]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Both wrote (or one found the other's): one entry, whole, and nothing else in the folder.
    (entry,) = (tmp_path / "cache" / "text").iterdir()
    assert {json.loads(o)["cache_file"] for o, _ in outs} == {str(entry)}
    from safetensors.numpy import load_file

    weights = load_file(str(entry))["weights"]
    assert weights.shape[0] == 100 and np.allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-5)
    third = run_cli("build-prompts", "--dataset", "cifar100", "--model", BUNDLED_NAME, env_extra=env)
    assert json.loads(third.stdout)["cache_hit"] is True and third.returncode == 0  # a torn file would miss
    assert "unusable" not in third.stderr
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]


def test_prompt_longer_than_the_context_is_reported(tmp_path):
    long_label = " ".join(["very"] * 40) + " long label"  # > 32 tokens, fashion-mini's context
    result = run_cli("build-prompts", "--label", "cat", "--label", long_label, "--model", BUNDLED_NAME)
    assert result.returncode == 2
    assert "tokens, over the 32 this model reads" in result.stderr and len(result.stderr.splitlines()) == 1


def test_yaml_with_python_tags_is_refused(tmp_path):
    pack = tmp_path / "evil.yaml"
    pack.write_text("classes: !!python/object/apply:os.system ['touch pwned']\ntemplates: ['{label}']\n")
    result = run_cli("build-prompts", "--dataset", str(pack), "--model", BUNDLED_NAME, cwd=tmp_path)
    assert result.returncode == 2 and "invalid YAML" in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_absurd_labels_files_get_one_line(tmp_path):
    (tmp_path / "huge.txt").write_text("x" * 5000 + "\n", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    for name in ["huge.txt", "binary.txt"]:
        result = run_cli("build-prompts", "--labels", str(tmp_path / name), "--model", BUNDLED_NAME)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
