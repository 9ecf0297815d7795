"""Image-tower throughput of each open_clip family's smallest tagged model, on this machine.

Random weights (speed does not depend on their values), each model's own input size, fp32, batches
of 16 preprocessed images already in memory: what decides images per second on a CPU (decoding
a 640x480 JPEG costs ~6 ms a core, a tenth of the fastest model here). Prints one row per family,
with image-tower parameters, input size and what the family needs beyond the default install.

    .venv/bin/python benchmarks/families.py [--batches 3] [--only ViT-B-32 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches of 16 per model (after one warm-up)")
    parser.add_argument("--only", nargs="*", help="model names to run")
    args = parser.parse_args()
    import open_clip
    import torch
    from open_clip.model import _build_vision_tower

    from zeroshot.model.catalog import FAMILIES, needs_of

    print(machine())
    rows = []
    for family, name, tag in FAMILIES:
        needs = ", ".join(needs_of(name)) or "-"
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        # The image tower alone: a Hugging Face text tower would need its config from the Hub.
        cfg = open_clip.get_model_config(name)
        quick_gelu = bool(cfg.get("quick_gelu") or (open_clip.get_pretrained_cfg(name, tag) or {}).get("quick_gelu"))
        visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=quick_gelu).eval()
        size = visual.image_size if hasattr(visual, "image_size") else cfg["vision_cfg"].get("image_size", 224)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        params = sum(p.numel() for p in visual.parameters()) / 1e6
        batch = torch.randn(16, 3, *size)
        with torch.inference_mode():
            visual(batch)  # warm-up
            start = time.perf_counter()
            for _ in range(args.batches):
                visual(batch)
            rate = 16 * args.batches / (time.perf_counter() - start)
        rows.append([family, name, f"{params:.0f}M", f"{size[0]}x{size[1]}", needs, f"{rate:.1f}"])
        print(f"  {name}: {rate:.1f} images/s", file=sys.stderr)
        del visual
    print(table(rows, ["family", "model", "image params", "input", "needs", "images/s (image tower, fp32)"]))


if __name__ == "__main__":
    main()
