"""`zeroshot classify` equals open_clip's own reference pipeline, number for number."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from PIL import Image
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.text.prompts import load_pack, render

from .conftest import ARCH
from .test_preprocess_equal import assert_same_preprocessing

LABELS = ["a red fox", "tabby cat", "golden retriever", "sports car", "maple tree"]


@pytest.fixture(scope="module")
def reference(checkpoint):
    """open_clip's path: its factory + preprocessing + encode_image + build_zero_shot_classifier."""
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    templates = load_pack("default").templates
    weights = build_zero_shot_classifier(
        model, tokenizer, LABELS, [lambda c, t=t: render(t, c) for t in templates], num_classes_per_batch=2
    )
    return model, preprocess, weights


def reference_probs(reference, path):
    model, preprocess, weights = reference
    with torch.no_grad():
        feats = F.normalize(model.encode_image(preprocess(Image.open(path)).unsqueeze(0)), dim=-1)
        return (model.logit_scale.exp() * feats @ weights).softmax(dim=-1)[0]


def test_classify_matches_open_clip_reference(checkpoint, image_dir, reference, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# five labels\n" + "\n".join(LABELS) + "\n\n", encoding="utf-8")
    paths = sorted(str(p) for p in image_dir.iterdir())
    result = CliRunner().invoke(
        app,
        [
            "classify",
            *paths,
            "--labels",
            str(labels),
            "-m",
            ARCH,
            "-p",
            str(checkpoint),
            "--top-k",
            "5",
            "-b",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == paths
    worst = 0.0
    for rec in records:
        ref = reference_probs(reference, rec["path"])
        ours = {t["label"]: t["score"] for t in rec["top_k"]}
        assert set(ours) == set(LABELS)
        for i, label in enumerate(LABELS):
            worst = max(worst, abs(ours[label] - float(ref[i])))
        assert rec["label"] == LABELS[int(ref.argmax())]
        assert rec["score"] == max(ours.values())
        assert [t["score"] for t in rec["top_k"]] == sorted(ours.values(), reverse=True)
    assert worst < 1e-5
    # The check must be able to fail: the probabilities are not uniform.
    assert max(r["score"] for r in records) > 1.5 / len(LABELS)


def test_text_classifier_equals_build_zero_shot_classifier(checkpoint, reference):
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import encode_prompt_set
    from zeroshot.text.prompts import resolve_prompt_set

    loaded = load_model(resolve_spec(ARCH, str(checkpoint)))
    ours = encode_prompt_set(loaded, resolve_prompt_set(labels=LABELS), batch_size=7)
    ref = reference[2].T  # open_clip returns [dim, classes]
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(LABELS)), atol=1e-6)


def test_preprocessing_is_open_clips(checkpoint, reference):
    from zeroshot.model.models import load_model, resolve_spec

    loaded = load_model(resolve_spec(ARCH, str(checkpoint)))
    assert_same_preprocessing(loaded.preprocess, reference[1])
