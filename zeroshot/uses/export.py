"""Classifier files: a text classifier exported to share, and read back with its model checked.

One safetensors file (no pickle): the tensor ``weights`` [num_classes, dim] float32, unit rows,
and string metadata saying what it is (``format``), which model it belongs to (architecture,
weights source and the weights' identity: the SHA-256 of a checkpoint file's content, or the
open_clip tag / Hub id), and the prompt set it was built from (classes, templates, per-class
prompts). ``zeroshot build-prompts -o FILE`` writes one; ``zeroshot classify --classifier FILE``
reads it and refuses it when the model in use is not the one it was built for.

Reading needs numpy and safetensors only, as a cache hit does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import cache, files
from ..base.errors import UsageError
from ..base.options import worded
from ..model.models import ModelSpec, model_label
from ..model.weightfiles import weights_identity
from ..text.prompts import ClassPrompts, PromptSet, validate_classes

if TYPE_CHECKING:
    from ..text.classifier import TextClassifier

FORMAT = "zeroshot-classifier"
FORMAT_VERSION = "1"


class ClassifierFileError(UsageError):
    """A --classifier file that cannot be used: unreadable, not ours, or for another model."""


@dataclass
class ClassifierFile:
    """What a classifier file holds."""

    path: Path
    weights: Any  # numpy float32 [num_classes, dim]
    prompt_set: PromptSet
    model: str
    pretrained: str | None
    identity: dict[str, Any]
    meta: dict[str, str]

    @property
    def model_label(self) -> str:
        return model_label(self.model, self.pretrained)

    def text_classifier(self) -> TextClassifier:
        """The file's classes and embeddings as a :class:`~zeroshot.text.classifier.TextClassifier`."""
        from ..text.classifier import TextClassifier

        return TextClassifier(self.prompt_set, self.weights, self.path, True, 0.0)


def _specs_data(prompt_set: PromptSet) -> list[dict[str, Any] | None]:
    return [None if s is None else s.as_data() for s in prompt_set.specs]


def save_classifier(
    path: str | Path | files.Destination, spec: ModelSpec, prompt_set: PromptSet, weights: Any, **info: Any
) -> None:
    """Write ``weights`` (a numpy array [C, dim], as :class:`~zeroshot.text.classifier.TextClassifier`
    holds them) for ``spec`` and ``prompt_set`` to ``path`` (atomically, see
    :func:`zeroshot.base.files.destination`)."""
    import numpy as np
    from safetensors.numpy import save

    dest = path if isinstance(path, files.Destination) else files.destination("", path)
    array = np.ascontiguousarray(weights, dtype=np.float32)
    if array.shape[0] != len(prompt_set.classes):
        raise ValueError(f"{array.shape[0]} rows for {len(prompt_set.classes)} classes")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.model,
        "pretrained": spec.pretrained or "",
        "weights_identity": json.dumps(weights_identity(spec, cache.hash_memo_dir()), sort_keys=True),
        "classes": json.dumps(list(prompt_set.classes), ensure_ascii=False),
        "templates": json.dumps(list(prompt_set.templates), ensure_ascii=False),
        "class_prompts": json.dumps(_specs_data(prompt_set), ensure_ascii=False),
        "name": prompt_set.name,
        "description": prompt_set.description,
        "source": prompt_set.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: str(v) for k, v in info.items()},
    }
    files.write_named(dest, save({"weights": array}, metadata=meta))


def _json_field(meta: dict[str, str], key: str, kind: type, where: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise ClassifierFileError(f"{where}: its '{key}' field is missing or not JSON") from None
    if not isinstance(value, kind):
        raise ClassifierFileError(f"{where}: its '{key}' field is not a {kind.__name__}")
    return value


def _spec_from_data(item: Any, where: str) -> ClassPrompts | None:
    if item is None:
        return None
    if not isinstance(item, dict) or not all(isinstance(v, list) for v in item.values()):
        raise ClassifierFileError(f"{where}: a 'class_prompts' entry is malformed")
    prompts = item.get("prompts")
    return ClassPrompts(
        texts=tuple(map(str, item.get("text", ()))),
        extra=tuple(map(str, item.get("extra", ()))),
        prompts=None if prompts is None else tuple(map(str, prompts)),
    )


def load_classifier(path: str | Path) -> ClassifierFile:
    """Read and check a classifier file; :class:`ClassifierFileError` says what is wrong with it."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    where = f"classifier file {path}"
    if not path.is_file():
        raise ClassifierFileError(f"{where}: no such file")
    try:
        meta = cache.read_metadata(path)
    except cache.CorruptEntry as e:
        raise ClassifierFileError(f"{where}: {e}") from None
    except OSError as e:
        raise ClassifierFileError(f"{where}: cannot read ({e.strerror or e})") from None
    if meta.get("format") != FORMAT:
        how = worded(cli="build-prompts -o FILE", library="zeroshot.uses.export.save_classifier")
        raise ClassifierFileError(f"{where}: not a zeroshot classifier file (write one with {how})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ClassifierFileError(
            f"{where}: format version {meta.get('format_version')!r}, this zeroshot reads {FORMAT_VERSION}"
        )
    try:
        weights = load_file(str(path)).get("weights")
    except (SafetensorError, OSError, ValueError) as e:
        raise ClassifierFileError(f"{where}: unreadable ({' '.join(str(e).split())[:120]})") from None
    classes = _json_field(meta, "classes", list, where)
    templates = _json_field(meta, "templates", list, where)
    specs_data = _json_field(meta, "class_prompts", list, where)
    identity = _json_field(meta, "weights_identity", dict, where)
    if weights is None or weights.dtype != np.float32 or weights.ndim != 2 or len(weights) != len(classes):
        raise ClassifierFileError(f"{where}: its 'weights' tensor is missing or not for its {len(classes)} classes")
    if not np.isfinite(weights).all() or np.abs(np.linalg.norm(weights.astype(np.float64), axis=1) - 1).max() > 1e-3:
        raise ClassifierFileError(f"{where}: its rows are not finite unit vectors")
    if specs_data and len(specs_data) != len(classes):
        raise ClassifierFileError(f"{where}: 'class_prompts' does not match its classes")
    prompt_set = PromptSet(
        name=meta.get("name", path.stem),
        classes=validate_classes(classes, where),
        templates=tuple(map(str, templates)),
        description=meta.get("description", ""),
        source=meta.get("source", ""),
        origin=str(path),
        specs=tuple(_spec_from_data(s, where) for s in specs_data),
    )
    return ClassifierFile(
        path=path,
        weights=weights,
        prompt_set=prompt_set,
        model=meta.get("model", ""),
        pretrained=meta.get("pretrained") or None,
        identity=identity,
        meta=meta,
    )


def check_model(file: ClassifierFile, spec: ModelSpec, embed_dim: int | None = None) -> None:
    """Refuse ``file`` unless ``spec`` is the model (architecture and weights) it was built for."""
    if not spec.matches(file.model, file.identity):
        what = "architecture" if file.model != spec.model else "weights"
        raise ClassifierFileError(
            f"classifier file {file.path} was built for {file.model_label}, but this run uses {spec.label} "
            f"(different {what}): classify with that model, or rebuild the file with build-prompts -o"
        )
    if embed_dim is not None and file.weights.shape[1] != embed_dim:
        raise ClassifierFileError(
            f"classifier file {file.path} holds {file.weights.shape[1]}-d embeddings; {spec.label} makes {embed_dim}-d"
        )
