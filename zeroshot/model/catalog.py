"""Choosing a model: every open_clip architecture and pretrained tag with its family, size, input
resolution, what it needs beyond the default install, and open_clip's published accuracy and cost.

Two tables ship with the package (``zeroshot/model/tables/``):

- ``openclip_results.csv``: ImageNet-1k zero-shot top-1, parameters and GFLOPs as open_clip
  publishes them (``docs/openclip_results.csv`` of open_clip 2.24.0). Models added to open_clip
  since have no published row, so no top-1 or GFLOPs here: an empty cell, never a guess.
- ``architectures.csv``: every architecture's parameter count, counted by building it on torch's
  meta device (no memory, no weights) with the open_clip version named in its header; written by
  ``python -m zeroshot.model.catalog --write``.
"""

from __future__ import annotations

import csv
import functools
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

TABLES = Path(__file__).resolve().parent / "tables"
RESULTS_FILE = TABLES / "openclip_results.csv"
ARCHITECTURES_FILE = TABLES / "architectures.csv"
RESULTS_SOURCE = "open_clip 2.24.0 docs/openclip_results.csv"

# (what the architecture's name contains, family); the first match wins, so the more specific come first.
FAMILY_RULES: tuple[tuple[str, str], ...] = (
    ("nllb-clip", "NLLB-CLIP"),
    ("xlm-roberta", "XLM-RoBERTa CLIP"),
    ("roberta", "RoBERTa CLIP"),
    ("mt5", "mT5 CLIP"),
    ("worldwide", "MetaCLIP 2 worldwide"),
    ("SigLIP2", "SigLIP 2"),
    ("SigLIP", "SigLIP"),
    ("CLIPA", "CLIPA"),
    ("PE-Core", "PE-Core"),
    ("MobileCLIP2", "MobileCLIP 2"),
    ("MobileCLIP", "MobileCLIP"),
    ("ViTamin", "ViTamin"),
    ("EVA", "EVA"),
    ("coca", "CoCa"),
    ("convnext", "ConvNeXt"),
    ("RN", "CLIP ResNet"),
    ("ViT", "CLIP ViT"),
)

# Each family by its smallest tagged model: (family, model, tag). tests/test_families.py checks every
# one against open_clip's reference through a stand-in Hugging Face Hub; benchmarks/families.py times them.
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("CLIP ViT", "ViT-B-32", "openai"),
    ("CLIP ResNet", "RN50", "openai"),
    ("ConvNeXt", "convnext_base", "laion400m_s13b_b51k"),
    ("EVA", "EVA02-B-16", "merged2b_s8b_b131k"),
    ("CoCa", "coca_ViT-B-32", "laion2b_s13b_b90k"),
    ("ViTamin", "ViTamin-S", "datacomp1b"),
    ("MobileCLIP", "MobileCLIP-S1", "datacompdr"),
    ("MobileCLIP 2", "MobileCLIP2-S0", "dfndr2b"),
    ("PE-Core", "PE-Core-T-16-384", "meta"),
    ("SigLIP", "ViT-B-16-SigLIP", "webli"),
    ("SigLIP 2", "ViT-B-32-SigLIP2-256", "webli"),
    ("CLIPA", "ViT-L-14-CLIPA", "datacomp1b"),
    ("RoBERTa CLIP", "roberta-ViT-B-32", "laion2b_s12b_b32k"),
    ("XLM-RoBERTa CLIP", "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"),
    ("NLLB-CLIP", "nllb-clip-base", "v1"),
    ("MetaCLIP 2 worldwide", "ViT-H-14-worldwide", "metaclip2_worldwide"),
)

# Tokenizer repositories whose vocabulary is a SentencePiece model (T5's and Gemma's for SigLIP and
# SigLIP 2, XLM-R's, XLM-V's, NLLB's, mT5's); RoBERTa's byte-level BPE and BERT's WordPiece are not.
SENTENCEPIECE_HINTS = ("SigLIP", "xlm-roberta", "xlm-v", "nllb", "mt5")


class SortKey(str, Enum):
    """``zeroshot models --sort``: top1 best first; params, size and gflops smallest first."""

    MODEL = "model"
    FAMILY = "family"
    PARAMS = "params"
    SIZE = "size"
    GFLOPS = "gflops"
    TOP1 = "top1"


SORT_KEYS = tuple(k.value for k in SortKey)


@dataclass(frozen=True)
class CatalogRow:
    model: str
    pretrained: str | None
    family: str
    params_m: float | None
    image_size: int | None
    gflops: float | None
    imagenet_top1: float | None
    needs: tuple[str, ...]
    description: str = ""

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["needs"] = list(self.needs)
        if not self.description:
            del out["description"]
        return out


def family_of(name: str) -> str:
    for part, family in FAMILY_RULES:
        if name.startswith(part) if part == "RN" else part in name:
            return family
    return "timm backbone"


def needs_of(name: str) -> tuple[str, ...]:
    """The packages beyond the default install that loading ``name`` imports (the ``[hf]`` extra)."""
    from .models import hf_text_repo

    repo = hf_text_repo(name)
    if not repo:
        return ()
    spm = any(h.lower() in f"{name} {repo}".lower() for h in SENTENCEPIECE_HINTS)
    return ("transformers", "sentencepiece") if spm else ("transformers",)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


@functools.lru_cache(maxsize=1)
def published() -> tuple[dict[tuple[str, str], dict[str, float | None]], dict[str, dict[str, float | None]]]:
    """open_clip's published figures by (model, tag), and parameters and GFLOPs by architecture
    (they do not depend on the weights; a ``-quickgelu`` twin is its plain architecture's size)."""
    by_tag: dict[tuple[str, str], dict[str, float | None]] = {}
    by_arch: dict[str, dict[str, float | None]] = {}
    for row in _rows(RESULTS_FILE):
        figures = {k: _number(row[k]) for k in ("params_m", "gflops", "imagenet_top1")}
        by_tag[(row["name"], row["pretrained"])] = figures
        by_arch.setdefault(row["name"].removesuffix("-quickgelu"), figures)
    return by_tag, by_arch


@functools.lru_cache(maxsize=1)
def counted_params() -> dict[str, float]:
    return {row["model"]: float(row["params_m"]) for row in _rows(ARCHITECTURES_FILE) if row["params_m"]}


def _image_size(name: str) -> int | None:
    import open_clip

    size = ((open_clip.get_model_config(name) or {}).get("vision_cfg") or {}).get("image_size")
    if isinstance(size, list | tuple):
        size = max(size)
    return int(size) if size else None


def catalog(untagged: bool = False) -> list[CatalogRow]:
    """The bundled model, then every (architecture, tag) open_clip knows, in open_clip's order;
    with ``untagged``, also the architectures that have no pretrained tag (one row each)."""
    import open_clip

    from .models import BUNDLED_DESCRIPTION, BUNDLED_NAME, register_bundled

    register_bundled()
    by_tag, by_arch = published()
    params = counted_params()
    rows = []
    for name in [BUNDLED_NAME, *(n for n in open_clip.list_models() if n != BUNDLED_NAME)]:
        tags: list[str | None] = (
            ["bundled"] if name == BUNDLED_NAME else list(open_clip.list_pretrained_tags_by_model(name))
        )
        if not tags and not untagged:
            continue
        for tag in tags or [None]:
            figures = by_tag.get((name, tag or ""), {})
            same_size = by_arch.get(name.removesuffix("-quickgelu"), {})
            count = params.get(name) or same_size.get("params_m")
            rows.append(
                CatalogRow(
                    model=name,
                    pretrained=tag,
                    family="bundled (Fashion-MNIST)" if name == BUNDLED_NAME else family_of(name),
                    params_m=round(count, 2) if count else None,
                    image_size=_image_size(name),
                    gflops=same_size.get("gflops"),
                    imagenet_top1=figures.get("imagenet_top1"),
                    needs=needs_of(name),
                    description=BUNDLED_DESCRIPTION if name == BUNDLED_NAME else "",
                )  # fmt: skip
            )
    return rows


def sort_rows(rows: list[CatalogRow], key: str) -> list[CatalogRow]:
    """``top1`` best first; ``params``, ``size`` and ``gflops`` smallest first; unknown values last."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key '{key}'; one of: {', '.join(SORT_KEYS)}")
    if key in ("model", "family"):
        return sorted(rows, key=lambda r: (getattr(r, key).lower(), r.model.lower()))
    field = {"params": "params_m", "size": "image_size", "gflops": "gflops", "top1": "imagenet_top1"}[key]
    sign = -1 if key == "top1" else 1
    known = sorted((r for r in rows if getattr(r, field) is not None), key=lambda r: sign * getattr(r, field))
    return known + [r for r in rows if getattr(r, field) is None]


def count_parameters() -> list[tuple[str, float | None]]:
    """Every architecture's parameter count in millions, built on the meta device. An architecture
    whose text tower is a Hugging Face model needs that model's config from the Hub: left empty."""
    import open_clip
    import torch

    from .models import BUNDLED_NAME, register_bundled

    register_bundled()
    out: list[tuple[str, float | None]] = []
    for name in [BUNDLED_NAME, *(n for n in open_clip.list_models() if n != BUNDLED_NAME)]:
        if "hf_model_name" in open_clip.get_model_config(name).get("text_cfg", {}):
            out.append((name, None))
            continue
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
        out.append((name, round(sum(p.numel() for p in model.parameters()) / 1e6, 2)))
    return out


def write_architectures(path: Path = ARCHITECTURES_FILE) -> None:
    import open_clip

    from ..base.files import atomic_write_bytes

    lines = [
        f"# Parameters (millions) of every architecture of open_clip {open_clip.__version__}, counted by",
        "# building each on torch's meta device: python -m zeroshot.model.catalog --write.",
        "# Empty where the text tower is a Hugging Face model (its config lives on the Hub).",
        "model,params_m",
    ]
    lines += [f"{name},{'' if count is None else count}" for name, count in count_parameters()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m zeroshot.model.catalog --write")
    import logging
    import warnings

    logging.disable(logging.CRITICAL)  # open_clip's chatter for each of 115 builds; this script is its own process
    warnings.simplefilter("ignore")
    write_architectures()
    print(f"wrote {ARCHITECTURES_FILE}")
