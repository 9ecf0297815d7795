"""`zeroshot models`: a chooser with family, size, input, needs and open_clip's published figures."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.model.catalog import ARCHITECTURES_FILE, RESULTS_FILE, catalog, counted_params, family_of, sort_rows
from zeroshot.model.models import BUNDLED_NAME


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, str | None], dict]:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {(r["model"], r["pretrained"]): r for r in rows}


def test_every_tagged_model_is_listed_once_with_its_figures(records):
    expected = {(BUNDLED_NAME, "bundled"), *open_clip.list_pretrained()}
    assert set(records) == expected and len(records) == len(expected)
    # As open_clip 2.24.0's docs/openclip_results.csv publishes them (the issue's own figures).
    b32 = records[("ViT-B-32", "openai")]
    assert (b32["imagenet_top1"], b32["gflops"], b32["params_m"], b32["image_size"]) == (0.6332, 14.78, 151.28, 224)
    assert b32["family"] == "CLIP ViT" and b32["needs"] == []
    siglip = records[("ViT-B-16-SigLIP", "webli")]
    assert siglip["imagenet_top1"] == 0.7604 and siglip["family"] == "SigLIP"
    assert siglip["needs"] == ["transformers", "sentencepiece"]
    assert records[("ViT-L-14-CLIPA", "datacomp1b")]["needs"] == ["transformers"]  # BERT's WordPiece
    # Newer than that file: no published figure, and none made up; size and input still known.
    pe = records[("PE-Core-T-16-384", "meta")]
    assert pe["imagenet_top1"] is None and pe["gflops"] is None and pe["image_size"] == 384 and pe["params_m"] > 0
    assert records[("ViT-H-14-worldwide", "metaclip2_worldwide")]["family"] == "MetaCLIP 2 worldwide"
    assert all(r["params_m"] for r in records.values())  # every row has a size to choose by


def test_parameter_counts_are_the_architectures_own(records):
    """The shipped table agrees with building the installed open_clip's architectures (a stale or
    made-up table fails here), and with open_clip's published counts where there are some."""
    counted = counted_params()
    for name in ("ViT-B-32", "MobileCLIP-S1", "ViT-B-32-SigLIP2-256"):
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
        assert counted[name] == round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    assert f"open_clip {open_clip.__version__}" in ARCHITECTURES_FILE.read_text().splitlines()[0]
    lines = [line for line in RESULTS_FILE.read_text().splitlines() if not line.startswith("#")][1:]
    compared = 0
    for name, tag, params, *_ in (line.split(",") for line in lines):
        assert (name, tag) in records  # every published row names a model and tag open_clip has
        if name in counted:
            assert abs(counted[name] - float(params)) < 0.05, (name, counted[name], params)
            compared += 1
    assert compared > 100


def test_sorting_filtering_and_plain_output():
    rows = catalog()
    best = sort_rows(rows, "top1")
    scores = [r.imagenet_top1 for r in best]
    known = [s for s in scores if s is not None]
    assert known == sorted(known, reverse=True) and scores[: len(known)] == known  # unknowns last
    assert best[0].imagenet_top1 == max(known)
    small = [r.params_m for r in sort_rows(rows, "params")]
    assert small == sorted(small)
    only = CliRunner().invoke(app, ["models", "--family", "siglip 2", "--sort", "size", "--json"])
    sizes = [json.loads(line)["image_size"] for line in only.stdout.splitlines()]
    assert sizes == sorted(sizes) and len(sizes) > 5
    assert {json.loads(line)["family"] for line in only.stdout.splitlines()} == {"SigLIP 2"}
    plain = CliRunner().invoke(app, ["models", "--sort", "top1"]).stdout.splitlines()
    assert plain[0].split("\t")[:3] == ["model", "pretrained", "family"]
    assert plain[1].split("\t")[6] == f"{100 * max(known):.1f}"
    bad = CliRunner().invoke(app, ["models", "--sort", "speed"])
    assert bad.exit_code == 2 and "--sort" in bad.stderr and "speed" in bad.stderr
    untagged = CliRunner().invoke(app, ["models", "--all", "--json"]).stdout.splitlines()
    assert any(json.loads(line)["model"] == "ViT-L-14-worldwide" for line in untagged)


@pytest.mark.parametrize(
    ("name", "family"),
    [("ViT-B-16-SigLIP2-256", "SigLIP 2"), ("nllb-clip-base-siglip", "NLLB-CLIP"), ("RN50x4", "CLIP ResNet"),
     ("ViT-H-14-worldwide-378", "MetaCLIP 2 worldwide"), ("xlm-roberta-large-ViT-H-14", "XLM-RoBERTa CLIP"),
     ("EVA01-g-14", "EVA"), ("swin_base_patch4_window7_224", "timm backbone")],
)  # fmt: skip
def test_family_of(name, family):
    assert family_of(name) == family
