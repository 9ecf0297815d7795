"""Classifier files: build-prompts -o FILE, classify --classifier FILE, and refusing another model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zeroshot.uses.export import ClassifierFileError, load_classifier

from .conftest import ARCH, invoke

PACK = """\
name: pets-and-more
description: export test
source: written for this test
classes:
- tabby cat
- name: dog
  text: [golden retriever, beagle]
  extra: ["a dog fetching a stick."]
- name: nothing
  prompts: ["an empty room."]
templates:
- a photo of a {label}.
- a drawing of the {label}.
"""


@pytest.fixture
def exported(tmp_path, checkpoint):
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK, encoding="utf-8")
    out = tmp_path / "pets.safetensors"
    result = invoke("build-prompts", "--dataset", pack, "-m", ARCH, "-p", checkpoint, "-o", out)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["output"] == str(out) and record["prompts"] == 2 + 5 + 1
    return pack, out, record


def test_round_trip_keeps_embeddings_classes_and_prompts(exported, checkpoint):
    pack, out, record = exported
    from safetensors.numpy import load_file

    cached = load_file(record["cache_file"])["weights"]
    file = load_classifier(out)
    assert np.array_equal(file.weights, cached)  # bit for bit what the cache holds
    assert file.prompt_set.classes == ("tabby cat", "dog", "nothing")
    assert file.prompt_set.prompts_for("dog")[-1] == "a dog fetching a stick."
    assert file.prompt_set.class_prompts() == _pack_prompts(pack)
    assert file.model == ARCH and file.pretrained == str(checkpoint)
    assert file.identity["kind"] == "file" and len(file.identity["sha256"]) == 64


def _pack_prompts(pack):
    from zeroshot.text.prompts import load_pack_file

    return load_pack_file(pack).class_prompts()


def test_classify_with_the_file_equals_classify_with_the_pack(exported, checkpoint, image_dir):
    pack, out, _ = exported
    paths = sorted(str(p) for p in image_dir.iterdir())[:4]
    common = ["-k", "3", "--no-cache"]
    with_pack = invoke("classify", *paths, "--dataset", pack, "-m", ARCH, "-p", checkpoint, *common)
    # No --model: the file says which model it belongs to.
    with_file = invoke("classify", *paths, "--classifier", out, *common)
    assert with_pack.exit_code == 0 and with_file.exit_code == 0, with_file.output
    assert with_file.stdout == with_pack.stdout
    assert {t["label"] for line in with_file.stdout.splitlines() for t in json.loads(line)["top_k"]} <= {
        "tabby cat", "dog", "nothing",
    }  # fmt: skip


def test_another_model_is_refused(exported, checkpoint, tmp_path, image_dir):
    _, out, _ = exported
    # Same architecture, other weights: one parameter changed.
    state = torch.load(checkpoint, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 0.5
    other = tmp_path / "other.pt"
    torch.save(state, other)
    img = str(next(image_dir.iterdir()))
    for extra, what in [
        (["-m", ARCH, "-p", other], "different weights"),
        (["-m", "fashion-mini"], "different architecture"),
    ]:  # noqa: E501
        result = invoke("classify", img, "--classifier", out, *extra)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert f"was built for {ARCH} ({checkpoint})" in result.stderr and what in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["cache-entry", "junk", "missing", "tampered"])
def test_unusable_files_are_one_line_errors(exported, tmp_path, case, image_dir):
    _, out, record = exported
    bad = tmp_path / "bad.safetensors"
    if case == "cache-entry":  # a safetensors file, but not a classifier file
        bad.write_bytes(Path(record["cache_file"]).read_bytes())
        expect = "not a zeroshot classifier file"
    elif case == "junk":
        bad.write_bytes(b"\x00" * 3)
        expect = "truncated"
    elif case == "missing":
        expect = "no such file"
    else:  # weights scaled: rows no longer unit vectors
        from safetensors.numpy import load_file, save_file

        from zeroshot.base import cache

        save_file({"weights": load_file(str(out))["weights"] * 2}, str(bad), metadata=cache.read_metadata(out))
        expect = "not finite unit vectors"
    with pytest.raises(ClassifierFileError, match=expect):
        load_classifier(bad)
    result = invoke("classify", str(next(image_dir.iterdir())), "--classifier", bad)
    assert result.exit_code == 2 and expect in result.stderr and len(result.stderr.splitlines()) == 1


def test_classifier_excludes_other_class_options(exported, image_dir):
    _, out, _ = exported
    result = invoke("classify", str(next(image_dir.iterdir())), "--classifier", out, "--label", "x")
    assert result.exit_code == 2 and "--classifier brings its own classes" in result.stderr
