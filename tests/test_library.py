"""The public library class: one assembly with the CLI, so the same options give the same records."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import zeroshot
from zeroshot.cli import app
from zeroshot.model.models import BUNDLED_NAME

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"


def test_zeroshot_class_gives_the_clis_records(tmp_path):
    images = sorted(str(p) for p in EXAMPLES.glob("*.png"))[:12]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    inputs = [*images, str(broken)]
    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    text = clf.text_classifier(zeroshot.resolve_prompt_set(dataset="fashion-mnist"))
    options = {"top_k": 3, "workers": 0, "multi_label": True, "threshold": 0.2, "background": "garment",
               "max_pixels": 1000}  # fmt: skip
    library = list(clf.classify(inputs, text, **options))
    cli = CliRunner().invoke(
        app,
        ["classify", *inputs, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "3", "--workers", "0",
         "--multi-label", "--threshold", "0.2", "--background", "garment", "--max-pixels", "1000", "--device",
         "cpu"],
    )  # fmt: skip
    assert cli.exit_code == 1  # the broken file
    records = [json.loads(line) for line in cli.stdout.splitlines()]
    assert len(records) == len(library) == len(inputs)
    for mine, theirs in zip(library, records, strict=True):
        assert mine.keys() == theirs.keys()
        assert json.loads(json.dumps(mine)) == theirs
    assert "error" in records[-1] and any("labels" in r for r in records)

    # A classifier file through the library is the CLI's --classifier.
    exported = tmp_path / "fashion.safetensors"
    assert CliRunner().invoke(app, ["build-prompts", "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-o",
                                    str(exported)]).exit_code == 0  # fmt: skip
    from_file = clf.text_classifier(classifier_file=exported)
    assert from_file.classes == text.classes
    assert list(clf.classify(images[:3], from_file, workers=0)) == list(clf.classify(images[:3], text, workers=0))
