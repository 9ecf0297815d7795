"""A file the user names and zeroshot replaces whole (``-o``, ``--manifest``, ``--report``,
classifier and calibration files) keeps the mode and, where permitted, the owner of the file it
replaces, as a shell's ``>`` does; a new one gets the umask's mode, which nothing changes to read."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import EXAMPLES, SIDE_FASHION, ZEROSHOT

FASHION = SIDE_FASHION


def _mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("fmt", ["jsonl", "table"])  # through the side file's rename; through OutputFile
def test_replacing_a_file_keeps_its_mode_and_owner(fmt, work):
    nobody = pwd.getpwnam("nobody")
    old = {"out.txt": (0o600, b"old records\n"), "out.txt.manifest.json": (0o640, b"{}"),
           "sheet.html": (0o604, b"<p>old</p>")}  # fmt: skip
    for name, (mode, data) in old.items():
        (work / name).write_bytes(data)
        os.chown(work / name, nobody.pw_uid, nobody.pw_gid)
        os.chmod(work / name, mode)
    done = subprocess.run([ZEROSHOT, "classify", str(EXAMPLES), *FASHION, "-f", fmt, "-o", "out.txt", "--report",
                           "sheet.html"], cwd=work, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, (mode, data) in old.items():
        assert (work / name).read_bytes() != data  # replaced...
        assert _mode_owner(work / name) == (mode, nobody.pw_uid, nobody.pw_gid), name  # ...as `>` would


def test_a_new_file_gets_the_umasks_mode(work):
    done = subprocess.run([ZEROSHOT, "classify", str(EXAMPLES), *FASHION, "-o", "new.jsonl", "--report", "new.html"],
                          cwd=work, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(0o027))  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("new.jsonl", "new.jsonl.manifest.json", "new.html"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o640, name


def test_the_umask_is_never_changed_to_be_read(tmp_path, monkeypatch):
    """Setting the umask to read it (and back) races with every thread that creates a file meanwhile:
    files are created with 0o666 and the kernel takes the umask off."""
    from zeroshot.base.files import atomic_write_bytes, destination

    mask = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask called"))
        destination("--report", tmp_path / "report.html").write_bytes(b"<p>hi</p>")
        atomic_write_bytes(tmp_path / "shared.json", b"{}", shared=True)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        monkeypatch.undo()
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
