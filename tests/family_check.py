"""Run in a subprocess whose HF_ENDPOINT is the stand-in Hub: zeroshot's records and open_clip's
reference for models given as NAME=WEIGHTS (a pretrained tag or a checkpoint file), as one JSON
object on stdout.

    python -m tests.family_check --images a.png b.png --label cat --label dog -- ViT-B-32=openai ...

A model given as ``NAME=TAG+ml`` runs with ``--multi-label`` (threshold 0) against the model's own
sigmoid rule; ``--inspect NAME=TAG`` also reports how zeroshot tokenizes for it (tokenizer class,
cleaning, padded length, whether the text-side speed-ups apply).

For each model, zeroshot's installed console script runs first, in a fresh process (so it, not the
reference, meets the empty cache and does the real download, and it imports what a user's run
imports, in the same order), then open_clip's own path: ``create_model_and_transforms`` (with the tag's
QuickGELU setting; no random initialisation, see :func:`reference`), ``get_tokenizer``,
``build_zero_shot_classifier`` over the same templates, and the softmax of ``logit_scale.exp()``
times the cosine similarities.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path


def reference(
    name: str, weights: str, images: list[str], labels: list[str], preprocess_tag: str | None, multi_label: bool
) -> list:
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip import build_zero_shot_classifier
    from PIL import Image

    from zeroshot.model.fastload import skip_random_init
    from zeroshot.text.prompts import load_pack, render

    tag = preprocess_tag or weights
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    kwargs = {}
    if preprocess_tag:  # a checkpoint file: the reference is what the tag itself would get
        kwargs["force_preprocess_cfg"] = {
            k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg
        }
    # Built without drawing the random weights the checkpoint then overwrites: open_clip loads a
    # tag's checkpoint with strict=True, so every parameter and persistent buffer comes from it and
    # the numbers cannot depend on the initial values (test_first_contact checks the two builds
    # equal tensor for tensor). It saves the suite the 20-odd seconds of initialising ViT-H-14.
    with skip_random_init():
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, force_quick_gelu=bool(cfg.get("quick_gelu")), **kwargs
        )
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    templates = load_pack("default").templates
    with torch.no_grad():
        classifier = build_zero_shot_classifier(
            model, tokenizer, labels, [lambda c, t=t: render(t, c) for t in templates], num_classes_per_batch=2,
            device="cpu", use_tqdm=False,
        )  # fmt: skip
        out = []
        for path in images:
            feats = F.normalize(model.encode_image(preprocess(Image.open(path)).unsqueeze(0)), dim=-1)
            logits = model.logit_scale.exp() * feats @ classifier
            if multi_label:  # a SigLIP-style model's own per-label rule: sigmoid(scale * cos + bias)
                out.append((logits + model.logit_bias).sigmoid()[0].tolist())
            else:
                out.append(logits.softmax(dim=-1)[0].tolist())
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--label", action="append", required=True)
    parser.add_argument("--preprocess", help="for NAME=FILE: the tag whose preprocessing the reference uses")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--inspect", action="append", default=[])
    parser.add_argument("--parallel", type=int, default=1, help="console-script runs at a time")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args(argv)
    zeroshot = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script

    def command(item: str) -> list[str]:
        name, weights = item.split("=", 1)
        multi_label = weights.endswith("+ml")
        weights = weights.removesuffix("+ml")
        cli = [zeroshot, "classify", *args.images, "-m", name, "-p", weights, "--no-cache", "--workers", "0"]
        cli += [a for label in args.label for a in ("--label", label)] + ["-k", str(len(args.label))]
        return cli + (["--multi-label", "--threshold", "0.0"] if multi_label else [])

    results = {}
    # Each model's CLI runs in a fresh process of its own (what a user runs: the console script, which
    # imports open_clip lean, unlike a test process), started while the previous model's reference is
    # computed here, so the two overlap (--parallel 2, two console scripts at once, was slower on 2 cores).
    launched: dict[str, tuple[subprocess.Popen, float]] = {}

    def launch(upto: int) -> None:
        for item in args.models[:upto]:
            if item not in launched:
                proc = subprocess.Popen(command(item), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                launched[item] = (proc, time.perf_counter())

    for i, item in enumerate(args.models):
        launch(i + args.parallel)
        proc, started = launched[item]
        out, err = proc.communicate(timeout=900)
        entry: dict = {"exit": proc.returncode, "stderr": err[-2000:]}
        entry["seconds"] = round(time.perf_counter() - started, 2)  # wall, sharing the cores
        entry["records"] = [json.loads(line) for line in out.splitlines() if line.strip()]
        launch(i + 1 + args.parallel)
        name, weights = item.split("=", 1)
        multi_label = weights.endswith("+ml")
        weights = weights.removesuffix("+ml")
        is_file = "/" in weights or weights.endswith((".safetensors", ".pt", ".bin"))
        if entry["exit"] == 0 and not args.no_reference and not is_file:  # a file is compared with its tag
            entry["reference"] = reference(name, weights, args.images, args.label, args.preprocess, multi_label)
        results[item] = entry
        gc.collect()  # a 2-billion-parameter model must be gone before the next is built
    for item in args.inspect:
        results[f"inspect:{item}"] = inspect(*item.split("=", 1))
    sys.stdout.write(json.dumps(results) + "\n")


def inspect(name: str, tag: str) -> dict:
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.texttower import prefix_shareable, trimmable

    loaded = load_model(resolve_spec(name, tag))
    tok = loaded.tokenizer
    ids = tok(["A  Photo, of a CAT!"])
    pad = getattr(getattr(tok, "tokenizer", None), "pad_token_id", 0)
    return {
        "class": type(tok).__name__,
        "clean": getattr(tok.clean_fn, "__name__", str(tok.clean_fn)),
        "length": int(ids.shape[1]),
        "pads": int((ids[0] == pad).sum()),
        "trim": trimmable(loaded.model),
        "prefix": prefix_shareable(loaded.model),
        "canonical": ids[0].tolist() == tok(["a photo of a cat"])[0].tolist(),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
