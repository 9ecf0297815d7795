"""--multi-label scores and decisions, the calibration fit, and --calibration files."""

from __future__ import annotations

import csv
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.text.classifier import encode_prompt_set
from zeroshot.text.prompts import PromptSet, load_pack
from zeroshot.uses.calibration import expected_calibration_error, fit_platt, load_calibration, multilabel_rule
from zeroshot.uses.ranking import MultiLabel, multilabel_records, multilabel_scores

from .conftest import ARCH, invoke
from .test_table_output import assert_table_is

LABELS = ["tabby cat", "red car", "green tree", "blue sky"]


def test_scores_follow_their_documented_formulas():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 8, generator=g)
    weights = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    bg = F.normalize(torch.randn(8, generator=g), dim=0)
    x = F.normalize(feats, dim=-1).double().numpy()
    cos, ref = x @ weights.double().numpy().T, x @ bg.double().numpy()
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    got = multilabel_scores(feats, weights, 50.0, MultiLabel(background=bg))
    assert got.dtype == np.float64  # numpy, float64: the same with or without torch
    assert np.allclose(got, sig(50.0 * (cos - ref[:, None])), atol=1e-12)
    got = multilabel_scores(feats, weights, 50.0, MultiLabel(kind="calibrated", scale=12.0, bias=-3.0))
    assert np.allclose(got, sig(12.0 * cos - 3.0), atol=1e-12)
    got = multilabel_scores(feats, weights, 50.0, MultiLabel(kind="model", bias=-10.0))
    assert np.allclose(got, sig(50.0 * cos - 10.0), atol=1e-12)


def test_records_list_exactly_the_labels_over_the_threshold():
    scores = torch.tensor([[0.9, 0.2, 0.6, 0.5], [0.1, 0.3, 0.2, 0.4]])
    recs = multilabel_records(["a.jpg", "b.jpg"], scores, LABELS, top_k=2, threshold=0.5)
    assert recs[0]["labels"] == ["tabby cat", "green tree", "blue sky"]  # best first; 0.5 counts
    assert recs[0]["label"] == "tabby cat" and recs[0]["score"] == pytest.approx(0.9)
    assert [t["label"] for t in recs[0]["top_k"]] == ["tabby cat", "green tree"]  # -k limits top_k only
    assert recs[1]["labels"] == [] and recs[1]["label"] is None and recs[1]["score"] == pytest.approx(0.4)


def test_rule_prefers_calibration_then_model_bias_then_background(vit):
    ps = PromptSet(name="x", classes=tuple(LABELS), templates=("a photo of a {label}.",))
    rule = multilabel_rule(vit, ps, 0.4, "object")
    assert rule.kind == "background" and rule.threshold == 0.4
    ref = encode_prompt_set(vit, PromptSet(name="b", classes=("object",), templates=ps.templates))[0]
    assert torch.allclose(rule.background, ref)
    siglip_like = SimpleNamespace(model=SimpleNamespace(logit_bias=torch.nn.Parameter(torch.tensor([-10.0]))))
    assert multilabel_rule(siglip_like, ps).kind == "model"  # type: ignore[arg-type]
    assert multilabel_rule(siglip_like, ps).bias == pytest.approx(-10.0)  # type: ignore[arg-type]
    cal = SimpleNamespace(a=20.0, b=-5.0)
    rule = multilabel_rule(siglip_like, ps, calibration=cal)  # type: ignore[arg-type]
    assert (rule.kind, rule.scale, rule.bias) == ("calibrated", 20.0, -5.0)


def test_platt_fit_recovers_known_parameters_and_improves_calibration():
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(20000, 10, generator=g, dtype=torch.float64) * 0.7 - 0.2
    present = torch.rand(cos.shape, generator=g, dtype=torch.float64) < torch.sigmoid(30 * cos - 6)
    a, b = fit_platt(cos, present, init_scale=100.0)
    assert abs(a - 30) < 1.5 and abs(b + 6) < 0.4
    assert expected_calibration_error(torch.sigmoid(a * cos + b), present) < 0.01
    assert expected_calibration_error(torch.sigmoid(100 * cos), present) > 0.1  # uncalibrated: far off


def test_cli_multi_label_matches_the_reference(vit, checkpoint, image_dir):
    paths = sorted(str(p) for p in image_dir.iterdir())[:4]
    args = [*paths, "-m", ARCH, "-p", checkpoint, "-k", str(len(LABELS)), "--multi-label", "--threshold", "0.3"]
    result = invoke("classify", *[a for lab in LABELS for a in ("--label", lab)], *args)
    assert result.exit_code == 0, result.output
    assert "not calibrated" in result.stderr
    templates = load_pack("default").templates
    weights = encode_prompt_set(vit, PromptSet(name="l", classes=tuple(LABELS), templates=templates))
    bg = encode_prompt_set(vit, PromptSet(name="b", classes=("object",), templates=templates))[0]
    for line in result.stdout.splitlines():
        rec = json.loads(line)
        with torch.no_grad():
            img = F.normalize(vit.model.encode_image(vit.preprocess(Image.open(rec["path"]))[None]), dim=-1)[0]
        expect = torch.sigmoid(vit.logit_scale * (weights @ img - bg @ img))
        got = {t["label"]: t["score"] for t in rec["top_k"]}
        for i, label in enumerate(LABELS):
            assert got[label] == pytest.approx(float(expect[i]), abs=1e-5)
        assert rec["labels"] == [t["label"] for t in rec["top_k"] if t["score"] >= 0.3]


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory, fashion_mnist):
    out = tmp_path_factory.mktemp("cal") / "cal.json"
    result = invoke("eval", "--dataset", "fashion-mnist", "-m", BUNDLED_NAME, "--split", "train", "--limit", "400",
                    "--calibrate", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_eval_calibrate_fits_and_the_fit_calibrates(calibration_file):
    out, record = calibration_file
    info = record["calibration"]
    assert info["images"] == 400 and info["classes"] == 10
    assert info["ece_calibrated"] < 0.05 < info["ece_uncalibrated"]
    cal = load_calibration(out)
    assert (cal.a, cal.b) == (info["a"], info["b"]) and cal.model == BUNDLED_NAME
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # a file to share, not a private one


def test_classify_with_calibration_uses_it(calibration_file, tmp_path):
    out, record = calibration_file
    a, b = record["calibration"]["a"], record["calibration"]["b"]
    from zeroshot.image.idx import load_split

    images, labels = load_split(None, "test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.asarray(images[i])).save(paths[-1])
    result = invoke(
        "classify", *paths, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "--calibration", out, "-k", "10"
    )
    assert result.exit_code == 0, result.output
    assert "not calibrated" not in result.stderr
    loaded = load_model(resolve_spec(BUNDLED_NAME))
    weights = encode_prompt_set(loaded, load_pack("fashion-mnist"))
    for line in result.stdout.splitlines():
        rec = json.loads(line)
        with torch.no_grad():
            img = F.normalize(loaded.model.encode_image(loaded.preprocess(Image.open(rec["path"]))[None]), dim=-1)[0]
        cos = weights @ img
        for t in rec["top_k"]:
            i = load_pack("fashion-mnist").classes.index(t["label"])
            assert t["score"] == pytest.approx(1 / (1 + math.exp(-(a * float(cos[i]) + b))), abs=1e-5)


def test_calibration_for_another_model_or_broken_is_refused(calibration_file, checkpoint, image_dir, tmp_path):
    out, _ = calibration_file
    img = str(next(image_dir.iterdir()))
    result = invoke("classify", img, "--label", "a", "--label", "b", "-m", ARCH, "-p", checkpoint, "--calibration", out)
    assert result.exit_code == 2 and "was fitted for fashion-mini" in result.stderr
    bad = tmp_path / "bad.json"
    for text, expect in [("{", "not readable JSON"), ('{"format": "x"}', "not a zeroshot calibration file"),
                         (out.read_text().replace('"a": ', '"a": "x", "_a": '), "malformed")]:  # fmt: skip
        bad.write_text(text)
        result = invoke("classify", img, "--label", "a", "--label", "b", "-m", BUNDLED_NAME, "--calibration", bad)
        assert result.exit_code == 2 and expect in result.stderr and len(result.stderr.splitlines()) == 1


def test_multi_label_in_every_format_and_with_min_score(checkpoint, image_dir, tmp_path):
    paths = sorted(str(p) for p in image_dir.iterdir())[:3]
    labels = ["cat", "dog", "car"]
    base = ["classify", *paths, *[a for lab in labels for a in ("--label", lab)], "-m", ARCH, "-p", checkpoint,
            "--multi-label", "-q"]  # fmt: skip
    # Each label's score is its own sigmoid, whatever the threshold. At 1 no label is present; that
    # run gives the scores. The threshold then goes between one image's second and third best, so
    # that two of its labels are present (best first) and one is not; at 0, every label would be
    # present whatever the scores.
    none = [json.loads(line) for line in invoke(*base, "--threshold", "1").stdout.splitlines()]
    assert len(none) == len(paths)
    for rec in none:
        assert rec["labels"] == [] and rec["label"] is None and len(rec["top_k"]) == len(labels)
    scores = [{t["label"]: t["score"] for t in rec["top_k"]} for rec in none]
    split = max(scores, key=lambda record: sorted(record.values())[-2] - sorted(record.values())[-3])
    threshold = (sorted(split.values())[-2] + sorted(split.values())[-3]) / 2
    assert min(abs(v - threshold) for record in scores for v in record.values()) > 0.005
    present = [sorted((lab for lab in labels if record[lab] >= threshold), key=lambda lab: -record[lab])
               for record in scores]  # fmt: skip
    assert len(present[scores.index(split)]) == 2 and 0 < sum(map(len, present)) < len(paths) * len(labels)
    lines = invoke(*base, "--threshold", threshold, "-k", len(labels))
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["labels"] for r in records] == present
    assert [{t["label"]: t["score"] for t in r["top_k"]} for r in records] == scores
    assert [(r["label"], r["score"]) for r in records] == [
        (p[0] if p else None, max(s.values())) for p, s in zip(present, scores, strict=True)
    ]
    csv_out = invoke(*base, "--threshold", threshold, "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert csv_out.stdout.splitlines()[0] == "path,label,score,error,top_k,labels"
    assert [(row["path"], row["labels"].split(";") if row["labels"] else []) for row in rows] == list(
        zip(paths, present, strict=True)
    )
    table = invoke(*base, "--threshold", threshold, "-k", len(labels), "-f", "table")
    assert_table_is(table.stdout, records, multi_label=True)
    # --min-score is the single-label cut-off: with --multi-label it would contradict the threshold
    # ("label": null beside labels present), so the pair is refused, as in the library.
    both = invoke(*base, "--threshold", "0", "--min-score", "0.99999")
    assert both.exit_code == 2 and both.stdout == ""
    assert "--min-score is for single-label runs; with --multi-label, --threshold decides" in both.stderr


def test_multi_label_options_are_never_silently_ignored(fake_model, tmp_path):
    from zeroshot.base.errors import UsageError

    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (250, 10, 10)).save(image)
    base = ["classify", str(image), "--label", "red", "--label", "blue", *fake_model]
    cal = tmp_path / "cal.json"
    cal.write_text("{}")
    refused = {
        ("--threshold", "0.3"): "--threshold applies only with --multi-label (or --calibration)",
        ("--background", "garment"): "--background applies only with --multi-label (or --calibration)",
        ("--threshold", "0.3", "--background", "x"): "--threshold and --background apply only with --multi-label",
        ("--calibration", str(cal), "--background", "x"): "--background is not used with --calibration",
        ("--multi-label", "--min-score", "0.5"): "--min-score is for single-label runs",
    }
    for extra, message in refused.items():
        result = invoke(*base, *extra)
        assert result.exit_code == 2 and result.stdout == "", extra
        assert result.stderr.count("\n") == 1 and message in result.stderr, (extra, result.stderr)
    import zeroshot

    zs = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai", device="cpu")
    text = zs.text_classifier(zeroshot.resolve_prompt_set(labels=["red", "blue"]), use_cache=False)
    for kwargs in ({"threshold": 0.3}, {"background": "x"}, {"multi_label": True, "min_score": 0.5}):
        with pytest.raises(UsageError):
            zs.classify([str(image)], text, **kwargs)
    assert next(zs.classify(str(image), text, multi_label=True, threshold=0.5, workers=0))["labels"] == ["red"]
