"""Write the demo's inputs into a folder: a random-weights ViT-S-32 checkpoint and some images."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image


def main(out: Path) -> None:
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random: that is the point
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")  # open_clip's own config, random initialisation
    torch.save(model.state_dict(), out / "vit-s-32-random.pt")
    photos = out / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = rng.integers(64, 256, size=2)
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([(xx * (i + 2)) % 256, (yy * (i + 3)) % 256, ((xx + yy) * 4) % 256], axis=-1)
        Image.fromarray(rgb.astype(np.uint8)).save(photos / f"image-{i}.{'jpg' if i % 2 else 'png'}")
    (photos / "broken.jpg").write_bytes(b"this is not a JPEG")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
