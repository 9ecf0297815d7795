"""Calibrated multi-label scores: Platt scaling of the cosine similarity, fitted on labelled images.

``--multi-label`` decides each label on its own with ``score = sigmoid(a * cos(image, label) + b)``.
A CLIP model is trained with a softmax over a batch, so its cosine similarities carry no absolute
meaning; ``a`` and ``b`` are fitted here (logistic regression, two parameters shared by every
label) so that the score is a probability: among image/label pairs scored 0.8, about 80% have the
label present. The fit uses labelled single-label images (``zeroshot eval ... --calibrate FILE``):
every image paired with every class, present for its own class, absent for the others.

The file is JSON (no pickle) and records the model it was fitted for; ``classify --calibration``
refuses it for another model, as it does classifier files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import cache, files
from ..base.errors import UsageError
from ..base.options import named, worded
from ..model.models import ModelSpec, model_label
from ..model.weightfiles import weights_identity

if TYPE_CHECKING:
    from ..model.models import LoadedModel
    from ..text.classifier import TextClassifier
    from ..text.prompts import PromptSet
    from .evaluate import EvalRun

FORMAT = "zeroshot-multilabel-calibration"
FORMAT_VERSION = 1


class CalibrationFileError(UsageError):
    """A --calibration file that cannot be used."""


@dataclass
class Calibration:
    a: float
    b: float
    model: str
    pretrained: str | None
    identity: dict[str, Any]
    info: dict[str, Any]
    path: Path | None = None

    @property
    def model_label(self) -> str:
        return model_label(self.model, self.pretrained)


def fit_platt(cos: Any, labels: Any, init_scale: float = 100.0) -> tuple[float, float]:
    """(a, b) minimizing the binary cross-entropy of ``sigmoid(a * cos + b)`` against the labels.

    ``cos`` is [N, C] cosine similarities; ``labels`` is [N] class indices (one label per image) or
    an [N, C] boolean matrix of the labels present. Two parameters, so the fit is a few LBFGS
    steps on any data size; it runs in float64 on the CPU.
    """
    import torch
    import torch.nn.functional as F

    x = cos.detach().double().cpu()
    one_hot = labels.ndim == 2
    y = labels.detach().double().cpu() if one_hot else F.one_hot(labels.long().cpu(), x.shape[1]).double()
    # Start from the model's own scale, with the bias that puts the threshold at the mean similarity.
    a = torch.tensor(float(init_scale), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-float(init_scale) * float(x.mean()), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a * x + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(b.detach())


def expected_calibration_error(scores: Any, present: Any, bins: int = 10) -> float:
    """ECE over all (image, label) pairs: the mean |score - frequency| over equal-width score bins."""
    import torch

    s, t = scores.detach().double().flatten().cpu(), present.double().flatten().cpu()
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        m = (s >= lo) & ((s < hi) if i < bins - 1 else (s <= hi))
        if bool(m.any()):
            total += float(m.double().mean()) * abs(float(s[m].mean()) - float(t[m].mean()))
    return total if len(s) else float(torch.nan)


def save_calibration(path: str | Path | files.Destination, spec: ModelSpec, a: float, b: float, **info: Any) -> None:
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "a": a,
        "b": b,
        "model": spec.model,
        "pretrained": spec.pretrained,
        "weights_identity": weights_identity(spec, cache.hash_memo_dir()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }
    files.write_named(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode(), "--calibrate")


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    where = f"calibration file {path}"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CalibrationFileError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationFileError(f"{where}: not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        how = worded(cli="eval --calibrate", library="zeroshot.uses.calibration.calibrate_on")
        raise CalibrationFileError(f"{where}: not a zeroshot calibration file (write one with {how})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CalibrationFileError(f"{where}: format version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    a, b, ident = data.get("a"), data.get("b"), data.get("weights_identity")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers or not isinstance(ident, dict) or not isinstance(data.get("model"), str):
        raise CalibrationFileError(f"{where}: 'a', 'b', 'model' or 'weights_identity' is missing or malformed")
    import math

    if not (math.isfinite(a) and math.isfinite(b)):  # type: ignore[arg-type]
        raise CalibrationFileError(f"{where}: 'a' and 'b' must be finite")
    known = {"format", "format_version", "a", "b", "model", "pretrained", "weights_identity"}
    return Calibration(
        a=float(a),  # type: ignore[arg-type]
        b=float(b),  # type: ignore[arg-type]
        model=data["model"],
        pretrained=data.get("pretrained"),
        identity=ident,
        info={k: v for k, v in data.items() if k not in known},
        path=path,
    )


def check_calibration_model(cal: Calibration, spec: ModelSpec) -> None:
    if not spec.matches(cal.model, cal.identity):
        raise CalibrationFileError(
            f"calibration file {cal.path} was fitted for {cal.model_label}, but this run uses {spec.label}: "
            f"fit one for this model with {worded(cli='eval --calibrate', library='calibrate_on')}"
        )


def calibrate_on(
    run: EvalRun, loaded: LoadedModel, text: TextClassifier, path: str | Path | files.Destination
) -> dict[str, Any]:
    """Fit the multi-label calibration on an eval run (``eval --calibrate FILE``), write it to
    ``path``, and say how well it fits: expected calibration error before and after."""
    import torch
    import torch.nn.functional as F

    from .ranking import multilabel_scores

    if len(run.labels) < 2 or len(text.classes) < 2:
        raise UsageError(f"{named('calibrate')} needs at least 2 labelled images and 2 classes")
    sims = run.sims(text)
    a, b = fit_platt(sims, run.labels, init_scale=loaded.logit_scale)
    present = F.one_hot(run.labels, len(text.classes)).bool()
    before = torch.from_numpy(multilabel_scores(run.feats, text.weights, loaded.logit_scale,
                                                multilabel_rule(loaded, text.prompt_set)))  # fmt: skip
    after = (a * sims + b).sigmoid()
    info = {
        "a": a,
        "b": b,
        "images": len(run.labels),
        "classes": len(text.classes),
        "ece_uncalibrated": expected_calibration_error(before, present),
        "ece_calibrated": expected_calibration_error(after, present),
    }
    save_calibration(path, loaded.spec, a, b, fitted_on=run.record.get("dataset", ""), prompts=text.prompt_set.name,
                     **{k: v for k, v in info.items() if k not in ("a", "b")})  # fmt: skip
    return {"file": str(path), **info}


def resolve_multilabel(
    spec: ModelSpec,
    prompt_set: PromptSet,
    load: Callable[[], LoadedModel],
    *,
    threshold: float = 0.5,
    background: str | None = None,
    calibration: Any = None,
) -> Any:
    """:func:`multilabel_rule` from user options: ``calibration`` is a path or a loaded
    :class:`Calibration`, checked against ``spec``; ``load()`` is called only
    when the rule needs the model (no calibration)."""
    cal = None
    if calibration is not None:
        cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
        check_calibration_model(cal, spec)
    return multilabel_rule(None if cal is not None else load(), prompt_set, threshold, background, cal)


def multilabel_rule(
    loaded: LoadedModel | None,
    prompt_set: PromptSet,
    threshold: float = 0.5,
    background: str | None = None,
    calibration: Any = None,
) -> Any:
    """The :class:`~zeroshot.uses.ranking.MultiLabel` rule for this model and prompt set.

    A :class:`Calibration` wins; else a model with a learned ``logit_bias``
    (SigLIP) uses it; else a background class: the prompt set's templates (the default pack's when
    it has none) filled with ``background``.
    """
    from ..text.classifier import encode_prompt_set, logit_bias
    from ..text.prompts import DEFAULT_PACK, PromptSet, load_pack
    from .ranking import DEFAULT_BACKGROUND, MultiLabel

    if calibration is not None:
        return MultiLabel(threshold=threshold, kind="calibrated", scale=calibration.a, bias=calibration.b)
    if loaded is None:
        raise ValueError("an uncalibrated multi-label rule needs the loaded model")
    bias = logit_bias(loaded)
    if bias is not None:
        return MultiLabel(threshold=threshold, kind="model", bias=bias)
    templates = prompt_set.templates or load_pack(DEFAULT_PACK).templates
    ref = PromptSet(name="background", classes=(background or DEFAULT_BACKGROUND,), templates=templates)
    return MultiLabel(threshold=threshold, kind="background", background=encode_prompt_set(loaded, ref)[0])
