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
