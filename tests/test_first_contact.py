"""First contact: a fast first answer with the same numbers, relabelling from the caches without a
model, honest progress at a terminal (and none when piped), and the run manifest."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ARCH, invoke, make_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"

# Runs the console entry point, then says on stderr which heavy modules the run imported.
IMPORTS_AFTER_MAIN = (
    "import sys\n"
    "sys.argv = ['zeroshot', *sys.argv[1:]]\n"
    "from zeroshot.cli import main\n"
    "code = 0\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "loaded = [m for m in ('torch', 'open_clip', 'torch._dynamo', 'timm', 'transformers') if m in sys.modules]\n"
    "print('IMPORTED', code, *loaded, file=sys.stderr)\n"
)


def run_main(*args: str, env: dict[str, str] | None = None, code: int = 0) -> tuple[list[dict], list[str]]:
    """(records, modules imported) of one CLI run in a fresh interpreter, which must exit with ``code``."""
    done = subprocess.run([sys.executable, "-c", IMPORTS_AFTER_MAIN, *args], capture_output=True, text=True,
                          timeout=300, env=env or dict(os.environ))  # fmt: skip
    line = [x for x in done.stderr.splitlines() if x.startswith("IMPORTED")]
    assert line and line[-1].split()[1] == str(code), done.stderr
    return [json.loads(x) for x in done.stdout.splitlines()], line[-1].split()[2:]


def test_fast_build_equals_plain_open_clip_build(checkpoint, image_dir):
    """zeroshot's build (no random init; in the CLI, open_clip imported without transformers, timm
    and torch._dynamo) is open_clip's plain build to 0.0, and so are the records made with it."""
    import open_clip
    import torch
    from PIL import Image

    from zeroshot.image.images import iter_inputs
    from zeroshot.model.models import LoadedModel, load_model, resolve_spec
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.text.prompts import resolve_prompt_set
    from zeroshot.uses.records import classify_inputs

    spec = resolve_spec(ARCH, str(checkpoint))
    ours = load_model(spec)
    plain, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint))
    plain.eval()
    mine, theirs = ours.model.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    paths = sorted(str(p) for p in image_dir.iterdir())
    with torch.inference_mode():
        batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        assert torch.equal(ours.model.encode_image(batch), plain.encode_image(batch))  # to 0.0
    # Records from the plain build, through zeroshot's own pipeline, in this process ...
    reference = LoadedModel(spec, plain, preprocess, open_clip.get_tokenizer(ARCH), "cpu")
    prompts = resolve_prompt_set(labels=["cat", "dog"])
    text = get_text_classifier(spec, prompts, lambda: reference, use_cache=False)
    expected = list(classify_inputs(reference, text, iter_inputs(paths), top_k=2, batch_size=2))
    # ... equal to the last digit the CLI's, made in its own process with the fast build.
    records, imported = run_main(
        "classify", *paths, "-m", ARCH, "-p", str(checkpoint), "--label", "cat", "--label", "dog", "-k", "2",
        "-b", "2", "--no-cache", "-q",
    )  # fmt: skip
    assert records == json.loads(json.dumps(expected))
    assert "torch._dynamo" not in imported and "timm" not in imported and "transformers" not in imported


def test_open_clip_import_falls_back_when_torchvision_wants_more_of_dynamo(monkeypatch):
    """The stand-in for torch._dynamo offers only what torchvision takes today; anything else
    asked of it makes the import run again with the real module, in the same process."""
    code = (
        "import sys, importlib.abc, importlib.machinery\n"
        "class Needy(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torchvision':\n"
        "            sys.meta_path.remove(self)\n"
        "            from torch._dynamo.utils import counters  # not offered by the stand-in\n"
        "        return None\n"
        "from zeroshot.model.fastload import lean_open_clip\n"
        "lean_open_clip()\n"
        "sys.meta_path.insert(1, Needy())\n"
        "import open_clip\n"
        "print(hasattr(open_clip, 'create_model'), 'torch._dynamo' in sys.modules, open_clip.hf_model.transformers)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "None"]


@pytest.fixture(scope="module")
def relabel_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("relabel")
    for i in range(12):
        make_image(folder / f"img{i:02d}.png", 100 + i, (64, 48))
    return folder


def test_relabelling_cached_images_never_builds_the_image_tower(checkpoint, relabel_folder, tmp_path):
    gone = str(tmp_path / "gone.png")  # an input that fails before any decoding: no model needed to say so
    model = ["-m", ARCH, "-p", str(checkpoint), "-q"]
    labels = ["--label", "red", "--label", "green", "--label", "blue"]
    # In this process (its cache is tmp_path/cache): the first pass stores the embeddings, then
    # build-prompts caches the new labels' classifier.
    assert invoke("classify", relabel_folder, gone, "--label", "cat", "--label", "dog", "--cache-images",
                  *model).exit_code == 1  # fmt: skip
    assert invoke("build-prompts", *labels, *model).exit_code == 0
    out = tmp_path / "relabel.jsonl"
    inputs = [str(relabel_folder), gone, *labels, *model]
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(tmp_path / "cache"))
    _, imported = run_main("classify", *inputs, "--cache-images", "-o", str(out), env=env, code=1)
    # No torch, no open_clip in that process: the image tower cannot have been built.
    assert imported == []
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["image_tower"].startswith("not needed") and manifest["records"] == 13 and manifest["errors"] == 1
    # The same records, to the last digit, as a run that encodes every image with the model.
    assert invoke("classify", *inputs, "-o", tmp_path / "model.jsonl").exit_code == 1
    assert out.read_bytes() == (tmp_path / "model.jsonl").read_bytes()
    # A new image among cached ones: the model loads for it; the cached ones' records stay the same.
    more = tmp_path / "more"
    shutil.copytree(relabel_folder, more)
    make_image(more / "new.png", 999, (80, 60))
    mixed = tmp_path / "mixed.jsonl"
    assert invoke("classify", more, gone, *labels, "--cache-images", *model, "-o", mixed).exit_code == 1
    assert json.loads(Path(f"{mixed}.manifest.json").read_text())["image_tower"] == "ran"
    by_name = {Path(r["path"]).name: r for r in map(json.loads, mixed.read_text().splitlines())}
    assert set(by_name) == {f"img{i:02d}.png" for i in range(12)} | {"new.png", "gone.png"}
    for r in map(json.loads, out.read_text().splitlines()):
        assert {**by_name[Path(r["path"]).name], "path": r["path"]} == r
    assert by_name["new.png"]["label"] in ("red", "green", "blue")


def _in_a_terminal(args: list[str], env: dict[str, str]) -> tuple[str, bytes, int]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe): (what the terminal got, stdout, exit)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "zeroshot", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    seen = bytearray()
    stdout = bytearray()
    assert proc.stdout is not None
    streams = {master: seen, proc.stdout.fileno(): stdout}
    while streams:
        ready, _, _ = select.select(list(streams), [], [], 120)
        assert ready, "the run stopped answering"
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal's other side closed: the child has exited
                chunk = b""
            if chunk:
                streams[fd] += chunk
            else:
                del streams[fd]
    os.close(master)
    return seen.decode("utf-8", "replace"), bytes(stdout), proc.wait(timeout=60)


def test_progress_at_a_terminal_shows_total_and_rate_and_none_when_piped(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):  # 240 images: long enough for the bar to draw with its rate
        for p in EXAMPLES.glob("*.png"):
            shutil.copy(p, folder / f"{i}-{p.name}")
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="40", ZEROSHOT_CACHE_DIR=str(tmp_path / "c"))
    args = ["classify", str(folder), "-m", "fashion-mini", "--dataset", "fashion-mnist", "-b", "4", "--workers", "0"]
    screen, stdout, code = _in_a_terminal(args, env)
    assert code == 0
    assert len(stdout.splitlines()) == 240  # records on stdout only
    assert "classifying" in screen
    assert re.search(r"\b\d+/240\b", screen), screen[-2000:]  # a total, once the walk has counted them
    assert re.search(r"\d+\.\d images/s", screen), screen[-2000:]  # and a rate
    # build-prompts shows the prompts encoded
    screen, _, code = _in_a_terminal(["build-prompts", "-m", "fashion-mini", "--dataset", "fashion-mnist", "--force"],
                                     env)  # fmt: skip
    assert code == 0 and "encoding prompts" in screen and re.search(r"\b\d+/\d+\b", screen)
    # Piped: no progress at all, and records on stdout.
    piped = subprocess.run([sys.executable, "-m", "zeroshot", *args], capture_output=True, text=True, env=env,
                           timeout=300)  # fmt: skip
    assert piped.returncode == 0 and piped.stderr == "" and len(piped.stdout.splitlines()) == 240


def test_manifest_is_written_for_output_and_reads_back(checkpoint, image_dir, tmp_path):
    from importlib.metadata import version

    from zeroshot.model.weightfiles import file_sha256
    from zeroshot.text.prompts import resolve_prompt_set
    from zeroshot.uses.manifest import prompts_hash, read_manifest

    out = tmp_path / "records.jsonl"
    missing = tmp_path / "gone.png"
    result = invoke("classify", image_dir, missing, "-m", ARCH, "-p", checkpoint, "--label", "cat", "--label", "dog",
                    "-o", out)  # fmt: skip
    assert result.exit_code == 1  # the missing file
    m = read_manifest(f"{out}.manifest.json")
    assert m["records"] == 6 and m["errors"] == 1 and m["output"] == str(out)
    assert isinstance(m["command"], list) and all(isinstance(a, str) for a in m["command"])
    assert m["model"] == ARCH and m["weights"] == {"kind": "file", "sha256": file_sha256(checkpoint)}
    assert m["versions"]["torch"] == version("torch") and m["versions"]["open_clip_torch"] == version("open_clip_torch")
    assert m["versions"]["open_clip_torch"] and m["versions"]["zeroshot"]
    assert m["prompts"]["classes"] == ["cat", "dog"]
    assert m["prompts"]["sha256"] == prompts_hash(resolve_prompt_set(labels=["cat", "dog"]))
    assert m["precision"] == "fp32" and m["device"] == "cpu" and "Normalize" in m["preprocess"]
    assert m["started"] <= m["finished"] and m["seconds"]["total"] >= m["seconds"]["ready"]
    assert len(out.read_text().splitlines()) == 6
    # --manifest PATH for a run on stdout; no manifest without either
    path = tmp_path / "elsewhere.json"
    result = invoke("classify", image_dir, "-m", ARCH, "-p", checkpoint, "--label", "cat", "--label", "dog",
                    "--manifest", path)  # fmt: skip
    assert result.exit_code == 0 and read_manifest(path)["records"] == 5 and read_manifest(path)["output"] is None
    result = invoke("classify", image_dir, "-m", ARCH, "-p", checkpoint, "--label", "x", "--label", "y",
                    "-o", out, "--manifest", out)  # fmt: skip
    assert result.exit_code == 2 and "--manifest" in result.output


def test_eval_records_carry_the_identity_fields(checkpoint, tmp_path):
    folder = tmp_path / "labelled"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(2):
            make_image(folder / cls / f"{i}.png", 40 + 10 * len(cls) + i)
    result = invoke("eval", folder, "-m", ARCH, "-p", checkpoint)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["weights"]["kind"] == "file" and record["precision"] == "fp32" and record["device"] == "cpu"
    assert record["prompts"]["classes"] == ["cat", "dog"] and len(record["prompts"]["sha256"]) == 64
    assert record["versions"]["torch"] and "Normalize" in record["preprocess"]
