"""--precision: reduced-precision weights give close numbers and their own cache entries."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from zeroshot import cache
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
