"""A labelled image domain fashion-mini has never seen: 12 kinds of shapes drawn on 28x28 greyscale,
at random sizes, positions and stroke widths. Made here, so anyone can redraw it.

    .venv/bin/python benchmarks/shapes.py OUT_DIR [--per-class 66] [--seed 0]

writes OUT_DIR/<class>/<n>.png, one sub-folder per class (the layout eval and adapt read).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHAPES = ("circle", "ring", "square", "frame", "triangle", "diamond", "plus", "cross", "horizontal bar",
          "vertical bar", "star", "two dots")  # fmt: skip


def draw(kind: str, rng: random.Random, size: int = 28) -> object:
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    r = rng.uniform(6, 11)
    cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    w = rng.randint(2, 4)
    box = (cx - r, cy - r, cx + r, cy + r)
    ink = rng.randint(170, 255)
    if kind == "circle":
        d.ellipse(box, fill=ink)
    elif kind == "ring":
        d.ellipse(box, outline=ink, width=w)
    elif kind == "square":
        d.rectangle(box, fill=ink)
    elif kind == "frame":
        d.rectangle(box, outline=ink, width=w)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=ink)
    elif kind == "plus":
        d.line([(cx - r, cy), (cx + r, cy)], fill=ink, width=w)
        d.line([(cx, cy - r), (cx, cy + r)], fill=ink, width=w)
    elif kind == "cross":
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=ink, width=w)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=ink, width=w)
    elif kind == "horizontal bar":
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=ink)
    elif kind == "vertical bar":
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=ink)
    elif kind == "star":
        pts = [(cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
                cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5)) for i in range(10)]  # fmt: skip
        d.polygon(pts, fill=ink)
    elif kind == "two dots":
        q = r / 2.2
        d.ellipse((cx - r, cy - q, cx - r + 2 * q, cy + q), fill=ink)
        d.ellipse((cx + r - 2 * q, cy - q, cx + r, cy + q), fill=ink)
    else:
        raise ValueError(kind)
    return img


def draw_domain(out: Path, kinds: tuple[str, ...], draw: Callable[[str, random.Random], Any], per_class: int,
                seed: int) -> list[str]:  # fmt: skip
    """Draw ``per_class`` images of every kind into ``out/<kind>/``; returns the class names (the
    unseen domains of benchmarks/adapt.py: this one and benchmarks/textures.py)."""
    rng = random.Random(seed)
    for kind in kinds:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, rng).save(folder / f"{i:03d}.png")
    return list(kinds)


def make(out: Path, per_class: int = 66, seed: int = 0) -> list[str]:
    """Draw ``per_class`` images of every shape into ``out/<shape>/``; returns the class names."""
    return draw_domain(out, SHAPES, draw, per_class, seed)


def cli(doc: str, make: Callable[[Path, int, int], list[str]]) -> None:
    """``python benchmarks/<domain>.py OUT_DIR [--per-class N] [--seed S]``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=66)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    classes = make(args.out, args.per_class, args.seed)
    print(f"{len(classes)} classes x {args.per_class} images in {args.out}")


if __name__ == "__main__":
    cli(__doc__, make)
