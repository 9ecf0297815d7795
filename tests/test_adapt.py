"""`zeroshot adapt` and `eval --shots`: few-shot adaptation, written as a classify-ready file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import zeroshot
from zeroshot.model.models import BUNDLED_NAME
from zeroshot.uses.adapt import adapt, fit

from .conftest import invoke

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
# fashion-mnist pack class -> example file prefix; two classes get no examples
FOLDERS = {"t-shirt/top": "t-shirt-top", "trouser": "trouser", "pullover": "pullover", "dress": "dress",
           "coat": "coat", "sandal": "sandal", "shirt": "shirt", "sneaker": "sneaker"}  # fmt: skip
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "--workers", "0"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    folder = root / "examples"
    for cls, prefix in FOLDERS.items():
        sub = folder / cls.replace("/", "_")  # eval's folder matching: 't-shirt/top' -> 't-shirt_top'
        sub.mkdir(parents=True)
        for p in sorted(EXAMPLES.glob(f"{prefix}-*.png")):
            shutil.copy(p, sub / p.name)
    (folder / "coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = root / "adapted.safetensors"
    result = invoke("adapt", folder, *MODEL, "-o", out, "--seed", "3")
    return folder, out, result


def test_bad_examples_are_listed_and_the_rest_is_used(adapted):
    _, out, result = adapted
    assert result.exit_code == 1 and out.is_file()
    record = json.loads(result.stdout)
    assert [Path(e["path"]).name for e in record["errors"]] == ["broken.png"]
    assert record["examples"] == 32 and record["shots"] == {c: 4 for c in FOLDERS}
    assert "could not be read and were left out" in result.stderr


def test_file_round_trips_through_classify_and_keeps_unseen_classes(adapted):
    _, out, _ = adapted
    with safe_open(str(out), "np") as f:
        weights, meta = f.get_tensor("weights"), f.metadata()
    assert json.loads(meta["shots"]) == {c: 4 for c in FOLDERS} and "CLAP" in meta["method"]
    assert len(json.loads(meta["examples"])) == 32 and all(len(h) == 64 for _, h in json.loads(meta["examples"]))
    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    zero = clf.text_classifier(zeroshot.resolve_prompt_set(dataset="fashion-mnist"))
    for i, cls in enumerate(zero.classes):  # bag and ankle boot had no examples: bit for bit zero-shot
        assert np.array_equal(weights[i], zero.weights[i]) == (cls not in FOLDERS), cls
    images = sorted(str(p) for p in EXAMPLES.glob("*.png"))
    result = invoke("classify", *images, "--classifier", out, "-m", BUNDLED_NAME, "--workers", "0", "-k", "10")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    library = list(clf.classify(images, clf.text_classifier(classifier_file=out), workers=0, top_k=10))
    assert records == json.loads(json.dumps(library))
    assert records != json.loads(json.dumps(list(clf.classify(images, zero, workers=0, top_k=10))))


def test_adapt_is_deterministic_for_a_seed_and_the_library_agrees(adapted, tmp_path):
    folder, out, _ = adapted
    again = tmp_path / "again.safetensors"
    invoke("adapt", folder, *MODEL, "-o", again, "--seed", "3")
    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    library = clf.adapt(folder, zeroshot.resolve_prompt_set(dataset="fashion-mnist"), seed=3, workers=0)
    with safe_open(str(out), "np") as a, safe_open(str(again), "np") as b:
        assert np.array_equal(a.get_tensor("weights"), b.get_tensor("weights"))
        assert np.array_equal(a.get_tensor("weights"), library.weights)


def test_the_pull_moves_from_zero_shot_to_a_linear_probe():
    """A strong pull keeps the zero-shot weights; cross-validation keeps them when they classify the
    examples, and lets go when the examples lie where the text weights do not point."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    labels = torch.arange(3).repeat_interleave(8)

    def around(centres):
        return torch.nn.functional.normalize(centres[labels] + 0.2 * torch.randn(24, 16, generator=g), dim=-1)

    near = around(w0)  # examples where zero-shot already puts them
    assert torch.allclose(fit(near, labels, w0, 100.0, 1e4), w0, atol=1e-3)
    assert adapt(near, labels, w0, 100.0, ["a", "b", "c"]).lam == 1e4
    elsewhere = around(torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1))
    zero_shot = (elsewhere @ w0.T).argmax(dim=1).eq(labels).float().mean()
    chosen = adapt(elsewhere, labels, w0, 100.0, ["a", "b", "c"])
    assert chosen.lam < 1e4 and (elsewhere @ chosen.weights.T).argmax(dim=1).eq(labels).float().mean() > 0.9
    assert zero_shot < 0.7


def test_eval_shots_reports_the_methods_side_by_side(adapted):
    folder, _, _ = adapted
    shutil.rmtree(folder / "coat", ignore_errors=True)  # only readable examples here
    result = invoke("eval", folder, *MODEL, "--shots", "2", "--seeds", "2")
    assert result.exit_code == 0, result.output
    few = json.loads(result.stdout)["few_shot"]
    assert few["shots"] == 2 and few["seeds"] == 2 and len(few["pull"]) == 2
    for name in ("zero_shot", "linear_probe", "class_means", "adapted"):
        assert len(few[name]["runs"]) == 2 and few[name]["min"] <= few[name]["mean"] <= few[name]["max"]
    # the standard probe: its C per seed, chosen on 2 folds (2 examples per class)
    assert few["probe_folds"] == 2 and len(few["probe_c"]) == 2 and len(few["adapted_probe_c"]) == 2


def test_where_zero_shot_knows_nothing_the_probe_is_free_and_one_example_still_keeps_zero_shot():
    """Examples that zero-shot classifies no better than chance (a domain the text side has never
    seen): the adapted weights are the standard probe's (its C, cross-validated, fitted without the
    bias a cosine classifier cannot hold), whatever the pulls scored. Just over chance is not
    enough (3 standard errors). With one example per class there is no evidence either way, and
    zero-shot is kept."""
    from zeroshot.uses.adapt import zero_shot_knows
    from zeroshot.uses.probe import fit_probe

    g = torch.Generator().manual_seed(1)
    classes = [f"c{i}" for i in range(10)]
    w0 = torch.nn.functional.normalize(torch.randn(10, 32, generator=g), dim=-1)
    centres = torch.nn.functional.normalize(torch.randn(10, 32, generator=g), dim=-1)  # unrelated to w0
    labels = torch.arange(10).repeat_interleave(8)
    feats = torch.nn.functional.normalize(centres[labels] + 0.3 * torch.randn(80, 32, generator=g), dim=-1)
    assert not zero_shot_knows(feats, labels, w0)
    unseen = adapt(feats, labels, w0, 100.0, classes, seed=2)
    probe = fit_probe(feats, labels, seed=2)  # the same folds
    assert unseen.lam == 0.0 and unseen.probe_c == probe.c and unseen.probe_cv == probe.cv_accuracy
    assert torch.equal((feats @ unseen.weights.T).argmax(dim=1), labels)  # it learnt the examples
    assert max(unseen.cv_accuracy.values()) > 0  # the pulls' cross-validation still ran, for the record
    # 20% right where chance is 10%: above chance, but under 3 standard errors (0.1 + 3 * 0.034)
    assert not zero_shot_knows(feats[:80], torch.where(torch.arange(80) % 5 == 0, (feats @ w0.T).argmax(1),
                                                       (feats @ w0.T).argmax(1) + 1) % 10, w0)  # fmt: skip
    known = torch.nn.functional.normalize(w0[labels] + 0.3 * torch.randn(80, 32, generator=g), dim=-1)
    assert zero_shot_knows(known, labels, w0) and adapt(known, labels, w0, 100.0, classes).lam == 1e4
    one = labels[::8]  # one example per class, zero-shot at chance on them: zero-shot is kept
    kept = adapt(feats[::8], one, w0, 100.0, classes)
    assert kept.lam == 1e4  # the strongest pull, as before: zero-shot's answers stay
    assert torch.equal((feats @ kept.weights.T).argmax(dim=1), (feats @ w0.T).argmax(dim=1))


def test_adapt_prompts_folder_names_with_spaces_in_the_cli_and_the_library(fake_model, tmp_path):
    """Sub-folders ``dark_red`` and ``light_blue``: the classes are "dark red" and "light blue"
    (the fake model reads a colour word only when it stands alone, so the prompts matter), each
    folder's examples count for its own class, and the library's ``adapt`` names them alike."""
    from PIL import Image

    folder = tmp_path / "examples"
    for sub, colour in (("dark_red", (200, 0, 0)), ("light_blue", (0, 0, 230))):
        (folder / sub).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), tuple(max(0, c - 20 * i) for c in colour)).save(folder / sub / f"{i}.png")
    out = tmp_path / "adapted.safetensors"
    result = invoke("adapt", folder, *fake_model, "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shots"] == {"dark red": 3, "light blue": 3}
    clf = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai", device="cpu", runtime="torch")
    adapted = clf.adapt(folder, workers=0)
    assert adapted.classes == ("dark red", "light blue")
    zero = clf.text_classifier(zeroshot.resolve_prompt_set(labels=["dark red", "light blue"]))
    assert [int(np.argmax(row)) for row in zero.weights] == [0, 2]  # "red" and "blue" were read from the prompts


def test_adapt_writes_the_probe_on_an_unseen_domain_and_classify_scores_it(tmp_path):
    """Stripes, rings and checks under made-up names: zero-shot knows nothing of them, so the
    console script writes the standard probe (as unit rows: the classifier file as before), says
    its C, and classify --classifier reads the file and gets the examples right."""
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    patterns = {"zork": lambda p: np.sin(yy / p), "blick": lambda p: np.sin(np.hypot(yy - 16, xx - 16) / p),
                "quux": lambda p: np.sign(np.sin(yy / p) * np.sin(xx / p))}  # fmt: skip
    folder = tmp_path / "examples"
    for name, pattern in patterns.items():
        (folder / name).mkdir(parents=True)
        for i in range(6):
            grey = 127 + 120 * pattern(rng.uniform(1.0, 2.5)) + rng.normal(0, 10, (32, 32))
            Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").save(folder / name / f"{i}.png")
    out = tmp_path / "probe.safetensors"
    model = ["-m", BUNDLED_NAME, "--workers", "0"]
    done = subprocess.run([sys.executable, "-m", "zeroshot", "adapt", str(folder), "-o", str(out), *model],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (
        record["pull"] == 0.0 and isinstance(record["probe_c"], float) and record["shots"] == dict.fromkeys(patterns, 6)
    )
    with safe_open(str(out), "np") as f:
        assert json.loads(f.metadata()["probe_c"]) == record["probe_c"] and "logistic" in f.metadata()["method"]
    images = sorted(str(p) for p in folder.rglob("*.png"))
    done = subprocess.run([sys.executable, "-m", "zeroshot", "classify", *images, "--classifier", str(out), *model],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    labels = [json.loads(line)["label"] for line in done.stdout.splitlines()]
    assert sum(label == Path(p).parent.name for label, p in zip(labels, images, strict=True)) >= 16
