"""What a run was made with: the identity fields ``eval`` records carry, and the sidecar manifest
``classify --output FILE`` writes beside its records (``FILE.manifest.json``, or ``--manifest PATH``).

A JSONL file alone says nothing about how it was made. The manifest names the command line, the
package versions, the model and its weights (tag, Hub id or SHA-256), the image preprocessing, the
prompt set (its SHA-256 and classes), precision, device, start and end times, the record and error
counts and where the time went. It is written atomically, once the run ends (an interrupted run
leaves none, as it leaves no ``--output`` file), and read back with :func:`read_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..base.files import Destination
    from ..model.models import ModelSpec
    from ..text.prompts import PromptSet

FORMAT = "zeroshot-manifest/1"
SUFFIX = ".manifest.json"


def manifest_path(output: Path) -> Path:
    """Where ``--output FILE``'s manifest goes by default: ``FILE.manifest.json``."""
    return output.with_name(output.name + SUFFIX)


def versions() -> dict[str, str | None]:
    """zeroshot's, Python's and the versions of the packages that made the numbers; transformers
    only when this run imported it (the families with a Hugging Face text tower or tokenizer)."""
    names = ["zeroshot-clip", "open_clip_torch", "torch", "timm", "pillow", "numpy"]
    if sys.modules.get("transformers") is not None:
        names.append("transformers")
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out["zeroshot" if name == "zeroshot-clip" else name] = version(name)
        except PackageNotFoundError:
            out["zeroshot" if name == "zeroshot-clip" else name] = None
    return out


def prompts_hash(prompt_set: PromptSet) -> str:
    """SHA-256 of what makes the class embeddings: the classes, the templates and any class's own
    prompts (canonical JSON), so equal hashes mean equal prompts whatever the set is called."""
    data = {"classes": list(prompt_set.classes), "templates": list(prompt_set.templates),
            "class_prompts": prompt_set.specs_data()}  # fmt: skip
    text = json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def identity(
    spec: ModelSpec, prompt_set: PromptSet, *, precision: str, device: str, preprocess: str | None
) -> dict[str, Any]:
    """The fields that say which numbers these are: model, weights, preprocessing, prompts,
    precision, device and versions (``eval`` records and manifests carry them alike)."""
    from ..base import cache
    from ..model.weightfiles import weights_identity

    return {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "weights": weights_identity(spec, cache.hash_memo_dir()),
        "preprocess": preprocess,
        "precision": precision,
        "device": device,
        "prompts": {
            "name": prompt_set.name,
            "sha256": prompts_hash(prompt_set),
            "classes": list(prompt_set.classes),
            "templates": len(prompt_set.templates),
            "prompts": prompt_set.prompt_count(),
        },
        "versions": versions(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class RunManifest:
    """Collects a run's manifest as it goes; :meth:`write` puts it on disk when the run ends."""

    path: Path | Destination
    output: str | None
    fmt: str
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    started: str = field(default_factory=_now)
    clock: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        """Seconds from the run's start to now, under ``name`` (first time only)."""
        self.timings.setdefault(name, round(time.perf_counter() - self.clock, 4))

    def write(self, records: int, errors: int) -> None:
        from ..base.files import write_named

        self.mark("total")
        data = {
            "format": FORMAT,
            "command": self.command,
            "output": self.output,
            "output_format": self.fmt,
            **self.fields,
            "started": self.started,
            "finished": _now(),
            "records": records,
            "errors": errors,
            "seconds": self.timings,
        }
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        write_named(self.path, text.encode("utf-8"), "--manifest")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest read back (a JSON object with the :data:`FORMAT` tag), or ValueError."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a zeroshot run manifest")
    return data
