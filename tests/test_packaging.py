"""A plain (non-editable) install carries the prompt packs, the bundled model and the console
script, and that script classifies from the wheel's own files."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import invoke

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion" / "coat-0017.png"  # an uncertain one: its three scores all count
FASHION = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "3", "-q"]


def fresh_venv(folder: Path) -> tuple[Path, Path]:
    """A virtual environment that sees this one's dependencies but not its editable zeroshot: its
    site-packages names this one's in a .pth file, and a .pth file names folders for sys.path without
    running the .pth files inside them (the editable install's finder is one). Its python and its
    site-packages."""
    venv.create(folder, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "dependencies.pth").write_text("\n".join(ours) + "\n")
    return folder / "bin" / "python", site


@pytest.mark.slow
def test_wheel_installs_a_console_script_that_runs_from_the_wheels_files(tmp_path):
    # Build from a copy of the sources, so a stale build/ folder in the checkout cannot leak in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("zeroshot", "prompts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(src)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("zeroshot_clip-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for pack in ("cifar10", "cifar100", "imagenet", "default"):
        assert f"zeroshot/prompt_packs/{pack}.yaml" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    declared = configparser.ConfigParser()
    declared.read_string(archive.read(entry_points).decode("utf-8"))
    assert dict(declared["console_scripts"]) == {"zeroshot": "zeroshot.cli:run"}
    assert {"zeroshot/model/tables/openclip_results.csv", "zeroshot/model/tables/architectures.csv"} <= set(names)
    assert {"zeroshot/model/bundled/fashion-mini.json", "zeroshot/model/bundled/fashion-mini.safetensors"} <= set(names)
    # every module of every folder (a folder left out of pyproject's packages would be missing)
    modules = {p.relative_to(src).as_posix() for p in (src / "zeroshot").rglob("*.py")}
    assert modules and modules <= set(names), sorted(modules - set(names))

    python, site = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["ZEROSHOT_CACHE_DIR"] = str(tmp_path / "cache")

    def run(*command: object) -> subprocess.CompletedProcess[str]:
        """A fresh process outside the checkout, in the new environment's python or script."""
        return subprocess.run([str(c) for c in command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    before = run(python, "-c", "import zeroshot")
    assert before.returncode == 1 and "No module named 'zeroshot'" in before.stderr  # the checkout is not seen
    installed = run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel)
    assert installed.returncode == 0, installed.stderr
    code = (
        "import json, zeroshot, zeroshot.cli, zeroshot.text.prompts as p, zeroshot.model.catalog as c\n"
        "print(json.dumps([zeroshot.__file__, str(p.pack_dir()), len(p.load_pack('imagenet').classes),"
        " len(c.counted_params()) > 100, len(c.published()[0])]))"
    )
    facts = json.loads(run(python, "-c", code).stdout)
    assert facts == [str(site / "zeroshot" / "__init__.py"), str(site / "zeroshot" / "prompt_packs"), 1000, True, 121]

    script = tmp_path / "venv" / "bin" / "zeroshot"  # the one pip made from entry_points.txt
    assert script.read_text().splitlines()[0] == f"#!{python}"
    shown = run(script, "--version")
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, f"zeroshot {version('zeroshot-clip')}\n", "")
    done = run(script, "classify", EXAMPLE, *FASHION)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    here = invoke("classify", EXAMPLE, *FASHION)  # the checkout's own run: the same record
    assert here.exit_code == 0 and [record] == [json.loads(line) for line in here.stdout.splitlines()]
    assert record["path"] == str(EXAMPLE) and len(record["top_k"]) == 3 and record["label"] in ("coat", "shirt")
