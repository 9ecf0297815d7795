"""Which image preprocessing a checkpoint file gets: its architecture's own, from the pretrained
tags (open_clip itself would give every file OpenAI's, open_clip #1068)."""

from __future__ import annotations

from typing import Any

from ..base.errors import UsageError
from ..base.options import named

# The pretrained-config fields that make up an eval transform (create_model_from_pretrained's
# image_* arguments; open_clip's tags set no others).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _tag_preprocess(name: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in PREPROCESS_KEYS}


def describe_preprocess(cfg: dict[str, Any]) -> str:
    """``mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), bicubic, squash resize``: for messages."""

    from open_clip import constants as c

    named = {"OpenAI": c.OPENAI_DATASET_MEAN, "ImageNet": c.IMAGENET_MEAN, "Inception": c.INCEPTION_MEAN}

    def nums(v: Any) -> str:
        return "(" + ", ".join(f"{x:g}" for x in v) + ")"

    name = next((n for n, m in named.items() if tuple(cfg.get("mean", ())) == tuple(m)), None)
    if name and name != "Inception":
        parts = [f"{name} mean/std"]
    else:
        parts = [f"{k} {nums(cfg[k])}" for k in ("mean", "std") if k in cfg]
    parts += [str(cfg[k]) for k in ("interpolation",) if k in cfg]
    parts += [f"{cfg['resize_mode']} resize"] if "resize_mode" in cfg else []
    return ", ".join(parts) or "open_clip's defaults"


def file_preprocess(name: str, choice: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """(preprocessing config, what was chosen and why) for weights of ``name`` given as a file.

    open_clip gives a checkpoint file its *default* preprocessing whatever the architecture's
    weights were trained with (open_clip #1068): OpenAI's mean/std and shortest-side resize for
    SigLIP (which wants 0.5/0.5 and a squash) or MobileCLIP (0/1, bilinear). Here the architecture's
    own is used: the one its pretrained tags share; ``choice`` (a tag) where they differ; open_clip's
    default only for an architecture with no tags.
    """
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(name))
    if choice:
        if choice not in tags:
            known = ", ".join(tags) if tags else "none"
            raise UsageError(f"{named('preprocess', choice)}: not a pretrained tag of {name} (its tags: {known})")
        cfg = _tag_preprocess(name, choice)
        return cfg, f"the preprocessing of its '{choice}' weights: {describe_preprocess(cfg)}"
    if not tags:
        return None, f"open_clip's default preprocessing ({name} has no pretrained tags to take it from)"
    groups: dict[str, list[str]] = {}
    cfgs: dict[str, dict[str, Any]] = {}
    for tag in tags:
        cfg = _tag_preprocess(name, tag)
        key = repr(sorted(cfg.items()))
        groups.setdefault(key, []).append(tag)
        cfgs[key] = cfg
    if len(groups) == 1:
        (cfg,) = cfgs.values()
        return cfg, f"the preprocessing all its pretrained tags use: {describe_preprocess(cfg)}"
    options = "; ".join(f"{', '.join(t)}: {describe_preprocess(cfgs[k])}" for k, t in groups.items())
    raise UsageError(
        f"{name}'s pretrained weights use different preprocessing ({options}); say which your checkpoint "
        f"follows with {named('preprocess')} TAG"
    )


def is_default_preprocess(cfg: dict[str, Any] | None) -> bool:
    """Whether ``cfg`` is what open_clip gives a checkpoint file anyway (OpenAI's mean/std, bicubic,
    shortest-side resize): then nothing was changed and there is nothing to say."""
    from open_clip import constants as c

    default = {"mean": c.OPENAI_DATASET_MEAN, "std": c.OPENAI_DATASET_STD, "interpolation": "bicubic",
               "resize_mode": "shortest"}  # fmt: skip
    return not cfg or all(tuple(v) == tuple(default[k]) if isinstance(v, (tuple, list)) else v == default[k]
                          for k, v in cfg.items() if k in default)  # fmt: skip
