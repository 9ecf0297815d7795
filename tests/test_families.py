"""Every open_clip model family, loaded as users load it: by tag, through a stand-in Hugging Face Hub.

A local HTTP server answers the Hub's file API at the real repository ids (``tests/standin_hub.py``)
with random weights and tokenizers made here, so open_clip and transformers run their real
download code with ``HF_ENDPOINT`` pointed at it. Each family's smallest tagged model is compared
with open_clip's own reference pipeline; a checkpoint file of the same weights must give the same
records as the tag; a second run works offline from the cache; a download cut off half-way costs
one line and the next run succeeds.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from safetensors.torch import save_file

from zeroshot.model.catalog import FAMILIES

from .conftest import make_image
from .standin_hub import StandInHub, hub_env, publish_tag, publish_tokenizer

REPO = Path(__file__).resolve().parent.parent
LABELS = ["cat", "dog", "car"]
AS_FILES = {"MobileCLIP-S1", "ViT-B-16-SigLIP", "PE-Core-T-16-384"}  # checkpoint file == tag


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in Hub with every family's weights and tokenizer; a few also as checkpoint files."""
    root = tmp_path_factory.mktemp("hub")
    server = StandInHub(root / "repos")
    server.files = {}  # type: ignore[attr-defined]
    for _, name, tag in FAMILIES:
        _, _, state = publish_tag(server, name, tag)
        publish_tokenizer(server, name)
        if name in AS_FILES:
            path = root / f"{name}-random.safetensors"
            save_file(state, str(path))
            server.files[name] = path  # type: ignore[attr-defined]
    yield server
    server.close()
    shutil.rmtree(root, ignore_errors=True)  # gigabytes of random weights: not kept for pytest's history


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A wide and a tall image: squash and shortest-side resizing give visibly different pixels."""
    folder = tmp_path_factory.mktemp("pictures")
    return [str(make_image(folder / "wide.png", 3, (200, 90))), str(make_image(folder / "tall.png", 8, (80, 190)))]


def family_check(hub, hf_home: Path, pictures, models, *extra: str, env_extra=None) -> dict:
    env = hub_env(hub, hf_home)
    env.update(env_extra or {})
    args = [sys.executable, "-m", "tests.family_check", "--images", *pictures, *extra]
    args += [a for label in LABELS for a in ("--label", label)] + ["--", *models]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def worst_difference(entry: dict) -> float:
    worst = 0.0
    for rec, ref in zip(entry["records"], entry["reference"], strict=True):
        got = {t["label"]: t["score"] for t in rec["top_k"]}
        worst = max(worst, *(abs(got[label] - ref[i]) for i, label in enumerate(LABELS)))
    return worst


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-home")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def checked(hub, pictures, hf_home):
    """One process: every family by tag (with open_clip's reference), then the checkpoint files."""
    models = [f"{name}={tag}" for _, name, tag in FAMILIES]
    models += [f"{name}={hub.files[name]}" for _, name, _ in FAMILIES if name in AS_FILES]
    models += ["ViT-B-16-SigLIP=webli+ml"]
    return family_check(hub, hf_home, pictures, models, "--inspect", "ViT-B-16-SigLIP=webli")


def test_every_family_equals_open_clips_reference_through_the_hub(checked, pictures):
    failures, rows = [], []
    for family, name, tag in FAMILIES:
        entry = checked[f"{name}={tag}"]
        if entry["exit"] != 0:
            failures.append(f"{family} ({name}): exit {entry['exit']}: {entry['stderr'][-300:]}")
            continue
        worst = worst_difference(entry)
        rows.append(f"{family:28} {name:22} max |dp| {worst:.1e}  {entry['seconds']:5.1f} s")
        if worst > 1e-5 or len(entry["records"]) != len(pictures):
            failures.append(f"{family} ({name}): max |dp| {worst:.2e}")
        # The comparison must be able to fail: the probabilities differ by far more than the tolerance
        # (random towers give near-uniform ones; scale x cosine differences still move them visibly).
        spread = max(max(ref) - min(ref) for ref in entry["reference"])
        if spread < 20 * 1e-5:
            failures.append(f"{family} ({name}): reference probabilities too flat ({spread:.1e}) to tell")
    print("\n" + "\n".join(rows))
    assert not failures, "\n".join(failures)


def test_checkpoint_file_gets_the_preprocessing_its_tag_has(checked, hub):
    for _, name, tag in FAMILIES:
        if name not in AS_FILES:
            continue
        by_tag, by_file = checked[f"{name}={tag}"], checked[f"{name}={hub.files[name]}"]
        assert by_tag["exit"] == 0 and by_file["exit"] == 0, by_file["stderr"]
        for a, b in zip(by_tag["records"], by_file["records"], strict=True):
            assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
            assert max(abs(s["score"] - t["score"]) for s, t in zip(a["top_k"], b["top_k"], strict=True)) < 1e-6
        assert "from a checkpoint file: the preprocessing all its pretrained tags use" in by_file["stderr"]


def test_siglip_runs_its_own_tokenizer_and_its_logit_bias(checked):
    """SigLIP text: open_clip's HF tokenizer (canonicalized, padded to the full context), no trimming;
    --multi-label scores are the model's own sigmoid(scale * cos + logit_bias)."""
    entry = checked["ViT-B-16-SigLIP=webli+ml"]
    assert entry["exit"] == 0, entry["stderr"]
    assert worst_difference(entry) < 1e-5
    assert all(set(rec["labels"]) == set(LABELS) for rec in entry["records"])  # threshold 0: every label
    info = checked["inspect:ViT-B-16-SigLIP=webli"]
    assert info["class"] == "HFTokenizer" and "canonicalize" in info["clean"]
    assert info["length"] == 64 and info["pads"] > 40  # max-length padding to SigLIP's context
    assert (info["trim"], info["prefix"], info["canonical"]) == (False, False, True)


def errors_of(stderr: str) -> list[str]:
    """The error lines of a run's stderr, which holds nothing else but download lines."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert all(line.startswith(("zeroshot: error: ", "zeroshot: downloading ")) for line in lines), stderr
    return [line for line in lines if line.startswith("zeroshot: error: ")]


ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script


def run_classify(hub, hf_home, pictures, model, tag, env_extra=None):
    env = hub_env(hub, hf_home)
    env.update(env_extra or {})
    args = [ZEROSHOT, "classify", *pictures, "-m", model, *(["-p", tag] if tag else []), "-k", "3", "--no-cache"]
    args += [a for label in LABELS for a in ("--label", label)]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_each_cause_of_a_failed_download_is_named(hub, pictures, tmp_path):
    """Not on the Hub (a repository, a file), no network, offline mode set: three causes, three
    messages, each naming its own (the Hub's every URL contains "resolve": no word-guessing)."""
    hub.put("laion/no-weights-here", "README.md", b"a repository without open_clip's files\n")
    cases = [
        ("hf-hub:laion/does-not-exist", {}, f"the Hugging Face Hub ({hub.url}) has no repository laion/does-not-exist"),
        ("hf-hub:laion/no-weights-here", {},
         f"the Hugging Face Hub ({hub.url}) has no file laion/no-weights-here/open_clip_config.json"),
        ("hf-hub:laion/does-not-exist", {"HF_ENDPOINT": "http://127.0.0.1:9"},
         "no network connection (http://127.0.0.1:9 cannot be reached)"),
        ("hf-hub:laion/does-not-exist", {"HF_HUB_OFFLINE": "1"},
         "HF_HUB_OFFLINE is set and its files are not in the local Hugging Face cache"),
    ]  # fmt: skip
    with ThreadPoolExecutor(len(cases)) as pool:  # independent runs, mostly interpreter start: at once
        runs = list(pool.map(lambda c: run_classify(hub, tmp_path / "empty-hf", pictures, c[0], None, c[1]), cases))
    for (model, env, cause), done in zip(cases, runs, strict=True):
        assert done.returncode == 1 and not done.stdout
        (error,) = errors_of(done.stderr)
        assert cause in error, (model, env, error)
        others = [c for _, _, c in cases if c != cause and not c.startswith("the Hugging Face Hub")]
        assert not any(c in error for c in others)


def test_broken_download_then_retry_then_offline_from_the_cache(hub, pictures, tmp_path, hf_home, checked):
    own = tmp_path / "hf"
    # huggingface_hub resumes a cut-off download on its own, as long as bytes keep coming: cut it
    # off half-way, then fail its resumption.
    hub.break_next("timm/PE-Core-T-16-384", "open_clip_model.safetensors", then_fail=True)
    broken = run_classify(hub, own, pictures, "PE-Core-T-16-384", "meta")
    assert broken.returncode == 1 and not broken.stdout
    (error,) = errors_of(broken.stderr)
    assert "the download of timm/PE-Core-T-16-384/open_clip_model.safetensors" in error and "broke off" in error
    hub.failing.clear()
    again = run_classify(hub, own, pictures, "PE-Core-T-16-384", "meta")
    assert again.returncode == 0, again.stderr
    # Once every file is in the cache, a run asks the Hub nothing at all (no revision check either).
    asked = len(hub.requests)
    cached = run_classify(hub, own, pictures, "PE-Core-T-16-384", "meta")
    assert cached.returncode == 0 and cached.stdout == again.stdout and len(hub.requests) == asked, hub.requests[asked:]
    # Offline: the Hub unreachable (a closed port) and huggingface_hub told so; the cache serves.
    dead = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    offline = run_classify(hub, own, pictures, "PE-Core-T-16-384", "meta", env_extra=dead)
    assert offline.returncode == 0, offline.stderr
    assert_same_records(offline.stdout, [json.loads(line) for line in again.stdout.splitlines()])
    # A Hugging Face tokenizer family, warmed by the family check, with the Hub gone and nobody
    # saying so (open_clip #968: tokenizers reaching for the Hub when offline).
    cold = run_classify(
        hub, hf_home, pictures, "ViT-B-16-SigLIP", "webli", env_extra={"HF_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert cold.returncode == 0, cold.stderr
    assert_same_records(cold.stdout, checked["ViT-B-16-SigLIP=webli"]["records"])


def test_siglip2_from_a_downloaded_folder_offline(hub, pictures, tmp_path, checked):
    """The README's offline route: `hf download REPO --local-dir DIR`, then `-m local-dir:DIR` with
    no Hub and no Hugging Face cache at all; the records equal the tag's."""
    folder = tmp_path / "siglip2"
    hf = Path(sys.executable).with_name("hf")
    download = [str(hf), "download", "timm/ViT-B-32-SigLIP2-256", "--local-dir", str(folder)]
    fetched = subprocess.run(download, capture_output=True, text=True, env=hub_env(hub, tmp_path / "hf"), timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    env = hub_env(hub, tmp_path / "empty-hf-home")
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    args = [
        ZEROSHOT,
        "classify",
        *pictures,
        "-m",
        f"local-dir:{folder}",
        "-k",
        "3",
        "--no-cache",
    ]
    args += [a for label in LABELS for a in ("--label", label)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not errors_of(done.stderr)
    assert_same_records(done.stdout, checked["ViT-B-32-SigLIP2-256=webli"]["records"])


def assert_same_records(stdout: str, expected: list[dict]) -> None:
    """The same labels, and scores equal to float noise between two processes (about 1e-8)."""
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["label"] for r in records] == [r["label"] for r in expected]
    assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(records, expected, strict=True))


def test_missing_transformers_names_the_model_and_the_pip_command(hub, pictures, tmp_path):
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "sys.argv = ['zeroshot', 'classify', *sys.argv[1:]]\n"
        "from zeroshot.cli import main\n"
        "main()\n"
    )
    args = [sys.executable, "-c", code, *pictures, "-m", "ViT-B-16-SigLIP", "-p", "webli", "--label", "cat"]
    done = subprocess.run(args, capture_output=True, text=True, env=hub_env(hub, tmp_path / "hf"), cwd=REPO,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1
    (line,) = errors_of(done.stderr)
    assert "ViT-B-16-SigLIP (webli) needs the 'transformers' package" in line
    assert "pip install 'transformers>=4.40' 'sentencepiece>=0.2'" in line


def test_first_download_is_visible_on_stderr_only(hub, pictures, tmp_path):
    """Piped: one line per file (what, how big, where). At a terminal: a bar with bytes, rate and time left."""
    piped = run_classify(hub, tmp_path / "hf-piped", pictures, "PE-Core-T-16-384", "meta")
    assert piped.returncode == 0, piped.stderr
    lines = [line for line in piped.stderr.splitlines() if line.startswith("zeroshot: downloading ")]
    assert len(lines) == 1, piped.stderr
    assert "timm/PE-Core-T-16-384/open_clip_model.safetensors (" in lines[0] and " MB) into " in lines[0]
    assert all(json.loads(line)["path"] for line in piped.stdout.splitlines())  # records only on stdout
    if shutil.which("script") is None:
        pytest.fail("the terminal half of this test needs util-linux's script(1) (apt-get install util-linux)")
    env = hub_env(hub, tmp_path / "hf-tty")
    env.update(COLUMNS="80", LINES="24", TERM="xterm")  # the usual terminal: every figure must fit
    cmd = [ZEROSHOT, "classify", *pictures, "-m", "PE-Core-T-16-384", "-p", "meta",
           "--no-cache", "--label", "cat", "--label", "dog", "-o", str(tmp_path / "out.jsonl")]  # fmt: skip
    tty = subprocess.run(["script", "-qfec", shlex.join(cmd), "/dev/null"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)  # fmt: skip
    assert tty.returncode == 0, tty.stdout[-2000:]
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.stdout).replace("\r", "\n")
    assert "downloading timm/PE-Core-T-16-384/open_clip_model.safetensors" in screen
    # One line of the display holds size done/total, the rate and the time left, within 80 columns.
    figures = re.compile(r"\d+(\.\d+)?/\d+(\.\d+)? (bytes|kB|MB|GB) +\d+(\.\d+)? (bytes|kB|MB|GB)/s +\d+:\d\d:\d\d")
    lines = [line for line in screen.splitlines() if figures.search(line)]
    assert lines and all(len(line) <= 80 for line in lines), screen[-1500:]
    assert (tmp_path / "out.jsonl").read_text().count("\n") == len(pictures)
