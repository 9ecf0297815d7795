"""Cutting text batches to their longest prompt gives the padded path's embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zeroshot.classifier import encode_prompt_set, encode_texts, trimmable
from zeroshot.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.prompts import PromptSet, load_pack

from .conftest import ARCH

TEXTS = [
    "a",
    "a photo of a cat.",
    "a very long description of a small brown dog sitting on a red sofa next to a window in winter " * 3,
    "élan vital, 猫, and emoji 🐈",
    "a photo of a dog.",
    "",
]


@pytest.fixture(scope="module")
def vit(checkpoint):
    return load_model(resolve_spec(ARCH, str(checkpoint)))


@pytest.mark.parametrize("which", ["vit", "fashion"])
def test_trimmed_equals_padded(which, vit):
    loaded = vit if which == "vit" else load_model(resolve_spec(BUNDLED_NAME))
    assert trimmable(loaded.model)
    padded = encode_texts(loaded, TEXTS, batch_size=4, trim=False)
    trimmed = encode_texts(loaded, TEXTS, batch_size=4, trim=True)
    assert (padded - trimmed).abs().max() < 1e-5
    # And both equal open_clip's own encode_text, one prompt at a time, in the caller's order.
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ref = F.normalize(loaded.model.encode_text(loaded.tokenizer([text])), dim=-1)[0]
            assert (trimmed[i] - ref).abs().max() < 1e-5


def test_whole_pack_trimmed_equals_padded(vit):
    pack = load_pack("cifar100")
    subset = PromptSet(name="c", classes=pack.classes[:12], templates=pack.templates)
    a = encode_prompt_set(vit, subset, batch_size=64, trim=False)
    b = encode_prompt_set(vit, subset, batch_size=64, trim=True)
    assert (a - b).abs().max() < 1e-5


def test_non_causal_tower_falls_back_to_padding(vit, monkeypatch):
    monkeypatch.setattr(vit.model, "attn_mask", None)  # what a bidirectional (SigLIP-style) tower looks like
    assert not trimmable(vit.model)
    out = encode_texts(vit, TEXTS[:3])
    with torch.no_grad():
        ref = F.normalize(vit.model.encode_text(vit.tokenizer(TEXTS[:3])), dim=-1)
    assert (out - ref).abs().max() < 1e-6
