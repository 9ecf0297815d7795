"""The text side: ImageNet build-prompts (padded vs trimmed), a warm cache's cost, ``--help``.

- ``zeroshot build-prompts --dataset imagenet`` (1000 classes x 80 templates = 80,000 prompts) from
  a cold cache, as a user runs it (wall clock, model load included): the default path (each
  template's prefix shared by its classes, batches cut to their longest prompt).
- The padded path (every prompt at 77 tokens, what open_clip's ``build_zero_shot_classifier``
  does) on a sample of whole classes (every 40th: 25 classes, 2,000 prompts), in process, and
  extrapolated to 80,000; its class embeddings are compared with the rows the CLI just cached.
  ``--full-padded`` runs all 80,000 instead (about an hour on 2 cores).
- A warm run's text side: resolving the pack plus the cache lookup, what ``classify`` pays before
  its first image (median of 7).
- ``zeroshot --help`` wall clock (median of 5).

    .venv/bin/python benchmarks/text_side.py [--model ViT-B-32] [--pretrained FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_WORK, Timer, machine, random_checkpoint, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--every", type=int, default=40, help="padded sample: every Nth ImageNet class")
    ap.add_argument("--full-padded", action="store_true")
    args = ap.parse_args()

    import torch

    from zeroshot import load_pack
    from zeroshot.base.cache import entry_path, key_digest, load_entry
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import encode_prompt_set, get_text_classifier, text_cache_key
    from zeroshot.text.prompts import PromptSet, resolve_prompt_set

    ckpt = args.pretrained or str(random_checkpoint(args.work, args.model))
    cache_dir = args.work / "text-cache"
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(cache_dir))
    os.environ["ZEROSHOT_CACHE_DIR"] = str(cache_dir)
    print(f"# {machine()}")
    rows = []

    # 1. The CLI, cold: every prompt through the text tower, batches cut to their longest prompt.
    subprocess.run([*ZEROSHOT, "cache", "clear"], env=env, check=True, capture_output=True)
    cmd = [*ZEROSHOT, "build-prompts", "--dataset", "imagenet", "-m", args.model, "-p", ckpt]
    with Timer() as cold:
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    info = json.loads(out.stdout)
    trimmed_rate = 80_000 / cold.seconds
    rows.append(["build-prompts imagenet: shared prefixes + trimmed (CLI, cold, model load included)",
                 f"{cold.seconds:.1f} s", f"{trimmed_rate:.0f} prompts/s"])  # fmt: skip

    # 2. Padded, on whole classes, against the rows the CLI cached.
    spec = resolve_spec(args.model, ckpt)
    loaded = load_model(spec, "cpu")
    pack = load_pack("imagenet")
    picked = list(range(0, len(pack.classes), 1 if args.full_padded else args.every))
    sample = PromptSet("sample", tuple(pack.classes[i] for i in picked), pack.templates)
    with Timer() as pad:
        padded = encode_prompt_set(loaded, sample, trim=False)
    n = len(sample.all_prompts())
    padded_rate = n / pad.seconds
    est = 80_000 / padded_rate
    label = "all 80,000" if args.full_padded else f"{len(picked)} classes, {n} prompts, x{80_000 // n} extrapolated"
    rows.append([f"padded to 77 tokens ({label})", f"{est:.0f} s ({est / 60:.1f} min)", f"{padded_rate:.0f} prompts/s"])
    with Timer() as trim_t:
        trimmed_sample = encode_prompt_set(loaded, sample, trim=True)
    trim_rate = n / trim_t.seconds
    rows.append([f"default path, same {n} prompts in process", f"{trim_t.seconds:.1f} s", f"{trim_rate:.0f} prompts/s"])
    cached = load_entry(Path(info["cache_file"]), text_cache_key(spec, pack), len(pack.classes)).weights
    diff_cli = float((padded - torch.from_numpy(cached[picked])).abs().max())
    diff_same = float((padded - trimmed_sample).abs().max())

    # 3. A warm run's text side: what classify does before its first image.
    times = []
    for _ in range(7):
        with Timer() as warm:
            ps = resolve_prompt_set(dataset="imagenet")
            hit = get_text_classifier(spec, ps, lambda: (_ for _ in ()).throw(AssertionError("miss")))
        assert hit.cache_hit
        times.append(warm.seconds)
    rows.append(["warm text side, imagenet (pack + cache hit), median of 7",
                 f"{1000 * statistics.median(times):.1f} ms", "-"])  # fmt: skip
    assert entry_path(key_digest(text_cache_key(spec, pack))).exists()

    helps = []
    for _ in range(5):
        with Timer() as h:
            subprocess.run([*ZEROSHOT, "--help"], env=env, check=True, capture_output=True)
        helps.append(h.seconds)
    rows.append(["zeroshot --help, median of 5", f"{1000 * statistics.median(helps):.0f} ms", "-"])

    print(table(rows, ["what", "time", "rate"]))
    print(f"# default vs padded, same prompts in process: {trim_rate / padded_rate:.1f}x faster")
    print(f"# max |padded - trimmed| class embedding: {diff_same:.1e} (same process), {diff_cli:.1e} (vs CLI cache)")


if __name__ == "__main__":
    main()
