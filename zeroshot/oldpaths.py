"""The module paths of zeroshot 0.1, from before the package was grouped into folders by CLIP's
parts: ``import zeroshot.models`` and ``from zeroshot.pipeline import classify_inputs`` still work.

An old path is the new module itself, not a copy: ``zeroshot.models is zeroshot.model.models``,
so ``monkeypatch.setattr(zeroshot.models, ...)`` patches what the package calls. The few names that
moved to another module with the new layout are found through their old module too. Nothing in the
package imports an old path; they are for code written against 0.1.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

# each folder now, and the flat modules of 0.1 that went into it
FOLDERS = {
    "base": "errors files cache",
    "model": "models hub weightfiles loadfailure fastload preprocessing catalog",
    "text": "prompts promptcheck classifier texttower",
    "image": "reading images video videodecode decoding streams tensordecode imagecache idx",
    "towers": "runtimes onnxexport onnxtext pipeline",
    "uses": "ranking clips evaluate calibration adapt export report manifest output resume",
    "engines": "distributed raysession",
}
# old module (under zeroshot.) -> its module now
OLD_PATHS = {name: f"{folder}.{name}" for folder, names in FOLDERS.items() for name in names.split()}

# old module -> {name in 0.1: (module now, name now)} for what moved between modules
MOVED_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "models": {
        name: ("model.devices", name)
        for name in ("Precision", "PRECISIONS", "resolve_precision", "resolve_device", "_no_gpu_driver")
    },
    "runtimes": {"exact_fp32": ("model.devices", "exact_fp32")},
    "imagecache": {"image_cache_key": ("model.weightfiles", "image_cache_key")},
    "classifier": {"multilabel_rule": ("uses.calibration", "multilabel_rule")},
    "pipeline": {
        "classify_inputs": ("uses.records", "classify_inputs"),
        "encoded_records": ("uses.records", "encoded_records"),
        "record_batches": ("uses.records", "record_batches"),
        "_stacked": ("uses.records", "stacked"),
    },
}

PACKAGE = __name__.rpartition(".")[0]


class _OldPathFinder:
    """Answers an old path with the module now at the new one (imported if it is not yet): a meta
    path finder and its own loader (not derived from ``importlib.abc``, whose import costs every
    command ~10 ms of ``importlib.resources``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != PACKAGE or old not in OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        old = spec.name.rpartition(".")[2]
        module = importlib.import_module(f"{PACKAGE}.{OLD_PATHS[old]}")
        moved = MOVED_NAMES.get(old)
        if moved and "__getattr__" not in vars(module):
            module.__getattr__ = _moved_lookup(module.__name__, moved)  # type: ignore[method-assign]
        # the import system sets __spec__ to this alias's spec: exec_module puts the real one back
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        alias = module.__spec__
        if alias is not None and alias.loader_state is not None:
            module.__spec__ = alias.loader_state


def _moved_lookup(module_name: str, moved: dict[str, tuple[str, str]]) -> Any:
    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        where, now = moved[name]
        return getattr(importlib.import_module(f"{PACKAGE}.{where}"), now)

    return __getattr__


def install() -> None:
    """Put the old paths' finder on ``sys.meta_path`` (once; after the normal finders, so a real
    module always wins)."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
