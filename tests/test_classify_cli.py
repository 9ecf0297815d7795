"""The classify command as users see it: records, order, errors, exit codes, pipes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from .conftest import ARCH, DATA, invoke, make_image, run_cli

LABELS = ["cat", "dog", "car"]


def model_args(checkpoint):
    return ["-m", ARCH, "-p", str(checkpoint), *sum((["--label", x] for x in LABELS), [])]


ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script


def parse(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


def test_bad_inputs_become_error_records_and_run_goes_on(checkpoint, image_dir, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((image_dir / "c.png").read_bytes()[:300])
    args = [
        str(image_dir / "a.png"), str(tmp_path / "missing.jpg"), str(DATA / "not-an-image.txt"),
        str(truncated), str(image_dir / "b.jpg"),
    ]  # fmt: skip
    proc = run_cli("classify", *args, *model_args(checkpoint), "--top-k", "2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    records = parse(proc.stdout)
    assert [r["path"] for r in records] == args
    assert records[1] == {"path": args[1], "error": "no such file"}
    assert records[2]["error"].startswith("not an image")
    assert records[3]["error"].startswith("truncated image")
    for good in (records[0], records[4]):
        assert good["label"] in LABELS and len(good["top_k"]) == 2 and "error" not in good
    # The good ones score exactly as when they run alone.
    alone = parse(invoke("classify", args[0], args[4], *model_args(checkpoint), "--top-k", "2").stdout)
    assert alone == [records[0], records[4]]


def test_all_good_exits_0_with_full_top_k_capped(checkpoint, image_dir):
    result = invoke("classify", str(image_dir), *model_args(checkpoint), "--top-k", "50", "-q")
    assert result.exit_code == 0, result.output
    records = parse(result.stdout)
    assert len(records) == 5
    for rec in records:
        assert len(rec["top_k"]) == len(LABELS)  # capped at the number of classes
        assert abs(sum(t["score"] for t in rec["top_k"]) - 1.0) < 1e-5  # softmax over all classes


def test_folder_recursion_images_only_sorted(checkpoint, tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    make_image(root / "z.png", 1)
    make_image(root / "sub" / "b.jpg", 2)
    make_image(root / "sub" / "deeper" / "a.png", 3)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "data.json").write_text("{}")
    result = invoke("classify", str(root), *model_args(checkpoint))
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in parse(result.stdout)]
    assert paths == [str(root / "sub" / "b.jpg"), str(root / "sub" / "deeper" / "a.png"), str(root / "z.png")]


def test_paths_from_stdin_keep_order(checkpoint, image_dir):
    names = [str(image_dir / n) for n in ("e.bmp", "a.png", "d.webp")]
    result = invoke("classify", "-", *model_args(checkpoint), input="\n".join(names) + "\n")
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in parse(result.stdout)] == names


def test_exif_orientation_is_honoured(checkpoint, tmp_path):
    upright = make_image(tmp_path / "upright.png", 9, (160, 90))
    img = Image.open(upright)
    # Stored rotated; EXIF orientation 6 says "rotate 90° clockwise to display", which restores it.
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = tmp_path / "tagged.jpg"
    stored.save(tagged, exif=exif.tobytes(), quality=100, subsampling=0)
    plain = tmp_path / "plain.jpg"
    img.save(plain, quality=100, subsampling=0)
    records = parse(invoke("classify", str(tagged), str(plain), str(upright), *model_args(checkpoint)).stdout)
    scores = [{t["label"]: t["score"] for t in r["top_k"]} for r in records]
    # tagged (after EXIF) and plain hold the same pixels up to JPEG loss; ignoring EXIF would not.
    assert max(abs(scores[0][k] - scores[1][k]) for k in LABELS) < 2e-3
    stored.save(tmp_path / "rot.png")
    ignored = parse(invoke("classify", str(tmp_path / "rot.png"), *model_args(checkpoint)).stdout)[0]
    rot = {t["label"]: t["score"] for t in ignored["top_k"]}
    assert max(abs(rot[k] - scores[2][k]) for k in LABELS) > 10 * max(abs(scores[0][k] - scores[1][k]) for k in LABELS)


def test_odd_file_names_stay_valid_json_lines(checkpoint, tmp_path):
    names = ["with space.png", "ünïcødé 猫.png", 'quote"s.png', "new\nline.png"]
    for i, name in enumerate(names):
        make_image(tmp_path / name, i)
    result = invoke("classify", *[str(tmp_path / n) for n in names], *model_args(checkpoint))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(names)
    assert [json.loads(line)["path"] for line in lines] == [str(tmp_path / n) for n in names]


def test_head_closes_pipe_quietly(checkpoint, image_dir, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):
        shutil.copy(image_dir / "a.png", many / f"{i:03d}.png")
    # The installed command, and the pipeline's statuses read one by one: zeroshot's own is 141
    # (stdout closed early) and it says nothing; head's is 0.
    cmd = (
        f"{ZEROSHOT} classify {many} -m {ARCH} -p {checkpoint} --label cat --label dog -b 4"
        ' | head -n 1; echo "statuses ${PIPESTATUS[*]}" >&2'
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 1 and json.loads(proc.stdout)["path"].endswith("000.png")
    assert proc.stderr == "statuses 141 0\n"


def test_usage_errors_exit_2(checkpoint, image_dir):
    no_inputs = invoke("classify", *model_args(checkpoint))
    assert no_inputs.exit_code == 2 and "no inputs" in no_inputs.stderr
    no_labels = invoke("classify", str(image_dir), "-m", ARCH, "-p", str(checkpoint))
    assert no_labels.exit_code == 2 and "no classes" in no_labels.stderr
    bad_device = invoke("classify", str(image_dir), *model_args(checkpoint), "--device", "tpu")
    assert bad_device.exit_code == 2 and "--device tpu" in bad_device.stderr
    unknown = invoke("classify", str(image_dir), "--dataset", "cifar", "-m", ARCH, "-p", str(checkpoint))
    assert unknown.exit_code == 2
    assert unknown.stderr.count("\n") == 1 and "known ones are" in unknown.stderr and "cifar100" in unknown.stderr


def test_usage_errors_from_the_installed_command_are_one_line(tmp_path):
    """The line main() makes of Typer's own parsing errors (an unknown option, a value that is no number),
    as a shell user sees it; and --version."""
    for args, words in (
        (["classify", "x.png", "--top-k", "many"], "Invalid value for '--top-k' / '-k'"),
        (["classify", "x.png", "--bogus"], "No such option: --bogus"),
        (["clasify"], "No such command 'clasify'"),
    ):
        done = subprocess.run([ZEROSHOT, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == "", args
        assert done.stderr.startswith("zeroshot: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert words in done.stderr and done.stderr.endswith("(see zeroshot -h)\n")
    from importlib.metadata import version

    done = subprocess.run([ZEROSHOT, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"zeroshot {version('zeroshot-clip')}\n"


def test_empty_file_is_named_so(checkpoint, tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    records = parse(invoke("classify", str(tmp_path / "zero.png"), *model_args(checkpoint)).stdout)
    assert records == [{"path": str(tmp_path / "zero.png"), "error": "empty file (0 bytes)"}]


def test_high_bit_depth_images_match_their_8bit_version(checkpoint, tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (80, 100)).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # mode I;16
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "greyf.tif")  # mode F, 0..1
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    paths = [str(tmp_path / n) for n in ("grey8.png", "grey16.png", "greyf.tif")]
    records = parse(invoke("classify", *paths, *model_args(checkpoint)).stdout)
    tops = [r["top_k"] for r in records]
    assert tops[1] == tops[0]
    assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(tops[2], tops[0], strict=True))


def test_symlink_loop_in_a_folder_is_walked_once(checkpoint, tmp_path):
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    make_image(root / "a.png", 1)
    make_image(root / "sub" / "b.png", 2)
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    result = invoke("classify", str(root), *model_args(checkpoint))
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in parse(result.stdout)]
    # b.png is reached through 'self' (sorted before 'sub'), and the loops are not followed again.
    assert paths == [str(root / "a.png"), str(root / "self" / "b.png")]


def test_options_and_records_with_a_fake_model(fake_model, tmp_path):
    """Options end to end in a second: the fake model scores an image by its colour."""
    from .fakes import COLOURS

    paths = []
    for name, rgb in (("r", (250, 10, 10)), ("g", (10, 250, 10)), ("b", (10, 10, 250))):
        Image.new("RGB", (20, 12), rgb).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    labels = [a for c in COLOURS for a in ("--label", c)]
    records = parse(invoke("classify", *paths, *labels, *fake_model, "-k", "2").stdout)
    assert [r["label"] for r in records] == list(COLOURS)
    assert all(len(r["top_k"]) == 2 and r["score"] > 0.9 for r in records)
    cut = invoke("classify", *paths, *labels, *fake_model, "-f", "csv", "--min-score", "0.999")
    rows = list(csv.DictReader(io.StringIO(cut.stdout)))
    assert [row["path"] for row in rows] == paths and all(row["label"] == "" for row in rows)
    # the CSV's top_k still holds each record's scores: the best guess, under the cut-off
    assert [json.loads(row["top_k"])[0] for row in rows] == [r["top_k"][0] for r in records]
    assert all(float(row["score"]) == r["score"] < 0.999 for row, r in zip(rows, records, strict=True))
    multi = parse(invoke("classify", paths[0], *labels, *fake_model, "--multi-label", "--threshold", "0.5").stdout)
    assert multi[0]["labels"] == ["red"]
