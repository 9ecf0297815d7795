"""A plain (non-editable) install carries the prompt packs and the console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_packs_and_they_load_outside_the_checkout(tmp_path):
    # Build from a copy of the sources, so a stale build/ folder in the checkout cannot leak in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("zeroshot", "prompts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("zeroshot_clip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pack in ("cifar10", "cifar100", "imagenet", "default"):
        assert f"zeroshot/prompt_packs/{pack}.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    assert {"zeroshot/model/tables/openclip_results.csv", "zeroshot/model/tables/architectures.csv"} <= set(names)
    assert {"zeroshot/model/bundled/fashion-mini.json", "zeroshot/model/bundled/fashion-mini.safetensors"} <= set(names)
    # every module of every folder (a folder left out of pyproject's packages would be missing)
    modules = {p.relative_to(src).as_posix() for p in (src / "zeroshot").rglob("*.py")}
    assert modules and modules <= set(names), sorted(modules - set(names))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import zeroshot.text.prompts as p, zeroshot.model.catalog as c, zeroshot.cli; print(p.pack_dir()); "
        "print(len(p.load_pack('imagenet').classes)); print(len(c.counted_params()) > 100, len(c.published()[0]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1:] == ["1000", "True", "121"]
