"""``zeroshot serve`` gives the records ``zeroshot classify`` prints, through a real server process:
JSON and NDJSON answers, multipart and base64 inputs, the options, bad images, embeddings.

One fashion-mini server for the module (the smallest model), and one on a random-weights ViT-B-32
checkpoint file for the records of a real architecture. The CLI's records come from the console
script in a fresh process, for the same files."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .serving import Server, multipart, request, server_env

TOL = 1e-6
COUNT = 6


@pytest.fixture(scope="module")
def pictures(fashion_mnist, tmp_path_factory) -> list[Path]:
    """Fashion-MNIST test images as PNG files, and one file that is not an image (third)."""
    from zeroshot.image.idx import load_split

    images, _ = load_split(fashion_mnist, "test")
    folder = tmp_path_factory.mktemp("serve-fashion")
    paths = []
    for i in range(COUNT):
        paths.append(folder / f"f{i}.png")
        Image.fromarray(images[i * 11]).save(paths[-1])
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths.insert(2, bad)
    return paths


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="module")
def classifier_file(cache_dir) -> Path:
    """fashion-mnist's text classifier for fashion-mini as a classifier file (what build-prompts -o
    writes), made in this process: torch is imported here anyway (the ViT-B-32 checkpoint)."""
    import zeroshot
    from zeroshot.uses.export import save_classifier

    path = cache_dir.parent / "fashion-pack.zsc"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZEROSHOT_CACHE_DIR", str(cache_dir))  # the server's: it finds the pack's classifier there
        model = zeroshot.Zeroshot(model="fashion-mini", runtime="torch")
        pack = zeroshot.resolve_prompt_set(dataset="fashion-mnist")
        save_classifier(path, model.spec, pack, model.text_classifier(pack).weights)
    return path


@pytest.fixture(scope="module")
def server(cache_dir, classifier_file):
    args = ("-m", "fashion-mini", "--max-wait-ms", "20", "--classifier", str(classifier_file))
    with Server(*args, env=server_env(cache_dir)) as s:
        yield s


def cli_start(paths: list[Path], *args: str, cache_dir: Path, importtime: bool = False) -> subprocess.Popen:
    """``zeroshot classify PATHS ARGS`` started in a fresh process (see :func:`cli_records`)."""
    flags = ["-X", "importtime"] if importtime else []
    proc = subprocess.Popen(
        [sys.executable, *flags, "-m", "zeroshot", "classify", *map(str, paths), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server_env(cache_dir),
    )  # fmt: skip
    proc.inputs = len(paths)  # type: ignore[attr-defined]
    return proc


def cli_records(proc: subprocess.Popen) -> tuple[list[dict], str]:
    """A started ``classify``'s records (paths as file names) and stderr."""
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 1), err  # 1: the broken file's error record
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == proc.inputs, err  # type: ignore[attr-defined]
    for r in records:
        r["path"] = Path(r["path"]).name
    return records, err


def same(a: dict, b: dict) -> None:
    """Records equal: the same keys, the same labels, numbers to TOL."""
    assert a.keys() == b.keys(), (a, b)
    for key in a:
        if key == "top_k":
            assert [t["label"] for t in a[key]] == [t["label"] for t in b[key]], (a, b)
            assert np.allclose([t["score"] for t in a[key]], [t["score"] for t in b[key]], atol=TOL, rtol=0)
        elif isinstance(a[key], float):
            assert abs(a[key] - b[key]) <= TOL, (key, a, b)
        else:
            assert a[key] == b[key], (key, a, b)


def form(paths: list[Path], **fields) -> tuple[bytes, dict]:
    parts: list = [("image", (p.name, p.read_bytes())) for p in paths]
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            parts.append((name, str(v).lower() if isinstance(v, bool) else str(v)))
    body, kind = multipart(parts)
    return body, {"Content-Type": kind}


def as_json(paths: list[Path], **fields) -> dict:
    return {"images": [{"data": base64.b64encode(p.read_bytes()).decode(), "name": p.name} for p in paths], **fields}


def classify_multipart(server: Server, paths: list[Path], **fields) -> list[dict]:
    body, head = form(paths, **fields)
    status, _, data = request("POST", server.url + "/v1/classify", body, head)
    assert status == 200, data
    return json.loads(data)["records"]


def test_records_equal_the_clis_in_every_shape(server, pictures, cache_dir):
    expected, stderr = cli_records(cli_start(pictures, "-m", "fashion-mini", "-d", "fashion-mnist",
                                             cache_dir=cache_dir, importtime=True))  # fmt: skip
    assert len(expected) == len(pictures) and "error" in expected[2]
    # the command line never imports the server's packages
    assert "fastapi" not in stderr and "uvicorn" not in stderr and "zeroshot.serve" not in stderr

    answers = {"multipart": classify_multipart(server, pictures, dataset="fashion-mnist")}
    status, _, got = server.post_json("/v1/classify", as_json(pictures, dataset="fashion-mnist"))
    assert status == 200, got
    answers["base64"] = got["records"]
    body, head = form(pictures, dataset="fashion-mnist")
    status, headers, data = request(
        "POST", server.url + "/v1/classify", body, {**head, "Accept": "application/x-ndjson"}
    )
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson"), (status, headers)
    lines = data.decode().splitlines()
    assert len(lines) == len(pictures) and all(line.startswith("{") for line in lines)
    answers["ndjson"] = [json.loads(line) for line in lines]
    for shape, records in answers.items():
        assert [r["path"] for r in records] == [p.name for p in pictures], shape
        for got_record, want in zip(records, expected, strict=True):
            same(got_record, want)
    # the broken file is its error record, worded as the CLI words it; the others are classified
    assert answers["multipart"][2] == {"path": "broken.png", "error": expected[2]["error"]}


def test_options_give_the_clis_records(server, pictures, cache_dir):
    good = [p for p in pictures if p.name != "broken.png"][:4]
    labels = ["trouser", "bag", "ankle boot", "sneaker", "shirt"]
    label_args = [a for label in labels for a in ("--label", label)]
    cases = [
        ({"top_k": 2, "min_score": 0.9}, ["--top-k", "2", "--min-score", "0.9"]),
        ({"multi_label": True, "threshold": 0.3, "top_k": 3}, ["--multi-label", "--threshold", "0.3", "-k", "3"]),
    ]
    started = [cli_start(good, "-m", "fashion-mini", *label_args, *flags, cache_dir=cache_dir) for _, flags in cases]
    for (fields, _), proc in zip(cases, started, strict=True):
        expected, _ = cli_records(proc)
        got = classify_multipart(server, good, labels=labels, **fields)
        status, _, answer = server.post_json("/v1/classify", as_json(good, labels=labels, **fields))
        assert status == 200, answer
        for records in (got, answer["records"]):
            assert len(records) == len(expected)
            for a, b in zip(records, expected, strict=True):
                same(a, b)
    assert any(r["label"] is None for r in classify_multipart(server, good, labels=labels, min_score=0.999999))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"labels": ["a", "b"], "top_k": 0}, '"top_k" must be at least 1, not 0'),
        ({"labels": ["a", "b"], "threshold": 0.4}, '"threshold" applies only with "multi_label"'),
        ({"labels": ["a", "b"], "multi_label": True, "min_score": 0.5}, '"min_score" is for single-label runs'),
        ({"dataset": "no-such-pack"}, "no-such-pack"),
        ({}, 'no labels: give "labels"'),
        ({"labels": ["a"], "classifier": "x"}, '"classifier" goes alone'),
        ({"labels": "cat"}, '"labels" must be a list of strings'),
        ({"labels": ["a", "b"], "color": 1}, "unknown field 'color'"),
    ],
)
def test_refusals_are_one_line_400s(server, pictures, fields, words):
    status, _, got = server.post_json("/v1/classify", as_json(pictures[:1], **fields))
    assert status == 400, got
    assert words in got["error"] and "\n" not in got["error"], got


def test_bad_base64_and_multipart_field_values(server, pictures):
    status, _, got = server.post_json("/v1/classify", {"images": [{"data": "not base64!"}], "labels": ["a", "b"]})
    assert (status, got) == (400, {"error": "images[0].data is not valid base64"})
    body, head = form(pictures[:1], labels=["a", "b"], top_k="five")
    status, _, data = request("POST", server.url + "/v1/classify", body, head)
    assert status == 400 and json.loads(data)["error"] == "\"top_k\" must be a whole number of at least 1, not 'five'"
    # a name-less JSON image is image-N, N its index in the request
    status, _, got = server.post_json("/v1/classify", {"images": [{"data": base64.b64encode(
        pictures[0].read_bytes()).decode()}] * 2, "labels": ["a", "b"]})  # fmt: skip
    assert status == 200 and [r["path"] for r in got["records"]] == ["image-0", "image-1"]


def test_embeddings_reproduce_the_records(server, pictures):
    good = [p for p in pictures if p.name != "broken.png"][:3]
    labels, template = ["bag", "sneaker", "dress"], "a photo of a {label}."
    records = classify_multipart(server, good, labels=labels, templates=[template], top_k=3)
    status, models = server.get_json("/v1/models")
    assert status == 200 and models["model"] == "fashion-mini" and models["embed_dim"] == 128
    status, _, texts = server.post_json("/v1/embeddings/texts", {"texts": [template.format(label=x) for x in labels]})
    assert status == 200 and texts["dim"] == 128 and len(texts["embeddings"]) == 3
    weights = np.array(texts["embeddings"])
    body, head = form(good + [pictures[2]])
    status, _, data = request("POST", server.url + "/v1/embeddings/images", body, head)
    assert status == 200, data
    answer = json.loads(data)
    assert answer["embeddings"][-1] == {"path": "broken.png", "error": answer["embeddings"][-1]["error"]}
    feats = np.array([e["embedding"] for e in answer["embeddings"][:-1]])
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    assert np.allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-6)
    logits = models["logit_scale"] * feats @ weights.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, record in zip(probs, records, strict=True):
        for ranked in record["top_k"]:
            assert abs(row[labels.index(ranked["label"])] - ranked["score"]) < 1e-5, (row, record)
    # base64: the same numbers as little-endian float32
    status, _, b64 = server.post_json("/v1/embeddings/images", {**as_json(good[:1]), "encoding": "base64"})
    assert status == 200
    decoded = np.frombuffer(base64.b64decode(b64["embeddings"][0]["embedding"]), "<f4")
    assert np.array_equal(decoded, np.array(feats[0], dtype=np.float32))


def test_a_classifier_file_by_id_or_digest(server, pictures, classifier_file):
    import hashlib

    digest = hashlib.sha256(classifier_file.read_bytes()).hexdigest()
    status, models = server.get_json("/v1/models")
    assert status == 200
    assert models["classifiers"] == [
        {"id": "fashion-pack", "digest": digest, "classes": models["classifiers"][0]["classes"]}
    ]
    assert len(models["classifiers"][0]["classes"]) == 10 and models["classifiers"][0]["classes"][0] == "t-shirt/top"
    good = [p for p in pictures if p.name != "broken.png"][:3]
    by_pack = classify_multipart(server, good, dataset="fashion-mnist")
    for key in ("fashion-pack", digest[:12], digest):
        for a, b in zip(classify_multipart(server, good, classifier=key), by_pack, strict=True):
            same(a, b)
    status, _, got = server.post_json("/v1/classify", as_json(good, classifier="nope"))
    assert status == 400 and got["error"] == "unknown \"classifier\": 'nope'; known ones are fashion-pack", got


# --- a real architecture: a random-weights ViT-B-32 checkpoint file --------------------------------


@pytest.fixture(scope="module")
def vit_b_32(tmp_path_factory) -> Path:
    """A random-weights ViT-B-32 saved as a plain state_dict (as conftest's ``checkpoint`` does)."""
    import open_clip
    import torch

    torch.manual_seed(4321)
    model = open_clip.create_model("ViT-B-32")
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    path = tmp_path_factory.mktemp("vit-b-32") / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return path


def test_vit_b_32_records_equal_the_clis(vit_b_32, pictures, tmp_path_factory, image_dir):
    cache = tmp_path_factory.mktemp("serve-vit-cache")
    paths = sorted(image_dir.iterdir())[:4] + [pictures[0], pictures[2]]
    labels = ["a red thing", "a blue thing", "stripes", "a face"]
    templates = ["a photo of {label}.", "{label}"]  # two templates: the ensemble's mean, and a short text side
    (cache / "t.yaml").write_text(json.dumps(templates))
    cli = cli_start(paths, "-m", "ViT-B-32", "-p", str(vit_b_32), *[a for x in labels for a in ("--label", x)],
                    "-t", str(cache / "t.yaml"), "-k", "3", cache_dir=cache)  # fmt: skip
    with Server("-m", "ViT-B-32", "-p", str(vit_b_32), "--max-wait-ms", "20", env=server_env(cache),
                wait_ready=False) as s:  # fmt: skip
        expected, _ = cli_records(cli)  # meanwhile the server loads
        s.wait_ready()
        body, head = form(paths, labels=labels, templates=templates, top_k=3)
        status, _, data = request("POST", s.url + "/v1/classify", body, {**head, "Accept": "application/x-ndjson"})
        assert status == 200, data
        streamed = [json.loads(line) for line in data.decode().splitlines()]
        status, _, got = s.post_json("/v1/classify", as_json(paths, labels=labels, templates=templates, top_k=3))
        assert status == 200, got
        assert s.stop() == 0, s.stderr()
    for records in (streamed, got["records"]):
        assert [r["path"] for r in records] == [p.name for p in paths]
        for a, b in zip(records, expected, strict=True):
            same(a, b)
    assert "error" in expected[-1] and "error" not in expected[0]


def test_serve_help_lists_the_knobs_without_importing_the_server():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "zeroshot", "serve", "--help"],
        capture_output=True, text=True, env=server_env("/nonexistent"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    knobs = ["--max-batch", "--max-wait-ms", "--max-queue", "--max-body-bytes", "--api-key", "--drain-timeout",
             "--allow-urls", "--cors-origin", "--classifier", "--text-cache", "--runtime", "--max-pixels"]  # fmt: skip
    assert [k for k in knobs if k not in done.stdout] == []
    assert "fastapi" not in done.stderr and "uvicorn" not in done.stderr
