"""What the pixel-changing decoders do to a trained model's answers.

``--decoder batched`` (torchvision's JPEG decoder and tensor resize instead of Pillow's) and
``--jpeg-draft`` (libjpeg's reduced-size decoding) change pixels slightly. Random weights cannot
show what that does to predictions, so this uses the bundled, trained fashion-mini on real
Fashion-MNIST test images (Debian's ``dataset-fashion-mnist``), enlarged to 448x448 (bicubic) and
saved as JPEG (quality 90) so both shortcuts have work to do. Reported against the default Pillow
path: max and mean |delta p| over all classes, top-1 changes, and top-1 accuracy of each.

    .venv/bin/python benchmarks/decode_accuracy.py [--images 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_WORK, machine, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()

    from PIL import Image

    from zeroshot import resolve_prompt_set
    from zeroshot.image.idx import load_split
    from zeroshot.image.images import Input
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.towers.pipeline import DecodeOptions
    from zeroshot.uses.records import classify_inputs

    images, labels = load_split(None, "test")
    folder = args.work / f"fashion-jpeg-{args.size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.images):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            big = Image.fromarray(images[i], "L").resize((args.size, args.size), Image.Resampling.BICUBIC)
            big.convert("RGB").save(path, quality=90)
        paths.append(str(path))

    spec = resolve_spec("fashion-mini")
    loaded = load_model(spec, "cpu")
    prompt_set = resolve_prompt_set(dataset="fashion-mnist")
    text = get_text_classifier(spec, prompt_set, lambda: loaded, use_cache=False)
    classes = list(prompt_set.classes)

    def run(**opts: object) -> list[dict]:
        inputs = (Input(p) for p in paths)
        return list(classify_inputs(loaded, text, inputs, top_k=len(classes), options=DecodeOptions(**opts)))

    def probs(rec: dict) -> dict[str, float]:
        return {t["label"]: t["score"] for t in rec["top_k"]}

    base = run()
    rows = []
    for name, opts in [("Pillow (default)", {}), ("--decoder batched (CPU)", {"decoder": "batched"}),
                       ("--jpeg-draft", {"jpeg_draft": True})]:  # fmt: skip
        recs = run(**opts)
        deltas = [abs(probs(a)[c] - probs(b)[c]) for a, b in zip(base, recs, strict=True) for c in classes]
        flips = sum(a["label"] != b["label"] for a, b in zip(base, recs, strict=True))
        acc = sum(r["label"] == classes[int(y)] for r, y in zip(recs, labels, strict=False)) / len(recs)
        rows.append([name, f"{max(deltas):.1e}", f"{sum(deltas) / len(deltas):.1e}", f"{flips}", f"{100 * acc:.2f}%"])
    print(f"# {machine()}")
    print(f"# fashion-mini, {len(paths)} Fashion-MNIST test images as {args.size}x{args.size} JPEGs (quality 90)")
    print(table(rows, ["decoder", "max |dp|", "mean |dp|", "top-1 changed", "top-1 accuracy"]))


if __name__ == "__main__":
    main()
