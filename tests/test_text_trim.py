"""Cutting text batches to their longest prompt gives the padded path's embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zeroshot.base.errors import PromptError
from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.text.classifier import encode_prompt_set, encode_texts
from zeroshot.text.prompts import PromptSet, load_pack
from zeroshot.text.texttower import prefix_shareable, trimmable

TEXTS = [
    "a",
    "a photo of a cat.",
    "a very long description of a small brown dog sitting on a red sofa next to a window in winter " * 3,
    "élan vital, 猫, and emoji 🐈",
    "a photo of a dog.",
    "",
]


@pytest.mark.parametrize("which", ["vit", "fashion"])
def test_trimmed_equals_padded(which, vit):
    loaded = vit if which == "vit" else load_model(resolve_spec(BUNDLED_NAME))
    assert trimmable(loaded.model)
    texts = TEXTS
    if which == "fashion":  # context 32: the long prompt does not fit and is refused, not cut
        with pytest.raises(PromptError, match="62 tokens, over the 32"):
            encode_texts(loaded, TEXTS)
        texts = [t for t in TEXTS if len(t) < 100]
    padded = encode_texts(loaded, texts, batch_size=4, trim=False)
    trimmed = encode_texts(loaded, texts, batch_size=4, trim=True)
    assert (padded - trimmed).abs().max() < 1e-5
    # And both equal open_clip's own encode_text, one prompt at a time, in the caller's order.
    with torch.no_grad():
        for i, text in enumerate(texts):
            ref = F.normalize(loaded.model.encode_text(loaded.tokenizer([text])), dim=-1)[0]
            assert (trimmed[i] - ref).abs().max() < 1e-5


def test_whole_pack_trimmed_equals_padded(vit):
    pack = load_pack("cifar100")
    subset = PromptSet(name="c", classes=pack.classes[:12], templates=pack.templates)
    a = encode_prompt_set(vit, subset, batch_size=64, trim=False)
    b = encode_prompt_set(vit, subset, batch_size=64, trim=True)
    assert (a - b).abs().max() < 1e-5


def test_non_causal_tower_falls_back_to_padding(vit):
    mask = vit.model.attn_mask
    vit.model.attn_mask = None  # what a bidirectional (SigLIP-style) tower looks like
    try:
        assert not trimmable(vit.model) and not prefix_shareable(vit.model)
        out = encode_texts(vit, TEXTS[:3])
        subset = PromptSet(name="n", classes=("cat", "dog"), templates=("a photo of a {label}.", "a {label}"))
        classes = encode_prompt_set(vit, subset)
        with torch.no_grad():
            ref = F.normalize(vit.model.encode_text(vit.tokenizer(TEXTS[:3])), dim=-1)
            per = F.normalize(vit.model.encode_text(vit.tokenizer(subset.all_prompts())), dim=-1)
        assert (out - ref).abs().max() < 1e-6
        assert (classes - F.normalize(per.reshape(2, 2, -1).mean(dim=1), dim=-1)).abs().max() < 1e-6
    finally:
        vit.model.attn_mask = mask  # a buffer: monkeypatch would delete it on undo


def test_shared_prefix_path_equals_padded(vit):
    """Prompts of one template share their leading tokens' computation: same numbers as padded."""
    assert prefix_shareable(vit.model)
    pack = load_pack("imagenet")
    subset = PromptSet(name="i", classes=pack.classes[::250], templates=pack.templates[::8])
    shared = encode_prompt_set(vit, subset, batch_size=3)
    padded = encode_prompt_set(vit, subset, trim=False)
    assert (shared - padded).abs().max() < 1e-5


def test_shared_prefix_edge_cases(vit):
    """A label that is the start of another, labels sharing first words, a template starting with
    the label (only the start-of-text token shared), and a one-class group."""
    cases = [
        PromptSet(name="a", classes=("cat", "cat toy", "cat toy shop"), templates=("{label}", "a photo of a {label}.")),
        PromptSet(name="b", classes=("red car", "red carpet", "blue car"), templates=("{label} on a road",)),
        PromptSet(name="c", classes=("tench",), templates=("a bad photo of a {label}.", "{label}")),
    ]
    for subset in cases:
        shared = encode_prompt_set(vit, subset, batch_size=2)
        with torch.no_grad():
            ref = F.normalize(vit.model.encode_text(vit.tokenizer(subset.all_prompts())), dim=-1)
        ref = F.normalize(ref.reshape(len(subset.classes), len(subset.templates), -1).mean(dim=1), dim=-1)
        assert (shared - ref).abs().max() < 1e-5, subset.name


def test_other_blocks_do_not_share_prefixes(vit, monkeypatch):
    block = vit.model.transformer.resblocks[0]
    monkeypatch.setattr(block, "ln_1_kv", torch.nn.Identity(), raising=False)  # a cross-attention block
    assert not prefix_shareable(vit.model)
