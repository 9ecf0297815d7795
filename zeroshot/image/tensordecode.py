"""Batched JPEG decoding and resizing as tensors: nvJPEG on CUDA, the same code on the CPU.

On a GPU box, Pillow in CPU workers cannot keep up with the model; this decodes a whole batch of
JPEGs with torchvision's ``decode_jpeg`` (a list on ``device="cuda"`` goes to nvJPEG in one call),
applies EXIF orientation, and resizes each group of same-sized images in one antialiased call, then
center-crops, all on the device. It reproduces the model's ``Resize(n)`` + ``CenterCrop`` +
RGB steps (see :class:`~zeroshot.image.decoding.StandardPilStage`) closely but not bit for bit (a
different JPEG decoder and resampler): docs/guides/gpus.md states the measured score difference.
Anything it cannot take comes back as None and goes through Pillow instead.
"""

from __future__ import annotations

from typing import Any

from .decoding import Jpeg, StandardPilStage


def orient(image: Any, orientation: int) -> Any:
    """Apply an EXIF orientation (1-8) to a [C, H, W] tensor, as Pillow's ``exif_transpose`` does."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


class BatchJpegDecoder:
    """Decodes a list of :class:`Jpeg` into uint8 [crop_h, crop_w, 3] tensors on ``device``."""

    def __init__(self, stage: StandardPilStage, device: Any) -> None:
        self.stage = stage
        self.device = device

    def decode(self, jpegs: list[Jpeg]) -> list[Any]:
        """Decoded RGB [3, H, W] uint8 tensors on the device (None where the decoder refused one)."""
        import warnings

        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        datas = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
                return list(out) if isinstance(out, (list, tuple)) else [out]
            except Exception:  # one bad file fails the whole call: retry one by one
                pass
            images: list[Any] = []
            for d in datas:
                try:
                    images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except Exception:
                    images.append(None)
            return images

    def __call__(self, jpegs: list[Jpeg]) -> list[Any]:
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        decoded = self.decode(jpegs)
        images: list[Any] = [
            None if im is None else orient(im, j.orientation) for im, j in zip(decoded, jpegs, strict=True)
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if im is not None:
                groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        mode = InterpolationMode.BICUBIC if self.stage.interpolation == "bicubic" else InterpolationMode.BILINEAR
        ch, cw = self.stage.crop
        result: list[Any] = [None] * len(jpegs)
        for (h, w), idx in groups.items():
            batch = torch.stack([images[i] for i in idx])
            nw, nh = self.stage.resized_size(w, h)
            if (nw, nh) != (w, h):
                batch = F.resize(batch, [nh, nw], interpolation=mode, antialias=True)
            top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
            batch = batch[:, :, top : top + ch, left : left + cw].permute(0, 2, 3, 1)
            for j, i in enumerate(idx):
                result[i] = batch[j]
        return result
