"""Two image transforms are the same when they do the same thing: the same steps with the same
parameters, and equal tensors from the same pictures (odd sizes, portrait and landscape, a single
pixel, alpha, greyscale, a palette, CMYK, bilevel). A transform's repr() can match while it does
something else (a step's own subclass, a parameter its repr leaves out)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# (width, height): a single pixel, odd sizes either way round, one below and one above a 224 crop,
# extreme thin strips (the resize makes one side tiny), and a 28-pixel square (fashion-mini's size).
SIZES = [(1, 1), (3, 5), (28, 28), (29, 17), (17, 29), (223, 225), (300, 151), (151, 300), (640, 7), (7, 640)]
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16"]


def pictures() -> list[Image.Image]:
    """Deterministic pictures with structure (gradients and noise) in every size and every mode."""
    rng = np.random.default_rng(7)
    out = []
    for i, (w, h) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 7 + yy * 13) % 256], axis=-1)
        rgb = np.clip(rgb + rng.integers(-30, 30, rgb.shape), 0, 255).astype(np.uint8)
        base = Image.fromarray(rgb, "RGB")
        mode = MODES[i % len(MODES)]
        out.append(base)
        if mode == "RGBA":  # half transparent, so that dropping or keeping alpha shows
            alpha = Image.fromarray((xx * 255 // max(w - 1, 1)).astype(np.uint8), "L")
            out.append(Image.merge("RGBA", (*base.split(), alpha)))
        elif mode == "I;16":
            out.append(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
        elif mode != "RGB":
            out.append(base.convert(mode))
    return out


def steps(transform: Any) -> list[tuple[type, dict[str, Any]]]:
    """Each step's type and its parameters (public attributes, lists as tuples), in order."""
    out = []
    for step in getattr(transform, "transforms", [transform]):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(step).items() if not k.startswith("_")}
        params.pop("training", None)  # torch.nn.Module's train/eval flag: no effect on a transform
        out.append((type(step), params))
    return out


def assert_same_preprocessing(ours: Any, reference: Any) -> None:
    """The same steps with the same parameters, and bit-for-bit the same tensors on :func:`pictures`."""
    assert steps(ours) == steps(reference)
    for picture in pictures():
        a, b = ours(picture), reference(picture)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, (picture.mode, picture.size)
        assert torch.equal(a, b), (picture.mode, picture.size, (a - b).abs().max())


def test_the_pictures_cover_every_mode_and_shape():
    got = pictures()
    assert {p.mode for p in got} == set(MODES)
    assert {p.size for p in got} == set(SIZES)
    assert any(w < h for w, h in SIZES) and any(w > h for w, h in SIZES)


def test_a_transform_that_differs_is_told_apart_even_under_the_same_repr():
    import open_clip
    from torchvision import transforms as T

    reference = open_clip.image_transform(28, is_train=False)
    assert_same_preprocessing(open_clip.image_transform(28, is_train=False), reference)

    class QuietNormalize(T.Normalize):  # the repr of a Normalize, but it normalizes twice
        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            return super().forward(super().forward(tensor))

    other = T.Compose([*reference.transforms[:-1], QuietNormalize(reference.transforms[-1].mean,
                                                                  reference.transforms[-1].std)])  # fmt: skip
    other.transforms[-1].__class__.__name__ = "Normalize"
    assert repr(other) == repr(reference)  # what the old check compared
    with pytest.raises(AssertionError):
        assert_same_preprocessing(other, reference)
    bilinear = open_clip.image_transform(28, is_train=False, interpolation="bilinear")
    with pytest.raises(AssertionError):
        assert_same_preprocessing(bilinear, reference)
    # Steps equal but the mean given as a list: the same transform (steps() reads lists as tuples).
    as_list = open_clip.image_transform(28, is_train=False)
    as_list.transforms[-1].mean = list(as_list.transforms[-1].mean)
    assert_same_preprocessing(as_list, reference)
