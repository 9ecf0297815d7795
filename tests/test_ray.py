"""classify --engine ray: the same records as the single-process CLI, on a local Ray (CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from zeroshot.cli import app

from .conftest import ARCH, make_image

LABELS = ["--label", "red fox", "--label", "tabby cat", "--label", "sports car"]


@pytest.fixture(scope="module")
def ray_installed():
    """Ray itself, for the tests that start it (the others here run without it)."""
    return pytest.importorskip("ray", reason="the Ray engine needs zeroshot-clip[ray]")


@pytest.fixture(scope="module")
def local_ray(ray_installed):
    ray_installed.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray_installed.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, image_dir):
    root = tmp_path_factory.mktemp("ray-in")
    for i, p in enumerate(sorted(image_dir.iterdir())):
        shutil.copy(p, root / f"{i:02d}-{p.name}")
    (root / "sub").mkdir()
    for i in range(6):
        make_image(root / "sub" / f"extra-{i}.jpg", seed=100 + i, size=(120, 90))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "empty.jpg").write_bytes(b"")
    return root


def local_records(*args):
    result = CliRunner().invoke(app, ["classify", *map(str, args)])
    return {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}


def assert_same(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for path, r in ref.items():
        o = ours[path]
        assert o.keys() == r.keys(), path
        if "error" in r:
            assert o["error"] == r["error"]
            continue
        assert o["label"] == r["label"]
        assert [t["label"] for t in o["top_k"]] == [t["label"] for t in r["top_k"]]
        for a, b in zip(o["top_k"], r["top_k"], strict=True):
            assert abs(a["score"] - b["score"]) < 1e-5


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_records_equal_the_single_process_cli(local_ray, folder, checkpoint, tmp_path, fmt):
    from zeroshot.engines.distributed import iter_records

    missing = str(folder / "missing.jpg")
    common = [folder, missing, *LABELS, "-m", ARCH, "-p", checkpoint, "-k", "3", "-q"]
    ref = local_records(*common)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["classify", *map(str, common), "--engine", "ray", "--workers", "2",
                                      "-b", "4", "-o", str(out), "-f", fmt])  # fmt: skip
    assert result.exit_code == 1, result.output  # broken, empty and missing inputs
    summary = json.loads(result.stdout)
    assert summary["records"] == len(ref) and summary["errors"] == sum("error" in r for r in ref.values()) == 3
    rows = list(iter_records(out, fmt))
    assert len(rows) == len(ref)  # one record per input: nothing lost, nothing twice
    if fmt == "parquet":  # typed columns: nulls where the CLI leaves a key out
        rows = [{k: v for k, v in r.items() if v is not None and k != "labels"} for r in rows]
        assert all(isinstance(r.get("top_k", []), list) for r in rows)
    assert_same({r["path"]: r for r in rows}, ref)


def test_map_batches_callable_in_a_users_pipeline(local_ray, folder, checkpoint):
    """The library piece on its own: a Ray dataset of paths, map_batches(ClassifyBatch)."""
    import ray.data

    from zeroshot.engines.distributed import ClassifyBatch, SharedClassifier
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.text.prompts import resolve_prompt_set

    spec = resolve_spec(ARCH, str(checkpoint))
    text = get_text_classifier(spec, resolve_prompt_set(labels=["red fox", "tabby cat", "sports car"]),
                               lambda: load_model(spec))  # fmt: skip
    shared = SharedClassifier.build(spec, text)
    paths = sorted(str(p) for p in (folder / "sub").iterdir())
    ds = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        ClassifyBatch, fn_constructor_args=(shared,), fn_constructor_kwargs={"top_k": 3},
        compute=ray.data.ActorPoolStrategy(size=1), batch_size=4, batch_format="numpy",
    )  # fmt: skip
    rows = ds.take_all()
    ref = local_records(*paths, *LABELS, "-m", ARCH, "-p", checkpoint, "-k", "3")
    assert_same({r["path"]: json.loads(r["record"]) for r in rows}, ref)


def test_uris_go_through_rays_reader(local_ray, folder, checkpoint, tmp_path):
    sub = folder / "sub"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["classify", sub.as_uri(), *LABELS, "-m", ARCH, "-p", str(checkpoint),
                                      "-k", "3", "-q", "--engine", "ray", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    from zeroshot.engines.distributed import iter_records

    rows = {os.path.basename(r["path"]): r for r in iter_records(out)}
    ref = {
        os.path.basename(p): r for p, r in local_records(sub, *LABELS, "-m", ARCH, "-p", checkpoint, "-k", "3").items()
    }
    assert set(rows) == set(ref) and len(rows) == 6
    for name in ref:
        assert rows[name]["label"] == ref[name]["label"]
        assert abs(rows[name]["score"] - ref[name]["score"]) < 1e-5


def test_without_ray_a_clear_error(monkeypatch, folder, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    result = CliRunner().invoke(app, ["classify", str(folder), *LABELS, "--engine", "ray", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "pip install 'zeroshot-clip[ray]'" in result.stderr and len(result.stderr.splitlines()) == 1


def _actor_pids(root: int) -> list[int]:
    """The classify actors among ``root``'s descendants (its own local Ray's workers)."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    parent, args = {}, {}
    for line in ps.splitlines()[1:]:
        pid, ppid, *rest = line.split(maxsplit=2)
        parent[int(pid)], args[int(pid)] = int(ppid), (rest[0] if rest else "")

    def under(pid: int) -> bool:
        seen = set()
        while pid not in seen and pid > 1:
            seen.add(pid)
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return [pid for pid, a in args.items() if "MapBatches(ClassifyBatch)" in a and under(pid)]


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(ray_installed, tmp_path, checkpoint):
    """SIGKILL the actor mid-run: Ray restarts it and retries its batch; every input has one record."""
    folder = tmp_path / "in"
    folder.mkdir()
    n = 160
    for i in range(n):
        make_image(folder / f"{i:03d}.png", seed=i, size=(64, 48))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zeroshot", "classify", str(folder), *LABELS, "-m", ARCH, "-p", str(checkpoint),
           "--engine", "ray", "--workers", "1", "-b", "8", "-o", str(out), "-q"]  # fmt: skip
    killed: list[int] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def killer() -> None:
        deadline = time.time() + 240
        first = None
        while time.time() < deadline and proc.poll() is None:
            pids = _actor_pids(proc.pid)
            if pids and first is None:
                first = time.time()
            if pids and time.time() - first > 3:  # let it classify a few batches first
                for pid in pids:
                    os.kill(pid, 9)
                    killed.append(pid)
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    stdout, stderr = proc.communicate(timeout=600)
    t.join(timeout=5)
    assert killed, "no actor was found to kill"
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["records"] == n, (stdout, stderr[-2000:])
    from zeroshot.engines.distributed import iter_records

    paths = [r["path"] for r in iter_records(out)]
    assert len(paths) == n and len(set(paths)) == n  # nothing lost, nothing twice
    assert all("error" not in r for r in iter_records(out))


def test_a_file_that_crashes_the_decoder_costs_only_its_record(folder, checkpoint, monkeypatch):
    """In an actor, decoding runs in forked processes: a crash there is that file's error record,
    not a dead actor whose batch Ray would retry forever. (Run in-process: no Ray needed.)"""
    from zeroshot.engines.distributed import ClassifyBatch, SharedClassifier
    from zeroshot.image.decoding import FileDecoder
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.text.prompts import resolve_prompt_set

    real = FileDecoder.decode_bytes

    def crash_on_boom(self, data):
        if data.startswith(b"BOOM"):
            os._exit(3)  # what a decoder crash (a segfault in a C library) does to its process
        return real(self, data)

    spec = resolve_spec(ARCH, str(checkpoint))
    text = get_text_classifier(spec, resolve_prompt_set(labels=["fox", "cat"]), lambda: load_model(spec))
    shared = SharedClassifier.build(spec, text)
    good = sorted(str(p) for p in (folder / "sub").iterdir())[:3]
    boom = folder.parent / "boom.png"
    boom.write_bytes(b"BOOM" + b"\0" * 100)
    paths = [good[0], str(boom), good[1], good[2]]
    plain = ClassifyBatch(shared, decode_workers=0).classify(good, None, None)
    monkeypatch.setattr(FileDecoder, "decode_bytes", crash_on_boom)
    batch = ClassifyBatch(shared, decode_workers=1)
    recs = batch.classify(paths, None, ["", "", "", ""])
    assert [r["path"] for r in recs] == paths
    assert recs[1] == {"path": str(boom), "error": "the image decoder crashed on this file"}
    assert [recs[0], recs[2], recs[3]] == plain


def _descendants(root: int) -> list[int]:
    """Every process under ``root`` (a local Ray's raylet, its workers, whatever session they chose)."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in ps.splitlines()[1:]:
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_a_killed_driver_resumed_gives_every_record_once(ray_installed, folder, checkpoint, tmp_path):
    """SIGKILL the driver and every process of its local Ray once the first block file is written
    (a machine that went away); the same command with --resume classifies only what has no record,
    and the folder ends with the uninterrupted run's records, none missing, none twice."""
    from zeroshot.engines.distributed import iter_records

    common = [folder, *LABELS, "-m", ARCH, "-p", checkpoint, "-k", "3", "-q"]
    ref = local_records(*common)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zeroshot", "classify", *map(str, common), "--engine", "ray", "--workers", "1",
           "-b", "2", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(f.stat().st_size for f in out.glob("*.jsonl")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    proc.wait()
    kept = len(list(iter_records(out)))
    assert 0 < kept < len(ref)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "add --resume to go on" in again.stderr  # never mixed in silently
    # Files the engine did not write, among its own: never read as records, rewritten nor removed.
    foreign = {"notes.jsonl": b'{"note": "no path here"}\n{"cut sh', "old.parquet": b"PAR1 not really",
               "_index.json": b"{}"}  # fmt: skip
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # the broken and empty inputs
    left = "_index.json, notes.jsonl, old.parquet (left as they are, not read as records)"
    assert f"zeroshot: warning: {out} holds files this engine did not write: {left}\n" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_after"] == kept and summary["records"] == len(ref)
    rows = list(iter_records(out))
    assert len(rows) == len(ref)  # nothing twice
    assert_same({r["path"]: r for r in rows}, ref)  # nothing missing, the same records
    assert {name: (out / name).read_bytes() for name in foreign} == foreign


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_resume_touches_only_the_block_files_its_mark_lists(fmt, tmp_path, caplog):
    """The engine's mark names each run's block files (a token in their names): a resumed run mends
    or removes only those when a kill cut them short; any other file stays byte for byte, unread,
    and is named in a warning. (No Ray needed: the folder is read before Ray starts.)"""
    import pyarrow.parquet as pq

    from zeroshot.base.errors import UsageError
    from zeroshot.engines.distributed import count_output, iter_records, records_table
    from zeroshot.uses.resume import BlockFolder, folder_progress

    out = tmp_path / "out"
    token = BlockFolder(out, fmt).begin()
    recs = [{"path": f"{i}.png", "label": "cat", "score": 0.9, "top_k": [{"label": "cat", "score": 0.9}]}
            for i in range(4)]  # fmt: skip
    whole, torn = out / f"zeroshot-{token}-w-000000.{fmt}", out / f"zeroshot-{token}-w-000001.{fmt}"
    if fmt == "parquet":
        pq.write_table(records_table(recs[:3]).drop_columns(["record"]), whole)
        pq.write_table(records_table(recs[3:]).drop_columns(["record"]), torn)
        torn.write_bytes(torn.read_bytes()[:40])  # no footer: a write cut short
        foreign = {"old.parquet": b"PAR1 not a parquet file", "notes.jsonl": b'{"no": "path"}\n'}
    else:
        whole.write_text("".join(json.dumps(r) + "\n" for r in recs[:3]))
        torn.write_text(json.dumps(recs[3]) + '\n{"path": "4.png", "lab')
        foreign = {"notes.jsonl": b'{"no": "path"}\n{"cut', "old.parquet": b"PAR1 not a parquet file"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    with pytest.raises(UsageError, match="holds 2 record files of an earlier run already: add --resume"):
        folder_progress(out, fmt, False)
    done = folder_progress(out, fmt, True)
    assert done == ({"0.png", "1.png", "2.png"} if fmt == "parquet" else {"0.png", "1.png", "2.png", "3.png"})
    assert {name: (out / name).read_bytes() for name in foreign} == foreign
    assert torn.exists() == (fmt == "jsonl")  # Parquet without its footer: removed (it was ours)
    assert [r["path"] for r in iter_records(out, fmt)] == sorted(done)
    assert count_output(out, fmt) == (len(done), 0)
    notes = [r.getMessage() for r in caplog.records if r.name == "zeroshot"]
    assert any(f"{out} holds files this engine did not write: " in m and "old.parquet" in m for m in notes), notes


def test_a_videos_frames_spread_over_actors_as_frame_tasks(local_ray, folder, checkpoint, tmp_path):
    """A video's sampled frames are rows of their own: with -b 4 its 11 frames are three tasks or
    more, and the records equal the local engine's, frame by frame (path and time)."""
    from zeroshot.engines.distributed import iter_records

    from .videos import EXAMPLES, make_video

    clip = tmp_path / "clip.webm"
    pics = sorted(EXAMPLES.glob("*.png"))
    make_video(clip, [(pics[0], 2.0), (pics[9], 3.5)])
    common = [clip, folder / "sub" / "extra-0.jpg", *LABELS, "-m", ARCH, "-p", checkpoint, "-k", "3", "-q",
              "--every", "0.5"]  # fmt: skip
    ref = CliRunner().invoke(app, ["classify", *map(str, common)])
    assert ref.exit_code == 0, ref.output
    want = [json.loads(line) for line in ref.stdout.splitlines()]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["classify", *map(str, common), "--engine", "ray", "--workers", "2", "-b", "4",
                                      "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    got = {(r["path"], r.get("time")): r for r in iter_records(out)}
    assert len(got) == len(want) == 12  # 11 frames and the image, each once
    for r in want:
        o = got[(r["path"], r.get("time"))]
        assert o.get("frame") == r.get("frame") and o["label"] == r["label"]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(o["top_k"], r["top_k"], strict=True)) < 1e-5
