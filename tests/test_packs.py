"""Every bundled prompt pack validates, and `zeroshot datasets` lists them."""

from __future__ import annotations

import json

import open_clip
import pytest
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.text.prompts import DEFAULT_PACK, PLACEHOLDER, _norm, datasets, list_packs, load_pack, load_pack_file

# Class counts as the datasets' own papers give them (Caltech-101 counts its background class).
CLASS_COUNTS = {
    "birdsnap": 500, "caltech101": 102, "cifar10": 10, "cifar100": 100, "clevr-counts": 8, "country211": 211,
    "dtd": 47, "eurosat": 10, "fashion-mnist": 10, "fer2013": 7, "fgvc-aircraft": 100, "flowers102": 102,
    "food101": 101, "gtsrb": 43, "hateful-memes": 2, "imagenet": 1000, "kitti-distance": 4, "mnist": 10,
    "oxford-pets": 37, "pcam": 2, "rendered-sst2": 2, "resisc45": 45, "stanford-cars": 196, "stl10": 10,
    "sun397": 397, "svhn": 10, "ucf101": 101, "voc2007": 20,
}  # fmt: skip


@pytest.fixture(scope="module")
def clip_tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")  # CLIP's BPE tokenizer ships inside open_clip: offline


@pytest.mark.parametrize("stem", sorted(list_packs()))
def test_every_pack_validates(stem, clip_tokenizer):
    path = list_packs()[stem]
    pack = load_pack_file(path, require_classes=stem != DEFAULT_PACK)
    assert pack.name == stem, "a pack's name is its file name"
    assert pack.description and pack.source, f"{stem}: needs a description and a source"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), f"{stem}: starts with a comment naming the dataset and its source"
    assert all(PLACEHOLDER in t for t in pack.templates)
    if stem == DEFAULT_PACK:
        assert pack.classes == ()
        return
    assert len(pack.classes) == CLASS_COUNTS[stem]
    prompts = pack.class_prompts()
    assert len(prompts) == len(pack.classes) and all(prompts), "every class has at least one prompt"
    flat = [p for ps in prompts for p in ps]
    assert len(flat) == pack.prompt_count()
    assert not any(PLACEHOLDER in p for p in flat)
    # Every prompt fits CLIP's 77-token context (open_clip would silently cut a longer one).
    tokens = clip_tokenizer(flat)
    assert int((tokens[:, -1] != 0).sum()) == 0, f"{stem}: a prompt is cut at 77 tokens"


def test_at_least_25_datasets_with_unique_names_and_aliases():
    packs = datasets()
    assert len(packs) >= 25
    assert {p.name for p in packs} == set(CLASS_COUNTS)
    seen: dict[str, str] = {}
    for p in packs:
        for n in (p.name, *p.aliases):
            assert _norm(n) not in seen, f"{n!r} names both {seen.get(_norm(n))} and {p.name}"
            seen[_norm(n)] = p.name
    # Aliases reach their pack: CLIP_benchmark's names and common spellings.
    aliases = {
        "cars": "stanford-cars", "pets": "oxford-pets", "imagenet1k": "imagenet", "FLOWERS": "flowers102",
        "renderedsst2": "rendered-sst2", "fgvc_aircraft": "fgvc-aircraft",
    }  # fmt: skip
    for alias, name in aliases.items():
        assert load_pack(alias).name == name


def test_pack_contents_match_published_lists():
    """Spot checks against the published lists (openai/CLIP data/prompts.md, CLIP_benchmark)."""
    assert load_pack("food101").classes[:3] == ("apple pie", "baby back ribs", "baklava")
    assert load_pack("stanford-cars").classes[0] == "AM General Hummer SUV 2000"
    assert load_pack("sun397").classes[-1] == "youth hostel"
    assert load_pack("birdsnap").prompts_for("Zone tailed Hawk") == ["a photo of a Zone tailed Hawk, a type of bird."]
    assert load_pack("ucf101").templates[:2] == ("a photo of a person {label}.", "a video of a person {label}.")
    assert len(load_pack("ucf101").templates) == 48
    assert load_pack("eurosat").classes[0] == "annual crop land"  # torchvision's label 0 (AnnualCrop)
    fer = load_pack("fer2013")
    assert fer.prompts_for("surprised")[0] == "a photo of a surprised looking face."
    assert "they look spooked." in fer.prompts_for("surprised")  # CLIP's extra names for the class
    assert len(fer.prompts_for("surprised")) == 3 * 6 and len(fer.prompts_for("angry")) == 6
    kitti = load_pack("kitti-distance")
    assert kitti.classes == ("car beside me", "car nearby", "car in the distance", "no car")
    assert kitti.prompts_for("no car") == ["a photo i took with no car."]


def test_datasets_command_lists_every_pack():
    result = CliRunner().invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(CLASS_COUNTS) >= 25
    by_name = {r["name"]: r for r in records}
    assert by_name["imagenet"]["classes"] == 1000 and by_name["imagenet"]["templates"] == 80
    assert by_name["imagenet"]["prompts"] == 80_000 and "imagenet1k" in by_name["imagenet"]["aliases"]
    assert by_name["fer2013"]["classes_with_own_prompts"] == 4 and by_name["fer2013"]["prompts"] == 6 * 12
    assert all(r["description"] and r["source"] for r in records)
    table = CliRunner().invoke(app, ["datasets"])  # not a terminal: tab-separated lines
    lines = table.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "classes", "templates", "description"]
    assert len(lines) == len(records) + 1 and "sun397\t397\t2\t" in table.stdout
