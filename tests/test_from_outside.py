"""What a new user meets running the installed ``zeroshot`` command (a fresh process each time, as a
shell runs it): where ``-o`` writes, paths streamed on stdin, the library given one path, messages.

Each console-script run costs an interpreter start and imports (about 3 s here), so one run often
carries several checks: ``-o`` to a FIFO with ``--report`` through a symlink, and so on.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import as_nobody, default_sigint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "2", "-q"]


@pytest.fixture(autouse=True)
def default_runtime(isolated_env, monkeypatch):
    """These runs are a new user's: the default runtime (ONNX Runtime on the CPU), not the torch
    one the rest of the suite pins."""
    monkeypatch.delenv("ZEROSHOT_RUNTIME", raising=False)


def console(*args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run([ZEROSHOT, *args], text=True, **kwargs)


def records_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pictures() -> list[str]:
    return [str(p) for p in sorted(EXAMPLES.glob("*.png"))[:3]]


@pytest.fixture(scope="module")
def expected(pictures, tmp_path_factory) -> list[dict]:
    """The records on plain stdout: what every other destination must receive (the default runtime,
    a cache of its own)."""
    env = {k: v for k, v in os.environ.items() if k != "ZEROSHOT_RUNTIME"}
    env["ZEROSHOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("expected-cache"))
    done = console("classify", *pictures, *MODEL, env=env)
    assert done.returncode == 0, done.stderr
    return records_of(done.stdout)


def test_output_goes_through_fifos_symlinks_and_devices_the_test_made(pictures, expected, tmp_path):
    """-o to a FIFO (a reader gets the records), --report through a symlink (the link stays, its
    target gets the page), --manifest to a character device made here (it stays a device)."""
    fifo = tmp_path / "records.fifo"
    os.mkfifo(fifo)
    page = tmp_path / "report.html"
    page.write_text("old")
    link = tmp_path / "report-link.html"
    link.symlink_to(page)
    device = None
    if os.geteuid() == 0:  # a null device of our own (never the machine's /dev)
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    manifest = device or tmp_path / "manifest.json"
    proc = subprocess.Popen([ZEROSHOT, "classify", *pictures, *MODEL, "-o", str(fifo), "--report", str(link),
                             "--manifest", str(manifest)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    with open(fifo) as reader:  # the writer's open waits for this reader, as `>` into a FIFO does
        got = reader.read()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert records_of(got) == expected
    assert fifo.is_fifo() and link.is_symlink() and os.readlink(link) == str(page)
    assert "<!DOCTYPE html>" in page.read_text()
    if device is not None:
        assert stat.S_ISCHR(device.stat().st_mode)  # not replaced by a regular file
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert left == sorted({"records.fifo", "report.html", "report-link.html", manifest.name})  # no temporary file


def test_output_into_a_process_substitution_a_descriptor_and_stdout(pictures, expected, tmp_path):
    gz = tmp_path / "out.jsonl.gz"
    script = (
        f"{ZEROSHOT} classify {' '.join(pictures)} {' '.join(MODEL)} -o >(gzip > {gz}) --manifest >(cat > "
        f"{tmp_path / 'manifest.json'}); code=$?; wait; exit $code"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr
    for _ in range(100):  # the substituted processes may finish a moment after the shell
        if gz.exists() and (tmp_path / "manifest.json").stat().st_size:
            break
        time.sleep(0.05)
    import gzip

    assert records_of(gzip.decompress(gz.read_bytes()).decode()) == expected
    assert json.loads((tmp_path / "manifest.json").read_text())["records"] == 3
    # A symlink of our own to this process's stdout, and "-": both are stdout.
    (tmp_path / "to-stdout").symlink_to("/proc/self/fd/1")
    for target in ("-", str(tmp_path / "to-stdout")):
        done = console("classify", *pictures, *MODEL, "-o", target)
        assert done.returncode == 0, done.stderr
        assert records_of(done.stdout) == expected
    assert not (Path.cwd() / "-").exists() and (tmp_path / "to-stdout").is_symlink()


def test_a_symlinked_output_file_keeps_its_link_and_is_replaced_whole(pictures, expected, tmp_path):
    target = tmp_path / "real" / "records.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "records.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "new-link.jsonl"
    dangling.symlink_to(tmp_path / "real" / "new.jsonl")
    for out in (link, dangling):
        done = console("classify", *pictures, *MODEL, "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert out.is_symlink() and records_of(out.read_text()) == expected
    assert records_of(target.read_text()) == expected
    assert sorted(p.name for p in target.parent.iterdir()) == ["new.jsonl", "records.jsonl"]


def test_a_folder_or_unwritable_place_is_refused_before_any_work(pictures, tmp_path):
    """Exit 2 and one line, before the model is even resolved (an unknown model would be named
    otherwise), for --output, --manifest and --report alike."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for option in ("--output", "--manifest", "--report"):
        done = console("classify", *pictures, "-m", "NoSuchModel", "--label", "a", option, str(folder))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"zeroshot: error: {option} {folder} is a folder: give a file name\n"
    done = console("classify", *pictures, "-m", "NoSuchModel", "--label", "a", "-o", str(tmp_path / "no" / "x"))
    assert done.returncode == 2 and "its folder does not exist" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["a-folder"]


def test_unprivileged_user_gets_permission_denied_records_and_refusals(open_dir):
    """As an unprivileged user, even when the suite runs as root: an unreadable image is a
    "permission denied" record, a folder it cannot write to is refused up front (exit 2)."""
    picture = open_dir / "locked.png"
    shutil.copy(next(EXAMPLES.glob("*.png")), picture)
    picture.chmod(0)
    readable = open_dir / "fine.png"
    shutil.copy(next(EXAMPLES.glob("*.png")), readable)
    readable.chmod(0o644)
    cache = open_dir / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    env = {**os.environ, "ZEROSHOT_CACHE_DIR": str(cache), "HOME": str(cache)}
    prefix = as_nobody()
    done = subprocess.run([*prefix, ZEROSHOT, "classify", str(picture), str(readable), *MODEL], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    records = records_of(done.stdout)
    assert records[0] == {"path": str(picture), "error": "permission denied"}
    assert records[1]["label"] and "error" not in records[1]
    out = open_dir / "out.jsonl"
    done = subprocess.run([*prefix, ZEROSHOT, "classify", str(readable), *MODEL, "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"zeroshot: error: --output {out}: cannot write there (permission denied on {open_dir})\n"
    mine = open_dir / "mine"  # a folder it may write to, holding a file it may not
    mine.mkdir()
    if os.geteuid() == 0:
        os.chown(mine, 65534, 65534)
    (mine / "kept.jsonl").write_text("keep me\n")
    (mine / "kept.jsonl").chmod(0o444)
    done = subprocess.run([*prefix, ZEROSHOT, "classify", str(readable), *MODEL, "-o", str(mine / "kept.jsonl")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "(the file is read-only)" in done.stderr
    assert (mine / "kept.jsonl").read_text() == "keep me\n"


def test_stdin_paths_give_records_while_the_producer_still_writes(pictures, tmp_path):
    """Two paths, then silence with stdin still open: both records arrive; an interrupt then keeps
    them (exit 130) and the path never sent costs nothing."""
    proc = subprocess.Popen([ZEROSHOT, "classify", "-", *MODEL, "-b", "8"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{pictures[0]}\n{pictures[1]}\n".encode())
    proc.stdin.flush()
    got = b""
    deadline = time.monotonic() + 120
    while got.count(b"\n") < 2 and time.monotonic() < deadline:  # unbuffered: what has arrived so far
        if select.select([proc.stdout], [], [], 1.0)[0]:
            got += os.read(proc.stdout.fileno(), 1 << 16)
    assert [r["path"] for r in records_of(got.decode())] == pictures[:2]  # stdin is still open
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and rest == b"" and err == b"zeroshot: error: interrupted\n"


def test_the_library_takes_one_path_as_one_input(fake_model, tmp_path):
    import zeroshot

    from .conftest import make_image

    image = make_image(tmp_path / "red.png", 1, (16, 16))
    zs = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai", device="cpu", runtime="torch")
    text = zs.text_classifier(zeroshot.resolve_prompt_set(labels=["red", "green", "blue"]), use_cache=False)
    for one in (str(image), image, str(tmp_path / "missing.png")):
        records = list(zs.classify(one, text, workers=0))
        assert [r["path"] for r in records] == [str(one)]
    assert [r["path"] for r in zs.classify([str(image), image], text, workers=0)] == [str(image)] * 2
    with pytest.raises(TypeError, match=r"images must be an image \(.*\) or an iterable of them, not int"):
        zs.classify(42, text)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not int"):
        list(zs.classify([str(image), 7], text, workers=0))  # type: ignore[list-item]
