"""Reading IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, with numpy only.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, one
big-endian uint32 per dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
from enum import Enum
from pathlib import Path
from typing import Any

from ..base.errors import UsageError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
ENV_DIR = "ZEROSHOT_FASHION_MNIST_DIR"


def default_dir() -> Path:
    """``$ZEROSHOT_FASHION_MNIST_DIR``, else where Debian's package puts the files."""
    explicit = os.environ.get(ENV_DIR)
    return Path(explicit).expanduser() if explicit else FASHION_MNIST_DIR


SPLITS = {"train": "train", "test": "t10k"}


class Split(str, Enum):
    """``eval --split``: the IDX split to read."""

    TEST = "test"
    TRAIN = "train"


def read_idx(path: str | Path) -> Any:
    """The array stored in one IDX file (``.gz`` is decompressed transparently)."""
    import numpy as np

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, EOFError) as e:
        raise UsageError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UsageError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header != count:
        raise UsageError(f"{path}: expected {count} bytes of data for shape {shape}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise UsageError(
        f"{folder / stem}[.gz] not found; install the data (Debian: apt-get install dataset-fashion-mnist), "
        f"or point --data-dir (or {ENV_DIR}) at a folder with the IDX files"
    )


def load_split(folder: str | Path | None = None, split: str = "test") -> tuple[Any, Any]:
    """(images [N, 28, 28] uint8, labels [N] uint8) of a Fashion-MNIST-style split."""
    folder = Path(folder) if folder else default_dir()
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    prefix = SPLITS[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UsageError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def split_size(folder: str | Path | None = None, split: str = "test") -> int:
    """How many labels a split holds, from its labels file's header alone."""
    folder = Path(folder) if folder else default_dir()
    path = _find(folder, f"{SPLITS[split]}-labels-idx1-ubyte")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:2] != b"\0\0" or head[3] != 1:
        raise ValueError(f"{path}: not a one-dimensional IDX file")
    return int(struct.unpack(">I", head[4:8])[0])
