"""Which device and precision a run uses (``--device``, ``--precision``), and full fp32 arithmetic
on CUDA when fp32 is asked for."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from ..base.errors import UsageError
from ..base.options import named


class Precision(str, Enum):
    """``--precision``: auto is fp16 on CUDA and fp32 elsewhere; int8 is the CPU engine's."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def resolve_precision(precision: str | None, device: str) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; fp16/bf16 halve memory traffic on GPUs; int8
    (the image tower's weights, in ONNX Runtime) is for the CPU."""
    choice = (precision or "auto").strip().lower()
    if choice == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if choice not in PRECISIONS:
        raise UsageError(f"{named('precision', precision)}: expected auto, {', '.join(PRECISIONS)}")
    if choice == "int8" and device.startswith("cuda"):
        raise UsageError(f"{named('precision', 'int8')} is for the CPU (ONNX Runtime); on CUDA use fp16 or bf16")
    return choice


def _no_gpu_driver() -> bool:
    """True when this is Linux without an NVIDIA or ROCm driver: CUDA cannot be there.

    Lets ``--device auto`` settle on the CPU without importing torch (about 2 s), which keeps a
    build-prompts cache hit fast. Anywhere else, torch is asked.
    """
    import glob

    if not sys.platform.startswith("linux"):
        return False
    return not (
        os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia*") or os.path.exists("/dev/kfd")
    )


def resolve_device(device: str | None) -> str:
    """``auto`` picks CUDA when present; ``cuda``/``cuda:N`` must exist."""
    choice = (device or "auto").strip().lower()
    if choice == "cpu" or (choice == "auto" and _no_gpu_driver()):
        return "cpu"
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"{named('device', device)}: CUDA is not available on this machine (use cpu or auto)")
        if choice != "cuda":
            index = choice.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UsageError(
                    f"{named('device', device)}: no such GPU (this machine has {torch.cuda.device_count()})"
                )
        return choice
    raise UsageError(f"{named('device', device)}: expected auto, cpu, cuda or cuda:N")


@contextmanager
def exact_fp32(device: Any, precision: str) -> Iterator[None]:
    """Full fp32 arithmetic for an fp32 run on CUDA: cuDNN's convolutions default to TF32 (a 10-bit
    mantissa), which put ViT-B-32's probabilities 1e-4 from the CPU's on an H200. Set for the
    duration only, so a library user's own settings are theirs again after it; elsewhere nothing."""
    if precision != "fp32" or not str(device).startswith("cuda"):
        yield
        return
    import torch

    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch 2.9+: mixing in the old flags is refused
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        legacy = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = legacy
