"""Images held in memory (PIL images, encoded bytes, numpy arrays) through the library: the same
decoding, caps and records as the same bytes in a file given to the installed console script; the
text side as labels, a pack or templates; the embeddings records are scored from."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zeroshot
from zeroshot.model.models import BUNDLED_NAME

from .conftest import ARCH, ZEROSHOT

LABELS = ["t-shirt", "trouser", "bag", "sandal", "ankle boot"]
COUNT = 6
BIG = 4000  # --max-bytes for the cap test: a Fashion-MNIST PNG is under it, the big one over


@pytest.fixture(scope="module")
def pictures(fashion_mnist, tmp_path_factory) -> list[Path]:
    """Fashion-MNIST test images as PNG files (grey), and one of them as an RGBA PNG."""
    from zeroshot.image.idx import load_split

    images, _ = load_split(fashion_mnist, "test")
    folder = tmp_path_factory.mktemp("fashion")
    paths = []
    for i in range(COUNT - 1):
        paths.append(folder / f"f{i}.png")
        Image.fromarray(images[i * 7]).save(paths[-1])
    rgba = np.dstack([np.repeat(images[3][:, :, None], 3, axis=2), np.full((28, 28), 200, np.uint8)])
    paths.append(folder / "rgba.png")
    Image.fromarray(rgba).save(paths[-1])
    return paths


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb() -> bytes:
    """A PNG's signature and header declaring 100,000 x 100,000 pixels, then nothing."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def big_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "PNG")
    assert len(out.getvalue()) > BIG
    return out.getvalue()


def cli_records(model: list[str], files: list[Path], *extra: str) -> list[dict]:
    """The installed console script's records for ``files``, in a fresh process."""
    done = subprocess.run(
        [ZEROSHOT, "classify", *map(str, files), *model, "--device", "cpu", "--workers", "0", "-q", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def assert_same(mine: list[dict], theirs: list[dict], paths: list[str] | None = None) -> None:
    """Records equal, scores to 1e-6; ``paths`` the records' own (else the reference's)."""
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a["path"] == (paths[i] if paths is not None else b["path"])
        assert a.keys() == b.keys(), (a, b)
        if "error" in b:
            assert a["error"] == b["error"]
            continue
        assert a["label"] == b["label"] and [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert [t["score"] for t in a["top_k"]] == pytest.approx([t["score"] for t in b["top_k"]], abs=1e-6)


def label_args() -> list[str]:
    return [arg for label in LABELS for arg in ("--label", label)]


@pytest.fixture(scope="module", params=["fashion-mini", ARCH])
def model(request, checkpoint, tmp_path_factory) -> tuple[list[str], zeroshot.Zeroshot]:
    """The CLI's model options and the library's model: the bundled model, and a random-weights
    checkpoint of a real architecture (loaded with a cache folder of its own, as each test has)."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("ZEROSHOT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        if request.param == "fashion-mini":
            return ["-m", BUNDLED_NAME], zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
        return ["-m", ARCH, "-p", str(checkpoint)], zeroshot.Zeroshot(model=ARCH, pretrained=str(checkpoint),
                                                                      device="cpu")  # fmt: skip


def test_in_memory_images_give_the_clis_records_for_the_same_files(model, pictures):
    args, clf = model
    reference = cli_records(args, pictures, *label_args(), "-k", "5")
    kinds = {
        "pil": [Image.open(p) for p in pictures],
        "bytes": [p.read_bytes() for p in pictures],
        "bytearray": [bytearray(p.read_bytes()) for p in pictures],
        "memoryview": [memoryview(p.read_bytes()) for p in pictures],
        "numpy": [np.array(Image.open(p)) for p in pictures],  # HxW grey, and HxWx4 for the RGBA one
    }
    assert kinds["numpy"][0].shape == (28, 28) and kinds["numpy"][-1].shape == (28, 28, 4)
    default_names = [f"image-{i}" for i in range(COUNT)]
    for kind, images in kinds.items():
        workers = 2 if kind in ("pil", "numpy") else 0  # forked decoding workers: the inputs pickle
        assert_same(list(clf.classify(images, labels=LABELS, workers=workers)), reference, default_names)
    # Paths and images in memory mixed: one record each, in order; names for the in-memory ones.
    mixed = [str(pictures[0]), kinds["pil"][1], kinds["bytes"][2], kinds["numpy"][3], pictures[4], kinds["pil"][5]]
    names = [None, "one.png", "two.png", None, None, None]
    got = list(clf.classify(mixed, labels=LABELS, names=names, workers=1))
    assert_same(got, reference, [str(pictures[0]), "one.png", "two.png", "image-3", str(pictures[4]), "image-5"])
    # One image alone is one input (an array is never its rows, bytes never a path).
    assert_same(list(clf.classify(kinds["numpy"][0], labels=LABELS, workers=0)), reference[:1], ["image-0"])
    assert_same(list(clf.classify(kinds["bytes"][1], labels=LABELS, workers=0)), reference[1:2], ["image-0"])
    # labels= is the positional list of labels.
    files = [str(p) for p in pictures]
    assert list(clf.classify(files, labels=LABELS, workers=0)) == list(clf.classify(files, LABELS, workers=0))


def test_the_text_side_as_the_clis_options(pictures, tmp_path):
    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    args = ["-m", BUNDLED_NAME]
    images = [p.read_bytes() for p in pictures]
    names = [p.name for p in pictures]
    # dataset= is the pack by name (as text, which test_library.py holds to --dataset); with labels,
    # --dataset with --label: the pack's templates over those labels.
    assert list(clf.classify(images, dataset="fashion-mnist", workers=0)) == list(
        clf.classify(images, "fashion-mnist", workers=0)
    )
    assert_same(list(clf.classify(images, dataset="fashion-mnist", labels=LABELS[:3], names=names, workers=0)),
                cli_records(args, pictures, "--dataset", "fashion-mnist", *label_args()[:6]), names)  # fmt: skip
    # templates= as a file is --templates; as a list, the same templates.
    templates = ["a photo of a {label}.", "a blurry picture of the {label}."]
    yaml = tmp_path / "templates.yaml"
    yaml.write_text("templates:\n" + "".join(f'  - "{t}"\n' for t in templates), encoding="utf-8")
    reference = cli_records(args, pictures, *label_args(), "--templates", str(yaml))
    assert_same(list(clf.classify(images, labels=LABELS, templates=yaml, names=names, workers=0)), reference, names)
    assert_same(list(clf.classify(images, labels=LABELS, templates=templates, names=names, workers=0)), reference,
                names)  # fmt: skip
    # Refusals, at the call: both text and labels, a string for labels, a template without {label}.
    with pytest.raises(zeroshot.UsageError, match=r"give text or labels / dataset, not both"):
        clf.classify(images, LABELS, labels=LABELS, dataset="fashion-mnist")
    with pytest.raises(zeroshot.UsageError, match="labels must be a list of labels, not one string"):
        clf.classify(images, labels="bag")
    with pytest.raises(zeroshot.PromptError, match=r"templates: template #1 'a photo' has no \{label\} placeholder"):
        clf.classify(images, labels=LABELS, templates=["a photo"])
    with pytest.raises(zeroshot.PromptError, match="no classes: give labels"):
        clf.classify(images, templates=templates)
    with pytest.raises(TypeError, match="text must be labels"):
        clf.classify(images)
    with pytest.raises(TypeError, match="each image must be a path, encoded bytes, a PIL image or a numpy array"):
        list(clf.classify([images[0], 3.5], labels=LABELS, workers=0))
    with pytest.raises(zeroshot.UsageError, match="names has 1 entries for 6 images"):
        clf.classify(images, labels=LABELS, names=["a"])


def test_hostile_images_in_memory_are_one_error_record_each(pictures, tmp_path):
    """Each bad image is its own one-line error record, the same as its bytes in a file get from
    the console script; the good images among them are classified as ever."""
    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    good = pictures[0].read_bytes()
    hostile = {"empty.png": b"", "truncated.png": good[: len(good) // 2], "text.png": b"not an image at all\n",
               "bomb.png": bomb(), "big.png": big_png()}  # fmt: skip
    files = []
    for name, data in hostile.items():
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    reference = cli_records(["-m", BUNDLED_NAME], [pictures[0], *files, pictures[1]], *label_args(),
                            "--max-bytes", str(BIG))  # fmt: skip
    assert [("error" in r) for r in reference] == [False, True, True, True, True, True, False]
    lazy = Image.open(io.BytesIO(hostile["truncated.png"]))  # opened, never loaded: it breaks on loading
    images = [good, *hostile.values(), pictures[1].read_bytes(), lazy, np.zeros((8, 8, 3), np.float64),
              np.zeros((8, 8, 5), np.uint8), np.zeros((0, 8), np.uint8)]  # fmt: skip
    names = ["good", *hostile, "good-too", "lazy", "float", "five", "empty-array"]
    for workers in (0, 2):
        got = list(clf.classify(images, labels=LABELS, names=names, workers=workers, max_bytes=BIG))
        assert [r["path"] for r in got] == names
        assert_same(got[:5] + got[6:7], reference[:5] + reference[6:], names[:5] + names[6:7])
        assert got[5] == {
            "path": "big.png",
            "error": f"too large: {len(hostile['big.png']):,} bytes, over the max_bytes limit of {BIG:,}",
        }
        assert got[7] == {"path": "lazy", "error": reference[2]["error"]}  # the truncated PNG's own message
        assert got[8]["error"] == ("unsupported array: float64 of shape (8, 8, 3) (give uint8 HxW grey, HxWx3 RGB or "
                                   "HxWx4 RGBA)")  # fmt: skip
        assert got[9]["error"].startswith("unsupported array: uint8 of shape (8, 8, 5)")
        assert got[10] == {"path": "empty-array", "error": "empty image (8x0 pixels)"}
    assert reference[4]["error"].startswith("refused: 100000x100000 is 10,000,000,000 pixels")
    # The pixel cap holds for arrays and PIL images too, checked on their size.
    capped = list(clf.classify([np.zeros((30, 30), np.uint8), Image.new("RGB", (30, 30))], labels=LABELS,
                               workers=0, max_pixels=899))  # fmt: skip
    assert [r["error"] for r in capped] == ["refused: 30x30 is 900 pixels, over the --max-pixels limit of 899"] * 2


def test_embeddings_are_what_the_records_are_scored_from(model, pictures):
    _, clf = model
    images = [Image.open(pictures[0]), pictures[1].read_bytes(), str(pictures[2]), b"\x89PNG broken",
              np.array(Image.open(pictures[3]))]  # fmt: skip
    records = list(clf.classify(images, labels=LABELS, top_k=len(LABELS), workers=0))
    entries = list(clf.embed_images(images, names=["a", None, None, None, None], workers=0))
    assert [e["path"] for e in entries] == ["a", "image-1", str(pictures[2]), "image-3", "image-4"]
    assert entries[3] == {"path": "image-3", "error": records[3]["error"]}
    text = clf.text_classifier(zeroshot.resolve_prompt_set(labels=LABELS))
    for entry, record in zip(entries, records, strict=True):
        if "error" in record:
            continue
        vector = entry["embedding"]
        assert vector.dtype == np.float32 and vector.shape == (text.weights.shape[1],)
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-6)
        logits = clf.loaded.logit_scale * (vector.astype(np.float64) @ text.weights.T.astype(np.float64))
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        scores = {t["label"]: t["score"] for t in record["top_k"]}
        assert probs.tolist() == pytest.approx([scores[label] for label in LABELS], abs=1e-6)

    # Raw texts: one template's prompt set is its prompts' embeddings, each of unit length.
    template = "a photo of a {label}."
    one = clf.text_classifier(zeroshot.resolve_prompt_set(labels=LABELS).with_templates((template,)))
    texts = clf.embed_texts([template.format(label=label) for label in LABELS])
    assert texts.dtype == np.float32 and texts.shape == one.weights.shape
    assert np.abs(texts - one.weights).max() < 1e-5
    assert np.abs(np.linalg.norm(texts, axis=1) - 1).max() < 1e-6
    assert clf.embed_texts([]).shape == (0, one.weights.shape[1])
    with pytest.raises(TypeError, match="texts must be a list of strings, not one string"):
        clf.embed_texts("a photo")


def test_bytes_in_memory_share_the_image_cache_with_files_and_pixels_do_not(pictures, tmp_path, monkeypatch):
    from zeroshot.image.imagecache import ImageEmbeddingCache

    clf = zeroshot.Zeroshot(model=BUNDLED_NAME, device="cpu")
    cache = ImageEmbeddingCache("memory-test", clf.loaded.embed_dim, tmp_path / "images.sqlite")
    files = [str(p) for p in pictures[:3]]
    first = list(clf.classify(files, labels=LABELS, image_cache=cache, workers=0))
    stored = cache._conn().execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    assert stored == 3
    # The same bytes in memory are answered by the cache: no decoding (a broken decoder shows it).
    from zeroshot.image import decoding

    with monkeypatch.context() as patched:
        patched.setattr(decoding.FileDecoder, "decode_bytes", lambda self, data: pytest.fail("decoded"))
        again = list(clf.classify([p.read_bytes() for p in pictures[:3]], labels=LABELS, image_cache=cache,
                                  names=files, workers=0))  # fmt: skip
    assert again == first
    # New bytes are stored; a PIL image or an array is classified, never stored (no bytes to key on).
    list(clf.classify([pictures[3].read_bytes(), Image.open(pictures[4]), np.array(Image.open(pictures[5]))],
                      labels=LABELS, image_cache=cache, workers=0))  # fmt: skip
    assert cache._conn().execute("SELECT COUNT(*) FROM emb").fetchone()[0] == 4
    cache.close()


def test_the_local_engine_runs_without_the_clis_display(pictures, tmp_path, capfd):
    """``classify``'s local engine lives below the faces (:mod:`zeroshot.engines.local`): run with no
    display of its own, it writes the records the console script prints, the manifest beside them,
    and says nothing on stderr."""
    from zeroshot.assembly import ModelChoice
    from zeroshot.engines.local import ClassifyRun, classify_locally
    from zeroshot.towers.pipeline import DecodeOptions

    out = tmp_path / "records.jsonl"
    run = ClassifyRun(
        inputs=[str(p) for p in pictures], choice=ModelChoice(BUNDLED_NAME, device="cpu"),
        prompt_set=zeroshot.resolve_prompt_set(labels=LABELS), classifier_file=None, multi_label=None,
        decode=DecodeOptions(workers=0), top_k=5, batch_size=None, min_score=None, fmt="jsonl", output=out,
        report=None, manifest=None, cache_images=False, use_cache=True, quiet=False, null=False, ray=None,
    )  # fmt: skip
    tally = classify_locally(run)
    assert (tally.inputs, tally.failed) == (COUNT, 0)
    assert capfd.readouterr() == ("", "")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert_same(written, cli_records(["-m", BUNDLED_NAME], pictures, *label_args()))
    assert json.loads((tmp_path / "records.jsonl.manifest.json").read_text())["records"] == COUNT
