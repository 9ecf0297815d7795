"""The library is a face of its own: the CLI's options with the same names and the same checks, its
own wording in errors, labels taken directly, and nothing changed for the rest of the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zeroshot
from zeroshot.model.models import BUNDLED_DIR, BUNDLED_NAME, BUNDLED_WEIGHTS

from .conftest import make_image, run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "fashion"
IMAGES = sorted(str(p) for p in EXAMPLES.glob("*.png"))

# Values the command line refuses, each with the bound that refuses it.
REFUSED = [
    ("every", -1.0, "must be at least 0.001"),
    ("every", 0.0, "must be at least 0.001"),
    ("every", float("nan"), "must be a finite number"),
    ("max_frames", 0, "must be at least 1"),
    ("top_k", 0, "must be at least 1"),
    ("batch_size", 0, "must be at least 1"),
    ("workers", -1, "must be at least 0"),
    ("max_bytes", -1, "must be at least 0"),
    ("max_video_bytes", -5, "must be at least 0"),
    ("max_pixels", -1, "must be at least 0"),
    ("timeout", 0.0, "must be at least 0.1"),
    ("min_score", 1.5, "must be at most 1"),
]


@pytest.fixture(scope="module")
def clf() -> zeroshot.Zeroshot:
    return zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu", runtime="torch")


@pytest.mark.parametrize(("name", "value", "why"), REFUSED, ids=[f"{n}={v}" for n, v, _ in REFUSED])
def test_the_library_refuses_what_the_cli_refuses(clf, name, value, why):
    """At the call, before any input is read (``every=-1`` once looped forever at 100% CPU)."""
    with pytest.raises(zeroshot.UsageError) as raised:
        clf.classify(
            IMAGES[:1], clf.text_classifier(zeroshot.resolve_prompt_set(labels=["bag", "sandal"])), **{name: value}
        )
    shown = "nan" if value != value else f"{value:g}"
    assert str(raised.value) == f"{name} {why}, not {shown}"
    assert "--" not in str(raised.value)


def test_the_cli_refuses_the_same_values_with_its_flags():
    """The same definition, worded for the command line; one console-script run per value."""
    for name, value, why in REFUSED:
        flag = "--" + name.replace("_", "-")
        done = run_cli("classify", IMAGES[0], "-m", BUNDLED_NAME, "--label", "bag", "--label", "sandal", flag,
                       str(value), timeout=60)  # fmt: skip
        assert done.returncode == 2, (name, value, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith(f"zeroshot: error: {flag} {why}"), done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_messages_name_options_as_each_face_spells_them():
    from zeroshot.base.options import face, named

    assert named("max_video_bytes", 5) == "max_video_bytes=5"
    with face("cli"):
        assert named("max_video_bytes", 5) == "--max-video-bytes 5" and named("top_k") == "--top-k"
    with face("server"):
        assert named("every", 0.5) == '"every": 0.5'
    assert named("every") == "every"  # the library's again once a face's command is over


def test_video_options_are_the_clis(clf, tmp_path):
    """``max_bytes`` caps videos as ``--max-bytes`` does, ``max_video_bytes`` caps them alone, and
    ``animated_as_video`` samples an animated GIF's frames."""
    from .videos import make_video

    clip = tmp_path / "clip.mp4"
    make_video(clip, [(EXAMPLES / "bag-0018.png", 1.0), (EXAMPLES / "sandal-0008.png", 1.0)], fps=10)
    size = clip.stat().st_size
    labels = ["bag", "sandal"]
    frames = list(clf.classify(clip, labels, workers=0, every=1.0))
    assert [(r["time"], r["label"]) for r in frames] == [(0.0, "bag"), (1.0, "sandal")]

    capped = list(clf.classify(clip, labels, workers=0, max_bytes=size - 1))
    assert capped == [
        {"path": str(clip), "error": f"too large: {size:,} bytes, over the max_bytes limit of {size - 1:,}"}
    ]
    alone = list(clf.classify(clip, labels, workers=0, max_video_bytes=size - 1, max_bytes=10**9))
    assert alone == [
        {"path": str(clip), "error": f"too large: {size:,} bytes, over the max_video_bytes limit of {size - 1:,}"}
    ]
    assert len(list(clf.classify(clip, labels, workers=0, max_video_bytes=size))) == 2

    from PIL import Image

    gif = tmp_path / "flip.gif"
    pictures = [Image.open(EXAMPLES / name).convert("RGB") for name in ("bag-0018.png", "sandal-0008.png")]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=1000, loop=0)
    assert len(list(clf.classify(gif, labels, workers=0))) == 1
    animated = list(clf.classify(gif, labels, workers=0, animated_as_video=True))
    assert [(r["time"], r["frame"], r["label"]) for r in animated] == [(0.0, 0, "bag"), (1.0, 1, "sandal")]


def test_labels_and_pack_names_go_in_directly(clf):
    images = IMAGES[:6]
    labels = ["bag", "sandal", "trouser"]
    made = clf.text_classifier(zeroshot.resolve_prompt_set(labels=labels))
    assert list(clf.classify(images, labels, workers=0)) == list(clf.classify(images, made, workers=0))
    assert list(clf.classify(images, tuple(labels), workers=0)) == list(clf.classify(images, made, workers=0))
    pack = clf.text_classifier(zeroshot.resolve_prompt_set(dataset="fashion-mnist"))
    by_name = list(clf.classify(images, "fashion-mnist", workers=0))
    assert by_name == list(clf.classify(images, pack, workers=0))
    assert by_name == list(clf.classify(images, zeroshot.load_pack("fashion-mnist"), workers=0))
    with pytest.raises(zeroshot.UsageError, match="unknown dataset 'bag'"):
        clf.classify(images, "bag")
    with pytest.raises(TypeError, match="each label must be a string, not int: 3"):
        clf.classify(images, ["bag", 3])
    with pytest.raises(TypeError, match="text must be labels"):
        clf.classify(images, None)


def test_library_errors_are_worded_for_the_library(clf):
    with pytest.raises(zeroshot.PromptError) as raised:
        zeroshot.resolve_prompt_set()
    assert str(raised.value) == (
        "no classes: give labels (a list of names), labels_file (a file of them) or dataset (a prompt pack's name)"
    )
    with pytest.raises(zeroshot.UsageError) as raised:
        zeroshot.Zeroshot(model=BUNDLED_NAME, device="tpu")
    assert str(raised.value) == "device='tpu': expected auto, cpu, cuda or cuda:N"
    with pytest.raises(zeroshot.UsageError) as raised:
        clf.classify(IMAGES[:1], ["bag", "sandal"], threshold=0.3)
    assert str(raised.value) == "threshold applies only with multi_label (or calibration)"
    with pytest.raises(zeroshot.UsageError, match="^unknown decoder=.gpu. \\(choose from auto, pillow, batched\\)$"):
        clf.classify(IMAGES[:1], ["bag", "sandal"], decoder="gpu")
    # The command line words the same errors with its flags.
    done = run_cli("classify", IMAGES[0], "-m", BUNDLED_NAME, "--device", "tpu", "--label", "a", "--label", "b")
    assert done.returncode == 2 and done.stderr == "zeroshot: error: --device tpu: expected auto, cpu, cuda or cuda:N\n"
    done = run_cli("classify", IMAGES[0], "-m", BUNDLED_NAME)
    assert done.stderr == (
        "zeroshot: error: no classes: give --labels FILE, --label TEXT (repeatable) or --dataset NAME\n"
    )


LOAD_SCRIPT = """
import json, logging, os, sys, threading, warnings
import open_clip, torch, huggingface_hub.constants as hf
import zeroshot

seen = {}
original = open_clip.create_model_from_pretrained
init_before = torch.nn.init.constant_


def watched(*args, **kwargs):
    # While zeroshot builds a model: another thread of the user's draws weights as usual, and logs.
    def user_thread():
        t = torch.empty(4)
        torch.nn.init.constant_(t, 7.0)
        seen["other_thread_init"] = t.tolist()
        logging.getLogger("user").warning("from the user's thread")
    th = threading.Thread(target=user_thread)
    th.start()
    th.join()
    seen["logging_disabled"] = logging.root.manager.disable
    return original(*args, **kwargs)


open_clip.create_model_from_pretrained = watched
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("user").addHandler(Keep())

zeroshot.Zeroshot(model="fashion-mini", runtime="torch")
seen["user_log_kept"] = list(records)
seen["init_restored"] = torch.nn.init.constant_ is init_before
try:
    zeroshot.Zeroshot(model="hf-hub:nobody/nothing-here", runtime="torch")
except zeroshot.ZeroshotError as e:
    seen["hub_error"] = str(e)
seen["HF_HUB_OFFLINE env"] = os.environ.get("HF_HUB_OFFLINE")
seen["HF_HUB_OFFLINE constant"] = bool(hf.HF_HUB_OFFLINE)
print(json.dumps(seen))
"""


def test_loading_changes_nothing_for_the_rest_of_the_process(tmp_path):
    """A failed Hub probe leaves huggingface_hub online for later calls; a load leaves logging on and
    torch's initialisers alone in every other thread, and as they were afterwards."""
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["other_thread_init"] == [7.0] * 4
    assert seen["logging_disabled"] == 0
    assert seen["user_log_kept"] == ["from the user's thread"]
    assert seen["init_restored"] is True
    assert "no network connection (http://127.0.0.1:9 cannot be reached)" in seen["hub_error"]
    assert seen["HF_HUB_OFFLINE env"] is None and seen["HF_HUB_OFFLINE constant"] is False


def test_only_the_loading_thread_skips_random_init():
    import threading

    import torch

    from zeroshot.model.fastload import skip_random_init

    original = torch.nn.init.normal_
    inside, other = threading.Event(), {}

    def elsewhere():
        inside.wait()
        t = torch.zeros(1000)
        torch.nn.init.normal_(t)
        other["drawn"] = bool(t.abs().sum() > 0)

    th = threading.Thread(target=elsewhere)
    th.start()
    with skip_random_init():
        mine = torch.zeros(1000)
        torch.nn.init.normal_(mine)
        inside.set()
        th.join()
    assert not mine.any()  # skipped here: the checkpoint overwrites it
    assert other["drawn"] is True
    assert torch.nn.init.normal_ is original


def test_packs_are_found_from_a_source_checkout(tmp_path):
    """``python -c "import zeroshot"`` at the top of a clone, nothing installed: the checkout's prompts/."""
    import sysconfig

    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {sysconfig.get_paths()["purelib"]!r}]
        import zeroshot
        assert zeroshot.__file__.startswith({str(REPO)!r}), zeroshot.__file__
        print(zeroshot.load_pack("cifar10").classes[0])
        print(zeroshot.resolve_prompt_set(labels=["a", "b"]).templates[0])
        try:
            zeroshot.load_pack("cifar1O")
        except zeroshot.UsageError as e:
            print(e)
    """)
    # -S: no site-packages .pth files, so not the editable install's finder either
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    first, template, error = done.stdout.splitlines()
    assert first == "airplane" and "{label}" in template
    assert error.startswith("unknown dataset 'cifar1O' (did you mean 'cifar10'?); known ones are: ")
    assert "fashion-mnist" in error


def _publish_fashion_mini(hub, repo: str) -> None:
    """fashion-mini as an ``hf-hub:`` repository (the smallest model there is to download)."""
    config = {"model_cfg": json.loads((BUNDLED_DIR / f"{BUNDLED_NAME}.json").read_text()), "preprocess_cfg": {}}
    hub.put(repo, "open_clip_config.json", json.dumps(config).encode())
    hub.put(repo, "open_clip_model.safetensors", BUNDLED_WEIGHTS.read_bytes())


def test_an_ipv6_hub_endpoint_is_reached(tmp_path):
    """``HF_ENDPOINT=http://[::1]:PORT`` is a Hub like any other (it was taken for no network)."""
    import socket

    from .standin_hub import StandInHub, hub_env

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    hub = StandInHub(tmp_path / "repos", host="::1")
    try:
        _publish_fashion_mini(hub, "zeroshot-tests/fashion-mini")
        image = make_image(tmp_path / "x.png", seed=1)
        done = subprocess.run(
            [sys.executable, "-m", "zeroshot", "classify", str(image), "-m", "hf-hub:zeroshot-tests/fashion-mini",
             "--label", "bag", "--label", "sandal", "--runtime", "torch", "-q"],
            capture_output=True, text=True, env=hub_env(hub, tmp_path / "hf"), timeout=120,
        )  # fmt: skip
    finally:
        hub.close()
    assert hub.url.startswith("http://[::1]:")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["label"] in ("bag", "sandal") and abs(sum(t["score"] for t in record["top_k"]) - 1) < 1e-9
    assert any(path.endswith("open_clip_model.safetensors") for _, path in hub.requests)
