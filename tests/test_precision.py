"""--precision: reduced-precision weights give close numbers and their own cache entries."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from zeroshot.base import cache
from zeroshot.cli import app

from .conftest import ARCH


def classify(checkpoint, image_dir, precision):
    result = CliRunner().invoke(
        app,
        ["classify", str(image_dir), "-m", ARCH, "-p", str(checkpoint), "--precision", precision,
         "--label", "cat", "--label", "dog", "--label", "car", "-k", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return [{t["label"]: t["score"] for t in json.loads(line)["top_k"]} for line in result.stdout.splitlines()]


def test_bf16_is_close_to_fp32_and_cached_separately(checkpoint, image_dir):
    exact = classify(checkpoint, image_dir, "auto")  # auto is fp32 on the CPU
    low = classify(checkpoint, image_dir, "bf16")
    worst = max(abs(a[k] - b[k]) for a, b in zip(exact, low, strict=True) for k in a)
    assert 0 < worst < 0.05  # bf16 keeps ~3 significant digits; the change must be visible but small
    names = {e.meta.get("model") for e in cache.list_entries()}
    assert len(cache.list_entries()) == 2 and len(names) == 1


def test_unknown_precision_is_a_usage_error(checkpoint, image_dir):
    result = CliRunner().invoke(app, ["build-prompts", "--label", "x", "-m", ARCH, "-p", str(checkpoint),
                                      "--precision", "fp8"])  # fmt: skip
    assert result.exit_code == 2 and "--precision" in result.stderr and "fp8" in result.stderr
    ok = CliRunner().invoke(app, ["build-prompts", "--label", "x", "-m", ARCH, "-p", str(checkpoint)])
    assert json.loads(ok.stdout)["precision"] == "fp32"


def test_fp32_on_cuda_runs_without_tf32_and_gives_the_setting_back():
    """cuDNN's fp32 convolutions default to TF32 (10-bit mantissa): an fp32 run on CUDA turns it off
    for its own duration (an H200 measured 9.6e-5 against 1.1e-6 relative feature error, README),
    and a library user's own setting comes back. The flags are set without a GPU, so CI checks it."""
    import torch

    from zeroshot.model.devices import exact_fp32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = "tf32"
    try:
        with exact_fp32("cuda:0", "fp32"):
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert conv.fp32_precision == "tf32" and matmul.fp32_precision == before[1]
        for device, precision in (("cuda", "fp16"), ("cuda", "bf16"), ("cpu", "fp32")):
            with exact_fp32(device, precision):  # reduced precision, or no CUDA: nothing to change
                assert conv.fp32_precision == "tf32"
        try:
            with exact_fp32("cuda", "fp32"):
                raise RuntimeError("a batch failed")
        except RuntimeError:
            pass
        assert conv.fp32_precision == "tf32"  # given back on the way out of an error too
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
