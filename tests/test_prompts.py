"""Prompt packs, labels files and templates files: loading and one-line validation errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from zeroshot.base.errors import PromptError, UnknownDatasetError
from zeroshot.cli import app
from zeroshot.text.prompts import (
    PLACEHOLDER,
    list_packs,
    load_pack,
    load_pack_file,
    load_templates_file,
    read_labels_file,
    resolve_prompt_set,
)


def test_bundled_packs_are_valid_and_complete():
    packs = list_packs()
    assert {"cifar10", "cifar100", "imagenet", "default"} <= set(packs)
    sizes = {"cifar10": (10, 18), "cifar100": (100, 18), "imagenet": (1000, 80)}
    for name, (n_classes, n_templates) in sizes.items():
        pack = load_pack(name)
        assert (len(pack.classes), len(pack.templates)) == (n_classes, n_templates)
        assert pack.source, f"{name} must name its source"
    assert load_pack("default").classes == ()
    assert all(PLACEHOLDER in t for p in packs for t in load_pack(p).templates)


def test_pack_contents_match_their_sources():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    imagenet = load_pack("imagenet")
    assert list(imagenet.templates) == [t(PLACEHOLDER) for t in OPENAI_IMAGENET_TEMPLATES]
    # Same as open_clip's list except the two renamed duplicates (documented in the file).
    differ = [i for i, (a, b) in enumerate(zip(imagenet.classes, IMAGENET_CLASSNAMES, strict=True)) if a != b]
    assert differ == [744, 836]
    assert load_pack("cifar10").classes[:3] == ("airplane", "automobile", "bird")
    assert load_pack("cifar100").prompts_for("maple tree")[0] == "a photo of a maple tree."


def test_pack_names_are_forgiving_and_unknown_lists_known():
    assert load_pack("CIFAR10").name == "cifar10"
    with pytest.raises(UnknownDatasetError) as e:
        load_pack("cifar")
    msg = str(e.value)
    assert "unknown dataset 'cifar'" in msg and "cifar10" in msg and "imagenet" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "body, problem",
    [
        ("name: x\nclasses: [a, b]\ntemplates: ['{label}']\ncolour: red\n", "unknown key(s) colour"),
        ("name: x\nclasses: [a, b]\ntemplates: ['a photo']\n", "has no {label} placeholder"),
        ("name: x\nclasses: []\ntemplates: ['{label}']\n", "'class' is empty"),
        ("name: x\nclasses: [a, b, a]\ntemplates: ['{label}']\n", "duplicate class 'a'"),
        ("name: x\nclasses: [a, 7]\ntemplates: ['{label}']\n", "class #2 is int"),
        ("name: x\nclasses: [a]\ntemplates: []\n", "'templates' is empty"),
        ("name: x\nclasses: [a]\n", "missing 'templates'"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\nclasses: [a\n", "invalid YAML at line"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ],
)
def test_invalid_pack_is_one_line_naming_file(tmp_path, body, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(PromptError) as e:
        load_pack_file(path)
    msg = str(e.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


def test_cli_reports_bad_pack_with_exit_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nclasses: [a, a]\ntemplates: ['{label}']\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["build-prompts", "--dataset", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "duplicate class" in lines[0]
    assert "Traceback" not in result.output


def test_labels_file_rules(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeff# comment\n\ncat\n  dog  \r\n# another\nélan vital\n".encode())
    assert read_labels_file(path) == ["cat", "dog", "élan vital"]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptError, match="not UTF-8"):
        read_labels_file(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(PromptError, match="no labels"):
        read_labels_file(tmp_path / "empty.txt")
    with pytest.raises(PromptError, match="no such file"):
        read_labels_file(tmp_path / "absent.txt")
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(PromptError, match="duplicate class 'cat'"):
        resolve_prompt_set(labels_file=tmp_path / "dup.txt")


def test_templates_file_list_or_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- 'a {label}'\n- 'the {label}, {{literal}}'\n", encoding="utf-8")
    (tmp_path / "map.yaml").write_text("templates: ['a photo of {label}']\n", encoding="utf-8")
    assert load_templates_file(tmp_path / "list.yaml") == ("a {label}", "the {label}, {{literal}}")
    assert load_templates_file(tmp_path / "map.yaml") == ("a photo of {label}",)
    ps = resolve_prompt_set(labels=["x"], templates_file=tmp_path / "list.yaml")
    assert ps.all_prompts() == ["a x", "the x, {{literal}}"]  # only {label} is substituted


def test_resolve_prompt_set_combinations(tmp_path):
    default = load_pack("default")
    ps = resolve_prompt_set(labels=["cat", "dog"])
    assert ps.classes == ("cat", "dog") and ps.templates == default.templates
    cifar = resolve_prompt_set(dataset="cifar10")
    assert cifar.classes == load_pack("cifar10").classes and len(cifar.templates) == 18
    # Own labels with a pack's templates.
    mixed = resolve_prompt_set(dataset="cifar10", labels=["zebra"])
    assert mixed.classes == ("zebra",) and mixed.templates == cifar.templates
    with pytest.raises(PromptError, match="no classes"):
        resolve_prompt_set()
    with pytest.raises(PromptError, match="has no classes"):
        resolve_prompt_set(dataset="default")
    (tmp_path / "l.txt").write_text("cat\n", encoding="utf-8")
    both = resolve_prompt_set(labels_file=tmp_path / "l.txt", labels=["dog"])
    assert both.classes == ("cat", "dog")
