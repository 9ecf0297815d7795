"""Long runs that survive interruption: ``-o FILE`` keeps whole batches in FILE.partial as it goes,
and ``--resume`` finishes FILE byte for byte as one uninterrupted run writes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from zeroshot.model.models import BUNDLED_NAME

from .conftest import default_sigint, invoke

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
FASHION = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "3", "-q", "-b", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """600 Fashion-MNIST examples in 15 folders (a sorted walk), and one file that is no image."""
    root = tmp_path_factory.mktemp("many")
    for i in range(15):
        folder = root / f"part{i:02d}"
        folder.mkdir()
        for p in sorted(EXAMPLES.glob("*.png")):
            shutil.copyfile(p, folder / p.name)
    (root / "part07" / "broken.png").write_bytes(b"not an image")
    return root


def _progress(meta: Path) -> int:
    try:
        return int(json.loads(meta.read_text())["records"])
    except (OSError, ValueError, KeyError):
        return 0


def interrupted(cmd: list[str], out: Path, sig: int, after: int, env: dict[str, str]) -> int:
    """Start ``cmd``, send ``sig`` once FILE.partial holds at least ``after`` records; its exit code."""
    meta = out.with_name(out.name + ".partial.json")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while _progress(meta) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (-sig, 128 + sig, 130, 143), err
    if sig != signal.SIGKILL:
        assert f"records kept in {out}.partial: run the same command with --resume to go on" in err, err
        assert len(err.strip().splitlines()) == 1, err
    return proc.returncode


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory) -> Path:
    """One cache for these runs: the CPU engine's export and the text classifier are made once."""
    return tmp_path_factory.mktemp("resume-cache")


KILLS = {  # (signal, records kept at least) for each format: every signal, early and midway
    "jsonl": ((signal.SIGTERM, 1), (signal.SIGKILL, 300)),
    "csv": ((signal.SIGKILL, 1), (signal.SIGINT, 300)),
    "json": ((signal.SIGINT, 1), (signal.SIGTERM, 300)),
}


@pytest.mark.parametrize("fmt", list(KILLS))
def test_killed_at_several_points_then_resumed_gives_the_uninterrupted_file(fmt, many, engine_cache, tmp_path):
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(engine_cache), "ZEROSHOT_RUNTIME": ""}  # the default engine
    base = [ZEROSHOT, "classify", str(many), *FASHION, "-f", fmt]
    whole = tmp_path / f"whole.{fmt}"
    done = subprocess.run([*base, "-o", str(whole)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and whole.is_file(), done.stderr  # the broken file: exit 1, one error record
    for sig, after in KILLS[fmt]:
        out = tmp_path / f"out-{sig.name}.{fmt}"
        interrupted([*base, "-o", str(out)], out, sig, after, env)
        kept = _progress(out.with_name(out.name + ".partial.json"))
        assert kept >= after and not out.exists()
        again = subprocess.run([*base, "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and "add --resume to go on" in again.stderr  # never overwritten silently
        resumed = subprocess.run([*base, "-o", str(out), "--resume"], env=env, capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert resumed.returncode == 1, resumed.stderr
        assert out.read_bytes() == whole.read_bytes()
        assert not out.with_name(out.name + ".partial").exists()
        assert not out.with_name(out.name + ".partial.json").exists()
        segments = json.loads(out.with_name(out.name + ".manifest.json").read_text())["segments"]
        assert [s["records_before"] for s in segments] == [0, kept]
        assert segments[0]["interrupted"] and segments[0].get("killed", False) == (sig == signal.SIGKILL)
        assert segments[0]["records_after"] == kept and segments[-1]["records_after"] == 601
    # Resuming a run that had finished: nothing to do, FILE as it was.
    twice = subprocess.run([*base, "-o", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert twice.returncode == 1 and "is complete (601 records): nothing to resume" in twice.stderr
    assert out.read_bytes() == whole.read_bytes()


def _colour_images(folder: Path, n: int) -> list[str]:
    folder.mkdir()
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    for i in range(n):
        Image.new("RGB", (12, 10), colours[i % 3]).save(folder / f"{i:03d}.png")
    return [str(folder)]


class Stop(Exception):
    pass


def test_a_resumed_run_encodes_only_what_is_missing_and_refuses_another_run(fake_model, tmp_path, monkeypatch):
    """With the fake model in this process: an interrupt after 3 batches of 4, then --resume encodes
    exactly the other inputs; other labels, another batch size or other inputs are refused."""
    from zeroshot.towers import runtimes
    from zeroshot.uses import resume

    inputs = _colour_images(tmp_path / "img", 30)
    labels = ["--label", "red", "--label", "green", "--label", "blue"]
    args = ["classify", *inputs, *labels, *fake_model, "-b", "4", "-f", "table"]
    whole = invoke(*args, "-o", tmp_path / "whole.txt")
    assert whole.exit_code == 0, whole.stderr
    encoded: list[int] = []
    real_encode, real_append = runtimes.TorchTower.encode, resume.PartialOutput.append_batch

    def counting_encode(self, batch):
        encoded.append(len(batch.pixels))
        return real_encode(self, batch)

    def append_then_stop(self, data, paths, errors=0):
        real_append(self, data, paths, errors)
        if self.records >= 12:
            raise KeyboardInterrupt

    monkeypatch.setattr(runtimes.TorchTower, "encode", counting_encode)
    monkeypatch.setattr(resume.PartialOutput, "append_batch", append_then_stop)
    out = tmp_path / "out.txt"
    first = invoke(*args, "-o", out)
    assert first.exit_code == 130 and "12 records kept in" in first.stderr, first.stderr
    monkeypatch.setattr(resume.PartialOutput, "append_batch", real_append)
    for other, why in ((["--label", "cyan"], "labels, prompts or text classifier"), (["-b", "5"], "--batch-size"),
                       (["-k", "2"], "--top-k"), (["-p", "laion2b_s34b_b79k"], "model, weights")):  # fmt: skip
        refused = invoke(*args, *other, "-o", out, "--resume")
        assert refused.exit_code == 2 and f"--resume: {out}.partial was made with other {why}" in refused.stderr
    moved = tmp_path / "img" / "000.png"
    moved.rename(tmp_path / "img" / "zzz.png")
    refused = invoke(*args, "-o", out, "--resume")
    assert refused.exit_code == 2 and "the first 12 inputs are not the ones" in refused.stderr
    (tmp_path / "img" / "zzz.png").rename(moved)
    encoded.clear()
    resumed = invoke(*args, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert sum(encoded) == 30 - 12  # only the missing inputs went through the image tower
    assert out.read_bytes() == (tmp_path / "whole.txt").read_bytes()  # a table drawn from every record
    nothing = invoke("classify", *inputs, *labels, *fake_model, "--resume")
    assert nothing.exit_code == 2 and "--resume needs --output FILE" in nothing.stderr


def test_an_interrupt_before_the_first_batch_leaves_nothing_and_old_leftovers_are_named(fake_model, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    from zeroshot.uses import resume

    inputs = _colour_images(tmp_path / "img", 6)
    out = tmp_path / "out.jsonl"
    (tmp_path / ".out.jsonl.abc123.tmp").write_text("{}")  # what older versions left when killed

    def stop(self, data, paths, errors=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.PartialOutput, "append_batch", stop)
    first = invoke("classify", *inputs, "--label", "red", "--label", "blue", *fake_model, "-o", out)
    assert first.exit_code == 130 and "records kept" not in first.stderr
    assert ".out.jsonl.abc123.tmp (no run reads them: delete them)" in first.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.jsonl.abc123.tmp", "img"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_resumed_run_reports_every_record_and_reads_each_format_back(fmt, fake_model, tmp_path, monkeypatch):
    """The contact sheet of a resumed run shows the records kept as well as the new ones: the side
    file's records are read back (CSV's columns, an unclosed JSON array) as they were written."""
    from zeroshot.uses import resume

    inputs = _colour_images(tmp_path / "img", 20)
    (tmp_path / "img" / "bad.png").write_bytes(b"no image")
    args = ["classify", *inputs, "--label", "red", "--label", "green", "--label", "blue", *fake_model, "-b", "4",
            "-f", fmt]  # fmt: skip
    whole = invoke(*args, "-o", tmp_path / "whole", "--report", tmp_path / "whole.html")
    real_append = resume.PartialOutput.append_batch

    def append_then_stop(self, data, paths, errors=0):
        real_append(self, data, paths, errors)
        if self.records >= 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.PartialOutput, "append_batch", append_then_stop)
    out = tmp_path / "out"
    assert invoke(*args, "-o", out, "--report", tmp_path / "out.html").exit_code == 130
    side = out.with_name("out.partial")
    kept = resume.read_records(side.read_bytes(), fmt)
    if fmt == "csv":  # back as records: the same paths, labels, scores and errors as the whole run's
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO((tmp_path / "whole").read_text())))[: len(kept)]
        assert [(r["path"], r.get("label"), r.get("error")) for r in kept] == [
            (row["path"], row["label"] or None if not row["error"] else None, row["error"] or None) for row in rows
        ]
    else:
        assert kept == json.loads((tmp_path / "whole").read_text())[: len(kept)]
    monkeypatch.setattr(resume.PartialOutput, "append_batch", real_append)
    resumed = invoke(*args, "-o", out, "--report", tmp_path / "out.html", "--resume")
    assert resumed.exit_code == whole.exit_code == 1  # the bad file, kept or new
    assert out.read_bytes() == (tmp_path / "whole").read_bytes()
    cards = [(tmp_path / name).read_text().count('<div class="card') for name in ("whole.html", "out.html")]
    assert cards[0] == cards[1] >= 21
