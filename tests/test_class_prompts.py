"""Per-class prompts (CuPL-style): a class's embedding averages exactly its own prompts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from zeroshot.base.errors import PromptError
from zeroshot.cli import app
from zeroshot.model.models import resolve_spec
from zeroshot.text.classifier import encode_prompt_set, text_cache_key
from zeroshot.text.prompts import ClassPrompts, PromptSet, load_pack_file, resolve_prompt_set

from .conftest import ARCH

PACK = """\
name: birds-and-machines
description: per-class prompt test
source: written for this test
classes:
- heron
- name: crane (bird)
  text: crane, a type of bird
- name: crane (machine)
  text: [construction crane, tower crane]
  extra: ["a tall yellow crane lifting steel beams on a building site."]
- name: kite
  prompts: ["a kite flying high on a string.", "a colourful kite in the sky."]
templates:
- a photo of a {label}.
- a blurry photo of the {label}.
"""

EXPECTED = {
    "heron": ["a photo of a heron.", "a blurry photo of the heron."],
    "crane (bird)": ["a photo of a crane, a type of bird.", "a blurry photo of the crane, a type of bird."],
    "crane (machine)": [
        "a photo of a construction crane.", "a blurry photo of the construction crane.",
        "a photo of a tower crane.", "a blurry photo of the tower crane.",
        "a tall yellow crane lifting steel beams on a building site.",
    ],
    "kite": ["a kite flying high on a string.", "a colourful kite in the sky."],
}  # fmt: skip


@pytest.fixture
def pack_file(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_text(PACK, encoding="utf-8")
    return path


def reference(loaded, prompts_by_class):
    """open_clip's ensembling, one class at a time: encode, normalize, mean, normalize."""
    rows = []
    with torch.no_grad():
        for prompts in prompts_by_class:
            feats = F.normalize(loaded.model.encode_text(loaded.tokenizer(prompts)), dim=-1)
            rows.append(F.normalize(feats.mean(dim=0), dim=-1))
    return torch.stack(rows)


def test_pack_entries_give_each_class_exactly_its_prompts(pack_file):
    pack = load_pack_file(pack_file)
    assert pack.classes == tuple(EXPECTED)  # display names, in order
    assert not pack.uniform and pack.spec(0) is None
    assert {c: pack.prompts_for(c) for c in pack.classes} == EXPECTED
    assert pack.prompt_count() == sum(len(v) for v in EXPECTED.values())


@pytest.mark.parametrize("trim", [None, False])  # shared-prefix path and open_clip's padded path
def test_class_embeddings_equal_the_reference(vit, pack_file, trim):
    pack = load_pack_file(pack_file)
    ours = encode_prompt_set(vit, pack, batch_size=3, trim=trim)
    ref = reference(vit, list(EXPECTED.values()))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 2e-6
    # The check can fail: classes are told apart, and dropping one prompt moves its class.
    assert (ref[1] - ref[2]).abs().max() > 1e-3
    moved = reference(vit, [EXPECTED["crane (machine)"][:-1]])[0]
    assert (ours[2] - moved).abs().max() > 1e-4


def test_extra_prompts_change_only_their_class(vit):
    plain = PromptSet(name="p", classes=("heron", "kite"), templates=("a photo of a {label}.",))
    more = PromptSet(
        name="m", classes=plain.classes, templates=plain.templates,
        specs=(None, ClassPrompts(extra=("a kite on a beach.",))),
    )  # fmt: skip
    a, b = encode_prompt_set(vit, plain), encode_prompt_set(vit, more)
    assert torch.equal(a[0], b[0]) or (a[0] - b[0]).abs().max() < 1e-6
    assert (a[1] - b[1]).abs().max() > 1e-4
    ref = reference(vit, [["a photo of a heron."], ["a photo of a kite.", "a kite on a beach."]])
    assert (b - ref).abs().max() < 2e-6


def test_yaml_labels_file_and_cli_records_show_display_names(checkpoint, image_dir, tmp_path, vit):
    labels = tmp_path / "labels.yaml"
    labels.write_text(PACK.split("classes:\n", 1)[1].split("templates:", 1)[0], encoding="utf-8")
    ps = resolve_prompt_set(labels_file=labels)  # the default templates apply to the templated classes
    assert ps.classes == tuple(EXPECTED) and ps.prompts_for("kite") == EXPECTED["kite"]
    paths = sorted(str(p) for p in image_dir.iterdir())[:3]
    result = CliRunner().invoke(
        app, ["classify", *paths, "--labels", str(labels), "-m", ARCH, "-p", str(checkpoint), "-k", "4"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    weights = reference(vit, ps.class_prompts())
    for rec in records:
        assert {t["label"] for t in rec["top_k"]} == set(EXPECTED)
        with torch.no_grad():
            img = F.normalize(vit.model.encode_image(vit.preprocess(Image.open(rec["path"]))[None]), dim=-1)
            probs = (vit.model.logit_scale.exp() * img @ weights.T).softmax(dim=-1)[0]
        for t in rec["top_k"]:
            assert abs(t["score"] - float(probs[ps.classes.index(t["label"])])) < 1e-5


def test_cache_key_follows_the_per_class_prompts(pack_file):
    spec = resolve_spec(ARCH, "openai")
    pack = load_pack_file(pack_file)
    other = load_pack_file(pack_file)
    changed = PromptSet(
        name=pack.name, classes=pack.classes, templates=pack.templates,
        specs=(*pack.specs[:3], ClassPrompts(prompts=("a kite.",))),
    )  # fmt: skip
    assert text_cache_key(spec, pack) == text_cache_key(spec, other)
    assert text_cache_key(spec, pack) != text_cache_key(spec, changed)
    plain = PromptSet(name="x", classes=("a",), templates=("{label}",))
    assert "class_prompts" not in text_cache_key(spec, plain)  # plain sets keep their old keys


@pytest.mark.parametrize(
    "entry, problem",
    [
        ("- name: a\n  colour: red\n", "unknown key(s) colour"),
        ("- text: a\n", "needs a 'name'"),
        ("- name: a\n  prompts: [x]\n  extra: [y]\n", "'text' and 'extra' do not apply"),
        ("- name: a\n  extra: ['a {label}']\n", "used as written"),
        ("- name: a\n  prompts: []\n", "'prompts' is empty"),
        ("- a\n- name: a\n  text: b\n", "duplicate class 'a'"),
        ("- name: a\n  text: [b, b]\n", "duplicate text 'b'"),
        ("- name: 5\n  text: b\n", "class #1 is int"),
    ],
)
def test_bad_class_entries_are_one_line_errors(tmp_path, entry, problem):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\ntemplates: ['{{label}}']\nclasses:\n{entry}", encoding="utf-8")
    with pytest.raises(PromptError) as e:
        load_pack_file(path)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_classes_with_only_own_prompts_need_no_templates(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nclasses:\n- name: a\n  prompts: [one, two]\n- name: b\n  prompts: [three]\n")
    pack = load_pack_file(path)
    assert pack.templates == () and pack.class_prompts() == [["one", "two"], ["three"]]
    path.write_text("name: p\nclasses:\n- a\n- name: b\n  prompts: [three]\n")
    with pytest.raises(PromptError, match="missing 'templates'"):
        load_pack_file(path)
