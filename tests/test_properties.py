"""Property-based tests: the labels and pack parsers and the image decoder on arbitrary input.

Whatever the bytes, each either returns a valid result or raises its one-line error type; nothing
else escapes. Bounded example counts keep CI fast.
"""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zeroshot.base.errors import PromptError
from zeroshot.image.decoding import FileDecoder, split_preprocess
from zeroshot.image.images import ImageError
from zeroshot.text.prompts import MAX_LABEL_CHARS, PLACEHOLDER, load_pack_file, read_labels_file

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=300).map(lambda t: t.encode("utf-8"))))
def test_labels_file_parser(tmp_path, data):
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    try:
        labels = read_labels_file(path)
    except PromptError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert labels
    for label in labels:
        assert label == label.strip() and label and not label.startswith("#")
        assert len(label) <= MAX_LABEL_CHARS and "\n" not in label


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.just("a photo of a {label}."),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
pack_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=10),
        "classes": st.lists(st.text(max_size=12), max_size=5) | yaml_values,
        "templates": st.lists(st.sampled_from(["a {label}", "{label}", "no placeholder", ""]), max_size=4)
        | yaml_values,
        "description": st.text(max_size=10),
    },
)


@SETTINGS
@given(doc=st.one_of(pack_like.map(yaml.safe_dump), yaml_values.map(yaml.safe_dump), st.text(max_size=200)))
def test_pack_parser(tmp_path, doc):
    path = tmp_path / "pack.yaml"
    path.write_text(doc, encoding="utf-8")
    try:
        pack = load_pack_file(path)
    except PromptError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    assert pack.classes and pack.templates
    assert len(set(pack.classes)) == len(pack.classes)
    assert all(PLACEHOLDER in t for t in pack.templates)


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for fmt in ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


VALID = _valid_images()
DECODER = FileDecoder(None, split_preprocess(open_clip.image_transform(32, is_train=False)), max_pixels=10_000_000)


@st.composite
def mangled_images(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)])


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), mangled_images()))
def test_image_decoder_never_escapes(data):
    try:
        pixels = DECODER.decode_bytes(data)
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
