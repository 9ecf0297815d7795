"""`eval` measures what `classify` ships: both run the same image core (zeroshot.towers.pipeline.ImageEncoder)."""

from __future__ import annotations

import json

from PIL import Image

from zeroshot.assembly import ModelChoice, prepare
from zeroshot.text.prompts import resolve_prompt_set
from zeroshot.uses.evaluate import evaluate_run

from .conftest import ARCH, invoke, make_image


def test_eval_predictions_are_classifys_on_jpeg_png_and_exif_rotated(tmp_path, checkpoint):
    folder = tmp_path / "labelled"
    for sub in ("cat", "dog"):
        (folder / sub).mkdir(parents=True)
    make_image(folder / "cat" / "a.jpg", 1, (160, 90), fmt="JPEG")
    make_image(folder / "cat" / "b.png", 2, (64, 120))
    make_image(folder / "dog" / "c.png", 3, (90, 90), mode="L")
    rotated = folder / "dog" / "d.jpg"  # stored landscape, shown portrait: EXIF orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    source = Image.open(make_image(tmp_path / "source.png", 4, (150, 80)))
    source.save(rotated, exif=exif, quality=90)
    source.save(tmp_path / "plain.jpg", quality=90)  # the same JPEG bytes' pixels, no orientation tag
    # The rotated file as a viewer shows it: its decoded pixels turned 90 degrees clockwise, lossless.
    Image.open(tmp_path / "plain.jpg").transpose(Image.Transpose.ROTATE_270).save(tmp_path / "turned.png")
    prepared = prepare(ModelChoice(ARCH, str(checkpoint), device="cpu"), resolve_prompt_set(labels=["cat", "dog"]))
    run = evaluate_run(prepared.loaded, prepared.text, folder=folder, idx_dir=None, split="test", limit=None,
                       batch_size=3, workers=0)  # fmt: skip
    assert run.record["images"] == 4 and not run.failed
    probs = (prepared.loaded.logit_scale * run.sims(prepared.text)).softmax(dim=-1)
    model = ["-m", ARCH, "-p", str(checkpoint), "--label", "cat", "--label", "dog", "-k", "2", "--device", "cpu"]
    result = invoke("classify", folder, *model)
    assert result.exit_code == 0, result.output
    classified = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(classified) == sorted(str(k) for k in run.keys)
    for key, row in zip(run.keys, probs.tolist(), strict=True):
        record = classified[str(key)]
        assert record["label"] == ("cat", "dog")[max(range(2), key=row.__getitem__)]
        scores = {t["label"]: t["score"] for t in record["top_k"]}
        assert abs(scores["cat"] - row[0]) < 1e-6 and abs(scores["dog"] - row[1]) < 1e-6, (key, scores, row)
    # The rotation was applied: the record is the turned pixels', not the stored ones'.
    turned = json.loads(invoke("classify", tmp_path / "turned.png", *model).stdout)
    plain = json.loads(invoke("classify", tmp_path / "plain.jpg", *model).stdout)
    got = {t["label"]: t["score"] for t in classified[str(rotated)]["top_k"]}
    for other, same in ((turned, True), (plain, False)):
        close = all(abs(got[t["label"]] - t["score"]) < 1e-6 for t in other["top_k"])
        assert close is same, (got, other)


def test_folder_names_with_underscores_are_prompted_with_spaces(tmp_path):
    """Class folders named as users name them (``ankle_boot``): the prompts say "ankle boot" (the
    text classifier is the one ``--label "ankle boot"`` builds: the same cache entry), records and
    figures name the class so, and each folder's images are scored against their own class."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from zeroshot.cli.common import folder_prompt_set
    from zeroshot.model.models import BUNDLED_NAME

    examples = Path(__file__).resolve().parent.parent / "examples" / "fashion"
    folder = tmp_path / "labelled"
    for sub, prefix in (("ankle_boot", "ankle-boot"), ("t_shirt", "t-shirt-top")):
        (folder / sub).mkdir(parents=True)
        for p in sorted(examples.glob(f"{prefix}-*.png")):
            shutil.copy(p, folder / sub / p.name)
    zeroshot = [str(Path(sys.executable).with_name("zeroshot"))]  # the installed console script, a fresh process
    model = ["-m", BUNDLED_NAME, "-q", "--workers", "0"]
    done = subprocess.run([*zeroshot, "eval", str(folder), *model], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["classes"] == ["ankle boot", "t shirt"] and set(record["per_class_recall"]) == set(record["classes"])
    assert [sum(row) for row in record["confusion_matrix"]] == [4, 4]
    built = subprocess.run([*zeroshot, "build-prompts", "--label", "ankle boot", "--label", "t shirt", *model[:3]],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert json.loads(built.stdout)["cache_hit"] is True, built.stdout + built.stderr  # eval built these prompts
    labels = ["--label", "ankle boot", "--label", "t shirt"]
    classified = subprocess.run([*zeroshot, "classify", str(folder), *model, *labels, "-k", "1"],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    rows = [json.loads(line) for line in classified.stdout.splitlines()]
    assert len(rows) == 8
    right = [r["label"] == Path(r["path"]).parent.name.replace("_", " ") for r in rows]
    assert record["top1"] == sum(right) / len(right)
    assert record["per_class_recall"]["ankle boot"] == sum(right[:4]) / 4  # sorted: ankle_boot/ first
    prompts = folder_prompt_set(folder, None, None, None, None)  # what eval and adapt prompt with
    assert prompts.classes == ("ankle boot", "t shirt")
    assert "itap of a ankle boot." in prompts.all_prompts() and "a origami t shirt." in prompts.all_prompts()


def test_two_sub_folders_naming_one_class_are_refused(tmp_path):
    """``ankle_boot`` and ``ankle boot`` both name the class "ankle boot": one line says so, instead
    of every image of one going to the other; a folder of names in another script keeps its classes."""
    import pytest

    from zeroshot.base.errors import UsageError
    from zeroshot.uses.evaluate import folder_classes

    for sub in ("ankle_boot", "ankle boot", "sandal"):
        (tmp_path / "twice" / sub).mkdir(parents=True)
    with pytest.raises(UsageError, match="sub-folders 'ankle boot' and 'ankle_boot' name the same class"):
        folder_classes(tmp_path / "twice")
    for sub in ("猫", "犬_子"):
        (tmp_path / "kanji" / sub).mkdir(parents=True)
    assert folder_classes(tmp_path / "kanji") == ["犬 子", "猫"]
