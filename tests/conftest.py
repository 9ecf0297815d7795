"""Shared fixtures: an isolated cache, a random-weights checkpoint of a real architecture, images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ARCH = "ViT-S-32"  # a real open_clip config, small enough for CPU tests

# The tests written against torch's numbers (and its exact stderr) run on torch, module- and
# session-wide fixtures included; the CPU engine, the default on the CPU, has tests of its own
# (test_runtimes.py, test_from_outside.py), which ask for it by name or clear this.
os.environ["ZEROSHOT_RUNTIME"] = "torch"
DATA = Path(__file__).parent / "data"


# Fashion-MNIST: Debian's package, or the copy scripts/fetch-data unpacks into the repository.
_LOCAL_FASHION = Path(__file__).resolve().parent.parent / ".data" / "fashion-mnist"
if not os.environ.get("ZEROSHOT_FASHION_MNIST_DIR") and _LOCAL_FASHION.is_dir():
    from zeroshot.image.idx import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        os.environ["ZEROSHOT_FASHION_MNIST_DIR"] = str(_LOCAL_FASHION)


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The Fashion-MNIST IDX folder; a test that needs it fails (never skips) when it is missing."""
    from zeroshot.image.idx import default_dir

    folder = default_dir()
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file() and not (folder / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(
            f"Fashion-MNIST is not in {folder}: run scripts/fetch-data (scripts/test does), or "
            "apt-get install dataset-fashion-mnist, or set ZEROSHOT_FASHION_MNIST_DIR",
            pytrace=False,
        )
    return folder


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache folder, no model defaults from the environment, and the torch
    runtime unless it asks for another."""
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("ZEROSHOT_MODEL", "ZEROSHOT_PRETRAINED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ZEROSHOT_RUNTIME", "torch")  # (see the top of this file)
    yield


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weights ViT-S-32 saved as a plain state_dict, the way users save checkpoints."""
    import open_clip
    import torch

    torch.manual_seed(1234)
    model = open_clip.create_model(ARCH)
    # Random init leaves logit_scale at log(1/0.07); set a trained-looking 100 so the softmax is sharp
    # enough that a wrong preprocessing or template would move the probabilities visibly.
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    path = tmp_path_factory.mktemp("ckpt") / "vit-s-32-random.pt"
    torch.save(model.state_dict(), path)
    return path


def make_image(path: Path, seed: int, size=(96, 72), mode="RGB", fmt=None) -> Path:
    """A deterministic image with structure (gradients + noise), not just flat noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (seed + 3)) % 256, (yy * (seed + 5)) % 256, ((xx + yy) * (seed + 7)) % 256], axis=-1).astype(
        np.int16
    )
    noise = rng.integers(-40, 40, size=base.shape)
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr, "RGB").convert(mode).save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Five good images of different sizes and formats."""
    folder = tmp_path_factory.mktemp("images")
    make_image(folder / "a.png", 1, (96, 72))
    make_image(folder / "b.jpg", 2, (120, 200))
    make_image(folder / "c.png", 3, (224, 224))
    make_image(folder / "d.webp", 4, (300, 150))
    make_image(folder / "e.bmp", 5, (50, 64))
    return folder


def default_sigint() -> None:
    """For a child that a test interrupts: SIGINT as a terminal would deliver it. A test suite
    started in the background (``cmd &``) inherits SIGINT ignored, and Python then never sees it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, stdin: str | None = None, env_extra: dict | None = None, cwd=None, timeout=300):
    """Run the real console entry point in a subprocess (``python -m zeroshot``)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "zeroshot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def invoke(*args, input=None):
    """The CLI run in this process by Typer's runner; arguments may be paths or numbers."""
    from typer.testing import CliRunner

    from zeroshot.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="session")
def vit(checkpoint):
    """The random-weights ViT-S-32 checkpoint (:data:`ARCH`), loaded once for the session."""
    from zeroshot.model.models import load_model, resolve_spec

    return load_model(resolve_spec(ARCH, str(checkpoint)))


@pytest.fixture
def fake_model(monkeypatch):
    """Every model load in this process gets :mod:`tests.fakes`' fake model (nothing downloaded,
    nothing built); returns the model arguments a command needs."""
    from zeroshot.model import models

    from .fakes import fake_loader

    monkeypatch.setattr(models, "load_model", fake_loader)
    return ["-m", "ViT-B-32", "-p", "openai", "--no-cache", "--workers", "0"]


# The side-file tests (test_sidefiles_*.py): the installed console script on the examples.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
SIDE_FASHION = ["-m", "fashion-mini", "--dataset", "fashion-mnist", "-q", "-b", "8", "--workers", "0"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder of its own for a run's files (tmp_path also holds the test's cache)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def as_nobody() -> list[str]:
    """The command prefix that runs as an unprivileged user: none when the suite is not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("as root, this test runs a command as nobody with util-linux's setpriv, which is missing")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_dir():
    """A folder any user may enter (pytest's own tmp folders are private to the user who runs it)."""
    folder = Path(tempfile.mkdtemp(prefix="zeroshot-open-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
