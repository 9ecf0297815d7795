"""The fast decoding paths give the numbers of open_clip's own preprocessing.

- uint8 pixels from worker processes + normalization on the device == the open_clip transform,
  bit for bit, for every image shape and mode;
- process, thread and in-process decoding give identical records, errors included;
- a worker process that dies costs exactly one error record;
- the batched (nvJPEG on CUDA) decoder, run here on the CPU, matches Pillow's pixels closely,
  EXIF orientation included, and falls back to Pillow for what it cannot take;
- JPEG draft mode is opt-in and never shrinks below the model's input size.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from zeroshot import resolve_prompt_set
from zeroshot.image.decoding import (
    FileDecoder,
    Jpeg,
    SquashPilStage,
    StandardPilStage,
    processes_usable,
    split_preprocess,
    to_model_input,
)
from zeroshot.image.images import Input, open_image
from zeroshot.image.streams import decode_stream
from zeroshot.image.tensordecode import BatchJpegDecoder, orient
from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.text.classifier import get_text_classifier
from zeroshot.towers.pipeline import DecodeOptions
from zeroshot.uses.records import classify_inputs

from .conftest import make_image

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def transforms():
    yield "shortest-bicubic", open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    yield "fashion-mini", load_model(resolve_spec(BUNDLED_NAME)).preprocess
    yield "bilinear-160", open_clip.image_transform(160, is_train=False, interpolation="bilinear")
    yield "squash", open_clip.image_transform(224, is_train=False, resize_mode="squash")
    yield "longest", open_clip.image_transform(224, is_train=False, resize_mode="longest")


def images():
    rng = np.random.default_rng(0)
    for size in [(640, 480), (480, 640), (224, 224), (225, 224), (1, 1), (300, 17), (17, 300), (999, 601)]:
        yield f"rgb{size}", Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    base = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    for mode in ["L", "LA", "RGBA", "P", "1", "CMYK", "I;16"]:
        yield mode, base.convert(mode)
    pal = base.convert("P")
    pal.info["transparency"] = 3
    yield "P+transparency", pal


@pytest.mark.parametrize("name,preprocess", list(transforms()), ids=lambda x: x if isinstance(x, str) else "")
def test_uint8_split_equals_open_clip_transform(name, preprocess):
    split = split_preprocess(preprocess)
    assert split is not None
    assert isinstance(split.pil_stage, StandardPilStage) == (name not in ("squash", "longest"))
    assert isinstance(split.pil_stage, SquashPilStage) == (name == "squash")  # Pillow alone, too
    decoder = FileDecoder(preprocess, split)
    for label, image in images():
        buf = io.BytesIO()
        image.save(buf, format="PNG" if image.mode != "CMYK" else "TIFF")
        data = buf.getvalue()
        expected = preprocess(open_image(io.BytesIO(data)))
        pixels = decoder.decode_bytes(data)
        assert pixels.dtype == np.uint8
        got = to_model_input(pixels[None], split, "cpu", torch.float32)[0]
        assert got.shape == expected.shape, label
        assert torch.equal(got, expected), f"{name} / {label}"


def test_only_pillow_only_stages_go_to_processes():
    standard = FileDecoder(None, split_preprocess(open_clip.image_transform(224, is_train=False)))
    squash = FileDecoder(None, split_preprocess(open_clip.image_transform(224, is_train=False, resize_mode="squash")))
    other = FileDecoder(None, split_preprocess(open_clip.image_transform(224, is_train=False, resize_mode="longest")))
    assert (
        processes_usable(standard) == processes_usable(squash) == (os.name == "posix" and os.uname().sysname == "Linux")
    )
    assert not processes_usable(other)  # torchvision objects would need torch in a forked child


@pytest.fixture(scope="module")
def vit_text(vit):
    loaded = vit
    text = get_text_classifier(
        loaded.spec, resolve_prompt_set(labels=["red", "green", "blue", "grey"]), lambda: loaded, use_cache=False
    )
    return loaded, text


def with_orientation(image: Image.Image, orientation: int, path, fmt="JPEG", quality=92):
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format=fmt, exif=exif.tobytes(), **({"quality": quality} if fmt == "JPEG" else {}))
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Good JPEGs (sizes, orientations, greyscale, CMYK), other formats, and bad inputs."""
    folder = tmp_path_factory.mktemp("mixed")
    paths = []
    for i, size in enumerate([(640, 480), (640, 480), (480, 640), (300, 200), (97, 131)]):
        paths.append(make_image(folder / f"j{i}.jpg", 10 + i, size))
    for o in range(1, 9):
        im = Image.open(make_image(folder / f"base{o}.png", 30 + o, (320, 200)))
        paths.append(with_orientation(im.convert("RGB"), o, folder / f"o{o}.jpg"))
    paths.append(make_image(folder / "grey.jpg", 40, (256, 300), mode="L"))
    paths.append(make_image(folder / "cmyk.jpg", 41, (200, 260), mode="CMYK"))
    paths.append(make_image(folder / "p.png", 42, (150, 150)))
    (folder / "truncated.jpg").write_bytes((folder / "j0.jpg").read_bytes()[:500])
    (folder / "text.jpg").write_text("not a jpeg")
    paths += [folder / "truncated.jpg", folder / "text.jpg", folder / "missing.jpg"]
    return [str(p) for p in paths]


def run(vit_text, paths, **opts):
    loaded, text = vit_text
    inputs = [Input(p) if os.path.lexists(p) else Input(p, error="no such file") for p in paths]
    return list(classify_inputs(loaded, text, inputs, batch_size=4, options=DecodeOptions(**opts)))


def test_process_thread_and_inline_decoding_agree_exactly(vit_text, mixed):
    ref = run(vit_text, mixed, workers=0)
    assert [r["path"] for r in ref] == mixed
    assert sum("error" in r for r in ref) == 3
    for opts in [dict(workers=2, worker_kind="process"), dict(workers=2, worker_kind="thread"), dict(workers=1)]:
        assert run(vit_text, mixed, **opts) == ref, opts


def test_records_equal_plain_open_clip_preprocessing(vit_text, mixed):
    loaded, text = vit_text
    good = [r for r in run(vit_text, mixed, workers=2) if "error" not in r]
    batch = torch.stack([loaded.preprocess(open_image(r["path"])) for r in good])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(loaded.model.encode_image(batch), dim=-1)
        probs = (loaded.logit_scale * feats @ text.tensor().T).softmax(dim=-1)
    for r, p in zip(good, probs, strict=True):
        assert abs(r["score"] - float(p.max())) < 1e-6


def _die_on_boom(item):
    if item.startswith("boom"):
        os._exit(3)
    return item.upper(), None


def _die_on_boom_many(items):
    return [_die_on_boom(item) for item in items]


@pytest.mark.parametrize("chunk", [1, 3])
def test_a_crashing_worker_costs_only_its_own_record(chunk):
    ctx = mp.get_context("fork")
    items = ["a", "b", "boom1", "c", "d", "e", "f", "boom2", "g"]
    out = list(
        decode_stream(
            items, _die_on_boom, 2, 4, pool_factory=lambda: ProcessPoolExecutor(2, mp_context=ctx),
            remote=_die_on_boom_many, chunk=chunk,
        )
    )  # fmt: skip
    assert [o[0] for o in out] == items
    assert [o[1] for o in out] == ["A", "B", None, "C", "D", "E", "F", None, "G"]
    assert out[2][2] == out[7][2] == "the image decoder crashed on this file"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tensor_orientation_matches_pillow(orientation, tmp_path):
    rng = np.random.default_rng(orientation)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = with_orientation(Image.fromarray(arr), orientation, tmp_path / "o.png", fmt="PNG")
    expected = np.asarray(open_image(str(path)))
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_batched_decoder_pixels_close_to_pillow(mixed):
    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    assert split is not None and isinstance(split.pil_stage, StandardPilStage)
    pillow = FileDecoder(None, split)
    raw = FileDecoder(None, split, raw_jpeg=True)
    batched = BatchJpegDecoder(split.pil_stage, "cpu")
    jpegs, refs = [], []
    for p in mixed:
        if not os.path.exists(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        try:
            ref = pillow.decode_bytes(data)
        except Exception:
            continue
        payload = raw.decode_bytes(data)
        if os.path.basename(p) in ("cmyk.jpg", "p.png"):
            assert not isinstance(payload, Jpeg)  # left to Pillow
            continue
        assert isinstance(payload, Jpeg), p
        jpegs.append(payload)
        refs.append(ref)
    out = batched(jpegs)
    assert len(out) == len(refs) >= 14
    for got, ref in zip(out, refs, strict=True):
        diff = np.abs(got.numpy().astype(int) - ref.astype(int))
        assert got.shape == ref.shape == (224, 224, 3)
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8  # a wrong orientation or crop is ~60 off


def test_batched_decoder_scores_close_to_pillow(vit_text, mixed):
    """As close as the README says (every probability within 2.0e-3, the same top-1), and not equal:
    a batched decoder that quietly fell back to Pillow would pass the tolerance without the check."""
    pillow = run(vit_text, mixed, workers=1, decoder="pillow")
    batched = run(vit_text, mixed, workers=1, decoder="batched")
    assert [r["path"] for r in batched] == mixed
    worst = 0.0
    for a, b in zip(pillow, batched, strict=True):
        assert ("error" in a) == ("error" in b)
        if "error" not in a:
            assert a["label"] == b["label"]
            mine = {t["label"]: t["score"] for t in b["top_k"]}
            worst = max(worst, *(abs(t["score"] - mine[t["label"]]) for t in a["top_k"]))
    assert 0 < worst <= 2.0e-3, worst


def test_jpeg_draft_is_opt_in_and_keeps_the_input_size(tmp_path):
    big = make_image(tmp_path / "big.jpg", 1, (2000, 1500))
    png = make_image(tmp_path / "big.png", 1, (2000, 1500))
    assert open_image(str(big)).size == (2000, 1500)
    assert open_image(str(big), draft=224).size == (500, 375)  # /4: /8 would go below 224
    assert open_image(str(png), draft=224).size == (2000, 1500)  # only JPEG decoders can draft
    split = split_preprocess(open_clip.image_transform(224, is_train=False))
    data = big.read_bytes()
    exact = FileDecoder(None, split).decode_bytes(data)
    drafted = FileDecoder(None, split, jpeg_draft=True).decode_bytes(data)
    assert exact.shape == drafted.shape == (224, 224, 3)
    assert not np.array_equal(exact, drafted)
    assert np.abs(exact.astype(int) - drafted.astype(int)).mean() < 3
