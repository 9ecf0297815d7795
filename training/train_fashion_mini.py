"""Train fashion-mini, the small CLIP that ships inside zeroshot, on Fashion-MNIST.

    .venv/bin/python training/train_fashion_mini.py            # CPU or GPU, writes the checkpoint

The model is an open_clip ``CLIP`` built by open_clip's factory from the bundled config
``zeroshot/model/bundled/fashion-mini.json`` (registered with ``open_clip.add_model_config``). It is
trained from scratch with the CLIP paper's symmetric contrastive objective: image and caption
embeddings are L2-normalized, logits are cosine similarity times a learned temperature, and the
loss is cross-entropy in both directions (image -> captions, caption -> images), averaged.

Same-class pairs: a batch holds ~25 images of each class, so "the one matching caption" does not
exist. Each step draws K training templates per class (so 10*K captions), and every caption of an
image's class is a positive: the target of a row is uniform over its positives (and likewise for
captions over the batch's images of their class). Same-class pairs are therefore never pushed
apart, which plain CLIP loss with one positive per row would do.

Images go through exactly the preprocessing the CLI applies to the same picture saved as a PNG:
the 28x28 greyscale array -> PIL image (mode L) -> the model's own open_clip transform. The only
augmentation is a random horizontal flip of that tensor (the transform is per-pixel after the
resize, so flipping the tensor equals transforming the flipped image).

Captions come from TRAIN_TEMPLATES; the held-out evaluation templates live in
prompts/fashion-mnist.yaml and never appear here. 55,000 training images train, the last 5,000 of
the training split are held out and scored each epoch with the held-out templates; the test split
is never touched (use ``zeroshot eval --dataset fashion-mnist --model fashion-mini``).
Deterministic for a given seed, device and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAIN_TEMPLATES = [
    "a photo of a {label}.",
    "a picture of a {label}.",
    "an image of a {label}.",
    "a {label}.",
    "a photo of the {label}.",
    "a low resolution photo of a {label}.",
    "a black and white photo of a {label}.",
    "a product photo of a {label}.",
    "a photo of a {label}, a type of clothing.",
    "a grayscale image of the {label}.",
    "a small photo of a {label}.",
    "a centered photo of a {label}.",
    "a cropped photo of the {label}.",
    "a dark photo of a {label}.",
    "a bright photo of the {label}.",
    "a catalogue photo of a {label}.",
    "there is a {label} in this picture.",
    "a zoomed in photo of a {label}.",
    "an old photo of the {label}.",
    "a photo showing a {label}.",
]
VALIDATION = 5000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(ROOT / "zeroshot" / "model" / "bundled" / "fashion-mini.safetensors"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--captions-per-class", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--validation", type=int, default=VALIDATION, help="images held out from the train split")
    p.add_argument("--limit", type=int, default=0, help="train on only this many images (smoke tests)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import numpy as np
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from zeroshot.image.idx import load_split
    from zeroshot.model.models import BUNDLED_NAME, LoadedModel, ModelSpec, register_bundled
    from zeroshot.text.classifier import encode_prompt_set
    from zeroshot.text.prompts import PromptSet, load_pack

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    register_bundled()
    model, _, preprocess = open_clip.create_model_and_transforms(BUNDLED_NAME)  # random init
    model.to(device)
    tokenizer = open_clip.get_tokenizer(BUNDLED_NAME)
    pack = load_pack("fashion-mnist")
    classes = list(pack.classes)
    assert not set(TRAIN_TEMPLATES) & set(pack.templates), "training and evaluation templates overlap"

    t0 = time.perf_counter()
    images, labels = load_split(args.data_dir, "train")
    if args.limit:
        images, labels = images[: args.limit + args.validation], labels[: args.limit + args.validation]
    x_all = torch.stack([preprocess(Image.fromarray(a, "L")) for a in images])
    y_all = torch.from_numpy(labels.astype(np.int64))
    x_train, y_train = x_all[: -args.validation], y_all[: -args.validation]
    x_val, y_val = x_all[-args.validation :], y_all[-args.validation :]
    print(
        f"preprocessed {len(x_all)} images in {time.perf_counter() - t0:.1f}s: train {len(x_train)}, "
        f"held-out {len(x_val)}, tensor {tuple(x_all.shape[1:])}",
        flush=True,
    )

    # Every (class, template) caption, tokenized once: index = class * T + template.
    captions = [t.replace("{label}", c) for c in classes for t in TRAIN_TEMPLATES]
    tokens = tokenizer(captions)
    num_t = len(TRAIN_TEMPLATES)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    steps_per_epoch = len(x_train) // args.batch_size
    total = steps_per_epoch * args.epochs

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, total - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    eval_set = PromptSet(name="fashion-mnist", classes=tuple(classes), templates=pack.templates)

    def held_out_top1() -> float:
        model.eval()
        loaded = LoadedModel(ModelSpec(BUNDLED_NAME, None, "file"), model, preprocess, tokenizer, device)
        weights = encode_prompt_set(loaded, eval_set)
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(x_val), 1000):
                feats = F.normalize(model.encode_image(x_val[i : i + 1000].to(device)), dim=-1)
                correct += int((feats @ weights.T).argmax(-1).cpu().eq(y_val[i : i + 1000]).sum())
        model.train()
        return correct / len(x_val)

    print(
        f"training {sum(p.numel() for p in model.parameters()):,} parameters on {device} "
        f"({torch.get_num_threads()} threads): {args.epochs} epochs x {steps_per_epoch} steps",
        flush=True,
    )
    model.train()
    step = 0
    start = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = x_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            y = y_train[idx].to(device)
            # K random training templates per class -> 10*K captions, their classes alongside.
            pick = torch.stack([torch.randperm(num_t, generator=gen)[: args.captions_per_class] for _ in classes])
            cap_idx = (torch.arange(len(classes))[:, None] * num_t + pick).reshape(-1)
            cap_cls = torch.arange(len(classes)).repeat_interleave(args.captions_per_class).to(device)

            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            img = F.normalize(model.encode_image(x.to(device)), dim=-1)
            txt = F.normalize(model.encode_text(tokens[cap_idx].to(device)), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T  # [B, 10K]
            pos = (y[:, None] == cap_cls[None, :]).float()
            loss_img = -(F.log_softmax(logits, dim=1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
            pos_t = pos.T
            present = pos_t.sum(1) > 0  # captions whose class has images in this batch
            loss_txt = -(
                (F.log_softmax(logits.T[present], dim=1) * pos_t[present] / pos_t[present].sum(1, keepdim=True))
                .sum(1)
                .mean()
            )
            loss = (loss_img + loss_txt) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            running += float(loss.detach())
            step += 1
            if (b + 1) % 50 == 0:
                print(
                    f"epoch {epoch + 1} step {b + 1}/{steps_per_epoch} loss {running / 50:.4f} "
                    f"scale {model.logit_scale.exp().item():.1f} {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
                running = 0.0
        acc = held_out_top1()
        history.append(acc)
        print(
            f"epoch {epoch + 1}: held-out top-1 {acc:.4f} (held-out templates) {time.perf_counter() - start:.0f}s",
            flush=True,
        )

    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "model": BUNDLED_NAME,
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "held_out_top1": f"{history[-1]:.4f}",
        "train_templates": json.dumps(TRAIN_TEMPLATES),
        "train_seconds": f"{time.perf_counter() - start:.0f}",
        "device": device,
        "torch_threads": str(torch.get_num_threads()),
    }
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), held-out top-1 {history[-1]:.4f}, "
        f"{time.perf_counter() - start:.0f}s training",
        flush=True,
    )


if __name__ == "__main__":
    main()
