"""A second labelled domain fashion-mini has never seen: 10 kinds of texture drawn on 28x28
greyscale, each at a random frequency, phase, tilt and contrast, with sensor-like noise. Made
here, so anyone can redraw it.

    .venv/bin/python benchmarks/textures.py OUT_DIR [--per-class 66] [--seed 0]

writes OUT_DIR/<class>/<n>.png, one sub-folder per class (the layout eval and adapt read).
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import cli, draw_domain  # noqa: E402

TEXTURES = ("vertical stripes", "horizontal stripes", "diagonal stripes", "checkerboard", "polka dots",
            "concentric rings", "zigzag", "grid lines", "speckle noise", "smooth gradient")  # fmt: skip


def draw(kind: str, rng: random.Random, size: int = 28) -> object:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, 2 * math.pi)
    tilt = rng.uniform(-0.15, 0.15)  # radians: no texture is drawn perfectly straight
    u = xx * math.cos(tilt) + yy * math.sin(tilt)
    v = -xx * math.sin(tilt) + yy * math.cos(tilt)
    k = 2 * math.pi / period
    if kind == "vertical stripes":
        f = np.sign(np.sin(k * u + phase))
    elif kind == "horizontal stripes":
        f = np.sign(np.sin(k * v + phase))
    elif kind == "diagonal stripes":
        f = np.sign(np.sin(k * (u + v) / math.sqrt(2) + phase))
    elif kind == "checkerboard":
        f = np.sign(np.sin(k * u + phase) * np.sin(k * v + phase))
    elif kind == "polka dots":
        cu, cv = (u + phase) % period - period / 2, (v + phase) % period - period / 2
        f = np.where(cu**2 + cv**2 < (period / 3.5) ** 2, 1.0, -1.0)
    elif kind == "concentric rings":
        cx, cy = rng.uniform(8, 20), rng.uniform(8, 20)
        f = np.sign(np.sin(k * np.hypot(xx - cx, yy - cy) + phase))
    elif kind == "zigzag":
        f = np.sign(np.sin(k * v + 2.5 * np.abs(((u / period) % 1.0) - 0.5) * 2 * math.pi / 2 + phase))
    elif kind == "grid lines":
        line = period / 5
        f = np.where(((u + phase) % period < line) | ((v + phase) % period < line), 1.0, -1.0)
    elif kind == "speckle noise":
        f = np.sign(np.array([[rng.uniform(-1, 1) for _ in range(size)] for _ in range(size)]))
    elif kind == "smooth gradient":
        angle = rng.uniform(0, 2 * math.pi)
        f = ((xx - size / 2) * math.cos(angle) + (yy - size / 2) * math.sin(angle)) / (size / 2)
    else:
        raise ValueError(kind)
    low, high = rng.uniform(0, 70), rng.uniform(170, 255)
    noise = np.array([[rng.gauss(0, 12) for _ in range(size)] for _ in range(size)])
    pixels = np.clip(low + (f + 1) / 2 * (high - low) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def make(out: Path, per_class: int = 66, seed: int = 0) -> list[str]:
    """Draw ``per_class`` images of every texture into ``out/<texture>/``; returns the class names."""
    return draw_domain(out, TEXTURES, draw, per_class, seed)


if __name__ == "__main__":
    cli(__doc__, make)
