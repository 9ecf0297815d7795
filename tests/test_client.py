"""``zeroshot.client``: the records of a real ``zeroshot serve`` equal the installed ``zeroshot
classify``'s (a fresh process) for paths, PIL images and bytes, JSON and streamed; refusals and an
unreachable server are :class:`ServerError` with the status and one line.

One server for the module (``-m fashion-mini --api-key``), the CLI's records once per module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroshot.base.errors import ZeroshotError
from zeroshot.client import Client, ServerError, classify_remotely, read_local
from zeroshot.model.models import BUNDLED_NAME

from .conftest import make_image
from .serving import Server, free_port, server_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
KEY = "test-key-0123456789"
PACK = ["--dataset", "fashion-mnist", "-k", "3"]
BODY_CAP = 1 << 20
LABELS = ["ankle boot", "bag", "coat", "dress", "trouser"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    """Four Fashion-MNIST PNGs, an RGB JPEG, and a PNG whose name a multipart header cannot carry
    as it is (a quote, a backslash, a line break, non-ASCII)."""
    folder = tmp_path_factory.mktemp("pictures")
    paths = [str(p) for p in sorted(EXAMPLES.glob("*.png"))[::10]]
    paths.append(str(make_image(folder / "colour.jpg", 7, (64, 48))))
    odd = folder / 'we"ird\\ ü\nname.png'
    odd.write_bytes(Path(paths[0]).read_bytes())
    paths.append(str(odd))
    return paths


def start_cli(paths: list[str], *args: str, cache: Path) -> subprocess.Popen:
    """The installed console script classifying ``paths``, started (the runs overlap the server's
    start-up and each other: each is an interpreter and a model load)."""
    return subprocess.Popen(
        [ZEROSHOT, "classify", *paths, "-m", BUNDLED_NAME, "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(cache),
    )


def records_of(run: subprocess.Popen) -> list[dict]:
    out, err = run.communicate(timeout=300)
    assert run.returncode in (0, 1), err  # 1: some input could not be classified
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def cli_runs(pictures, tmp_path_factory) -> dict[str, subprocess.Popen]:
    """The console script's runs this module compares with, all started at once: the pictures and
    a missing file with the pack; three pictures with labels; two with labels and --multi-label."""
    missing = str(tmp_path_factory.mktemp("gone") / "missing.png")
    labels = [a for label in LABELS for a in ("--label", label)]
    runs = {
        "pack": start_cli([*pictures, missing], *PACK, cache=tmp_path_factory.mktemp("cli-pack")),
        "labels": start_cli(pictures[:3], *labels, "-k", "2", cache=tmp_path_factory.mktemp("cli-labels")),
        "multi": start_cli(pictures[:2], *labels, "-k", "2", "--multi-label", "--threshold", "0.4",
                           cache=tmp_path_factory.mktemp("cli-multi")),
    }  # fmt: skip
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.wait(10)


@pytest.fixture(scope="module")
def server(cli_runs, tmp_path_factory):
    env = server_env(tmp_path_factory.mktemp("server-cache"))
    cap = ["--max-body-bytes", str(BODY_CAP)]  # far above this module's requests but one
    with Server("-m", BUNDLED_NAME, "--api-key", KEY, "--workers", "0", *cap, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def expected(cli_runs) -> list[dict]:
    return records_of(cli_runs["pack"])


def assert_same(got: list[dict], want: list[dict]) -> None:
    """Same records: same keys in the same order, same labels and paths, scores to 1e-6."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w), (g, w)
        if "error" in w:
            assert g == w
            continue
        assert g["label"] == w["label"]
        assert g["score"] == pytest.approx(w["score"], abs=1e-6)
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in w["top_k"]]
        assert [t["score"] for t in g["top_k"]] == pytest.approx([t["score"] for t in w["top_k"]], abs=1e-6)


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, api_key=KEY)


def test_paths_give_the_cli_records_and_unreadable_files_their_messages(client, pictures, expected, tmp_path):
    missing = expected[-1]["path"]
    records = client.classify([*pictures, missing], dataset="fashion-mnist", top_k=3)
    assert_same(records, expected)
    in_pairs = Client(client.url, api_key=KEY, chunk=2)  # four requests, the same records
    assert_same(in_pairs.classify(iter([*pictures, missing]), dataset="fashion-mnist", top_k=3), expected)
    assert expected[-1] == {"path": missing, "error": "no such file"}
    assert records[pictures.index(pictures[-1])]["path"] == pictures[-1]  # the odd name, exactly
    # A folder is not an image: its record says so, and the images around it are unaffected.
    around = client.classify([pictures[0], str(tmp_path), pictures[1]], dataset="fashion-mnist", top_k=3)
    assert around[1] == {"path": str(tmp_path), "error": "is a directory"}
    assert_same([around[0], around[2]], expected[:2])


def test_pil_images_arrays_and_bytes_give_the_records_of_their_files(client, pictures, expected):
    images = []
    for path in pictures:
        with Image.open(path) as im:
            images.append(im.copy())  # decoded pixels (the JPEG's too), sent as PNG
    assert_same(client.classify(images, dataset="fashion-mnist", top_k=3, names=pictures), expected[:-1])
    arrays = [np.asarray(im) for im in images[:2]]
    assert_same(client.classify(arrays, dataset="fashion-mnist", top_k=3, names=pictures[:2]), expected[:2])
    odd = client.classify([np.zeros((4, 4, 2), np.uint8), images[0]], dataset="fashion-mnist", top_k=3)
    assert odd[0] == {
        "path": "image-0",
        "error": "unsupported array: uint8 of shape (4, 4, 2) (give uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA)",
    }
    assert_same(odd[1:], [{**expected[0], "path": "image-1"}])
    assert_same(client.classify(pictures[0], dataset="fashion-mnist", top_k=3), expected[:1])  # one alone
    blobs = [Path(p).read_bytes() for p in pictures]
    unnamed = client.classify(blobs, dataset="fashion-mnist", top_k=3)
    assert [r["path"] for r in unnamed] == [f"image-{i}" for i in range(len(blobs))]
    renamed = [{**r, "path": p} for r, p in zip(unnamed, pictures, strict=True)]
    assert_same(renamed, expected[:-1])


def test_classify_stream_yields_the_same_records(client, pictures, expected):
    stream = client.classify_stream([*pictures, expected[-1]["path"]], dataset="fashion-mnist", top_k=3)
    first = next(stream)
    assert_same([first], expected[:1])
    assert_same([first, *stream], expected)


def test_labels_and_multi_label_give_the_cli_records(client, pictures, cli_runs):
    assert_same(client.classify(pictures[:3], labels=LABELS, top_k=2), records_of(cli_runs["labels"]))
    got = client.classify(pictures[:2], labels=LABELS, multi_label=True, threshold=0.4, top_k=2)
    want = records_of(cli_runs["multi"])
    assert [r["labels"] for r in got] == [r["labels"] for r in want]
    assert_same(got, want)


def test_classify_remotely_keeps_the_order_and_sends_no_unreadable_file(server, pictures, expected, tmp_path):
    missing = expected[-1]["path"]
    items = [
        (pictures[0], None),
        ("walked/but/gone.png", "no image files in this folder"),  # an error known from the walk
        None,  # a live stream's pause: what is held goes now
        (pictures[1], None),
        (str(tmp_path), None),
        (missing, None),
        (pictures[2], None),
        ("https://example.com/cat.jpg", None),
        (pictures[3], None),
        (pictures[4], None),
    ]
    taken: list = []

    def feed():  # a live producer: what was taken when each record came out
        for item in items:
            taken.append(item)
            yield item

    records, taken_at = [], []
    for record in classify_remotely(server.url, feed(), dataset="fashion-mnist", top_k=3, api_key=KEY, chunk=2):
        records.append(record)
        taken_at.append(len(taken))
    # The pause sends the first image alone; then two images per request, the unsendable in between.
    assert taken_at == [3, 3, 7, 7, 7, 7, 8, 10, 10]
    assert [r["path"] for r in records] == [item[0] for item in items if item is not None]
    assert records[1] == {"path": "walked/but/gone.png", "error": "no image files in this folder"}
    assert records[3] == {"path": str(tmp_path), "error": "is a directory"}
    assert records[4] == {"path": missing, "error": "no such file"}
    assert "not sent to a server" in records[6]["error"]
    goods = [records[i] for i in (0, 2, 5, 7, 8)]
    assert_same(goods, expected[:5])


def test_embeddings_models_datasets_and_ready(client, pictures):
    model = client.models()
    assert model["model"] == BUNDLED_NAME
    dim = model["embed_dim"]
    packs = {d["name"]: d for d in client.datasets()}
    assert packs["fashion-mnist"]["classes"] == 10
    assert client.ready() is True

    texts = client.embed_texts(["a photo of a bag", "a photo of a coat"])
    vectors = np.array(texts)
    assert vectors.shape == (2, dim)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1], abs=1e-5)
    alone = np.array(client.embed_texts(["a photo of a coat"]))
    assert np.abs(alone[0] - vectors[1]).max() < 1e-5  # batch-invariant
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3

    entries = client.embed_images([pictures[0], b"not an image at all", pictures[0]], names=[None, "notes", None])
    assert [e["path"] for e in entries] == [pictures[0], "notes", pictures[0]]  # a path keeps its path
    assert "error" in entries[1] and "embedding" not in entries[1]
    first, last = np.array(entries[0]["embedding"]), np.array(entries[2]["embedding"])
    assert first.shape == (dim,) and np.linalg.norm(first) == pytest.approx(1, abs=1e-5)
    assert np.abs(first - last).max() < 1e-6


def test_refusals_raise_server_error_with_status_and_the_servers_line(server, client, pictures, monkeypatch):
    with pytest.raises(ServerError) as bad:
        client.classify(pictures[:1], dataset="no-such-pack")
    assert bad.value.status == 400 and bad.value.exit_code == 2
    assert "no-such-pack" in str(bad.value) and "\n" not in str(bad.value)
    assert isinstance(bad.value, ZeroshotError)

    for key in ("wrong-key", ""):
        monkeypatch.delenv("ZEROSHOT_API_KEY", raising=False)
        with pytest.raises(ServerError) as denied:
            Client(server.url, api_key=key).classify(pictures[:1], dataset="fashion-mnist")
        assert denied.value.status == 401 and denied.value.exit_code == 1
        assert str(denied.value) and "\n" not in str(denied.value)
    monkeypatch.setenv("ZEROSHOT_API_KEY", KEY)  # the default key
    assert Client(server.url).datasets()

    # A body over the cap is refused before the server reads it, and closed: the 413 is read anyway.
    with pytest.raises(ServerError) as large:
        Client(server.url).classify([bytes(8 * BODY_CAP)], labels=LABELS)
    assert large.value.status == 413 and "max-body-bytes" in str(large.value)


def test_an_unreachable_server_is_one_line_naming_its_url(pictures):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError) as refused:
        Client(url, api_key=KEY).classify(pictures[:1], labels=LABELS)
    assert refused.value.status is None
    assert str(refused.value) == f"cannot reach the zeroshot server at {url}: connection refused"
    assert Client(url).ready() is False
    with pytest.raises(ZeroshotError, match="http://HOST"):
        Client("ftp://example.com")


def test_read_local_gives_the_cli_messages(tmp_path):
    """The client reads files by the command line's rules (it may not import them): same bytes,
    same messages as :func:`zeroshot.image.reading.read_file`."""
    from zeroshot.image.reading import read_file

    good = tmp_path / "a.bin"
    good.write_bytes(b"x" * 10)
    assert read_local(str(good)) == read_file(str(good)) == b"x" * 10
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, cap in ((fifo, None), (tmp_path, None), (tmp_path / "nope", None), (good, 4)):
        with pytest.raises(Exception) as local:
            read_local(str(path), cap)
        with pytest.raises(Exception) as cli:
            read_file(str(path), cap)
        assert (type(local.value), str(local.value)) == (type(cli.value), str(cli.value))
        assert str(local.value) in ("not a regular file: a FIFO", "is a directory", "no such file",
                                    "too large: 10 bytes, over the max_bytes limit of 4")  # fmt: skip


def test_classify_stream_yields_each_record_as_its_line_arrives():
    """A server that sends its second line only once the first record has reached the caller: a
    client that waited for the whole answer would stall here (bounded: the server gives up after 10 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    first_seen = threading.Event()
    waited: list[bool] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as incoming:
            length = 0
            while (line := incoming.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            incoming.read(length)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(2):
                if i:
                    waited.append(first_seen.wait(10))
                line = json.dumps({"path": f"image-{i}", "label": "a", "score": 1.0, "top_k": []}).encode() + b"\n"
                conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            conn.sendall(b"0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    paths = []
    for record in Client(f"http://127.0.0.1:{port}").classify_stream([b"one", b"two"], labels=["a", "b"]):
        paths.append(record["path"])
        first_seen.set()
    thread.join(10)
    listener.close()
    assert paths == ["image-0", "image-1"] and waited == [True]


def test_the_client_imports_nothing_heavy():
    """It runs where torch is not installed: importing it loads no torch, numpy, Pillow or server."""
    heavy = "{'torch', 'numpy', 'PIL', 'fastapi', 'open_clip'}"
    code = f"import sys, zeroshot.client; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
