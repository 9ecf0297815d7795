"""The CPU engine's export and the cache: two runs at once export once (a lock), and a cache that
cannot be written says so for every kind it cannot store, once each, with what that costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from zeroshot.model.models import BUNDLED_NAME

from .conftest import as_nobody

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
PICTURE = str(next(iter(sorted(EXAMPLES.glob("*.png")))))
RUN = ["classify", PICTURE, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "1", "--runtime", "onnx"]
EXPORTED = "preparing the CPU engine"  # the note a run prints when it exports (cli.common.CliLoading.engine)


def environment(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ZEROSHOT_RUNTIME"}
    env["ZEROSHOT_CACHE_DIR"] = str(cache)
    return env


def test_two_runs_started_together_export_the_engine_once(tmp_path):
    """Both start on an empty cache; the second waits for the first's exports (the text tower's,
    then the image tower's) and uses them: each export's note is printed once in all."""
    cache = tmp_path / "cache"
    runs = [subprocess.Popen([ZEROSHOT, *RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment(cache)) for _ in range(2)]  # fmt: skip
    done = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], done
    notes = [line for _, err in done for line in err.splitlines() if EXPORTED in line]
    assert len(notes) == 2 and sum("(text, fp32)" in note for note in notes) == 1, done
    assert json.loads(done[0][0]) == json.loads(done[1][0])
    engines = sorted(f.name for p in (cache / "onnx").iterdir() if p.is_dir() for f in p.glob("*.onnx"))
    assert engines == ["image.onnx", "text.onnx"]
    assert not [p for p in (cache / "onnx").iterdir() if p.name.startswith(".")]  # no half-made export left
    third = subprocess.run([ZEROSHOT, *RUN], capture_output=True, text=True, env=environment(cache), timeout=300)
    assert third.returncode == 0 and EXPORTED not in third.stderr, third.stderr


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("zeroshot: warning:")]


def assert_each_kind_warned(stderr: str, reason: str) -> None:
    """One line per kind the run could not store: the text classifier, the CPU engine's export,
    the image embeddings; each names the reason and what it costs."""
    lines = warnings_of(stderr)
    assert len(lines) == 3, stderr
    wanted = {"the text classifier": "built again on every run",
              "the CPU engine's export": "exported again on every run",
              "image embeddings": "encoded again on every run"}  # fmt: skip
    for what, cost in wanted.items():
        (line,) = [line for line in lines if f"warning: {what} cannot be cached" in line]
        assert reason in line and cost in line and "cannot write to the cache" in line, line


def test_a_file_where_the_cache_folder_should_be_is_named_for_every_kind(tmp_path):
    """ZEROSHOT_CACHE_DIR below a regular file: nothing can be stored; the run's records are
    those of a writable cache, and each kind it could not store is named once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = environment(blocker / "cache")
    done = subprocess.run([ZEROSHOT, *RUN, "--cache-images"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_each_kind_warned(done.stderr, "not a directory")
    assert EXPORTED in done.stderr  # exported (in memory) for this run
    writable = subprocess.run([ZEROSHOT, *RUN], capture_output=True, text=True, env=environment(tmp_path / "ok"),
                              timeout=300)  # fmt: skip
    assert json.loads(done.stdout) == json.loads(writable.stdout)
    assert blocker.read_text() == "not a folder"


def test_a_folder_the_user_cannot_write_is_named_for_every_kind(open_dir):
    """A cache folder of mode 0555. Root writes there regardless, so as root the run is made as
    the unprivileged user nobody (util-linux's setpriv); otherwise as the user running the tests."""
    cache = open_dir / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    prefix = as_nobody()
    env = {**environment(cache), "HOME": str(open_dir)}
    done = subprocess.run([*prefix, ZEROSHOT, *RUN, "--cache-images"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_each_kind_warned(done.stderr, "permission denied")
    assert list(cache.iterdir()) == []
