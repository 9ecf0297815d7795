"""Loading without waste: no random initialisation of weights a checkpoint overwrites, and no
``transformers`` import for the models that do not use it. Both measured in the README."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """open_clip and huggingface_hub log and warn freely while loading; we report failures ourselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class _OpenClipWithoutTransformers(importlib.abc.MetaPathFinder):
    """Import open_clip without the ``transformers`` it imports eagerly whenever it is installed.

    Only a few families use it (their tokenizer or text tower), yet importing it costs every run
    0.8 s on a 2-core CPU, a fifth of a one-image classification. Installed on ``sys.meta_path`` by
    the CLI (:func:`defer_transformers`), this finder wraps open_clip's own loader so that, while the
    package executes, ``import transformers`` fails as if it were absent; :func:`attach_transformers`
    hands it over before a model that needs it is built. Library users' imports are left alone.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "open_clip" or "open_clip" in sys.modules:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and "transformers" not in sys.modules:
            spec.loader = _HidingLoader(spec.loader)
        return spec


class _HidingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # "import transformers" -> ImportError
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get("transformers", 0) is None:
                del sys.modules["transformers"]


def defer_transformers() -> None:
    """For the CLI: open_clip, when it is imported, comes without transformers until a model needs it."""
    if "open_clip" not in sys.modules and not any(isinstance(f, _OpenClipWithoutTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpenClipWithoutTransformers())


def attach_transformers() -> None:
    """Give open_clip the transformers that :func:`defer_transformers` kept from it (an ImportError
    here, when it is not installed, becomes the one-line "needs the 'transformers' package")."""
    hf_model = sys.modules.get("open_clip.hf_model")
    if hf_model is None or getattr(hf_model, "transformers", None) is not None:
        return
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    hf_model.transformers, hf_model.AutoConfig = transformers, AutoConfig  # type: ignore[attr-defined]
    hf_model.AutoModel, hf_model.AutoTokenizer = AutoModel, AutoTokenizer  # type: ignore[attr-defined]


# torch.nn.init's in-place initialisers, and the tensor methods that timm's own trunc_normal_ uses.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_INIT_METHODS = ("uniform_", "normal_", "erfinv_")


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Build modules without drawing their random initial weights: every one is overwritten anyway.

    open_clip builds a model with random weights, then copies the checkpoint over it. The drawing
    is pure waste (22 s of a 1.9-billion-parameter MetaCLIP 2 model's load on a 2-core CPU, 0.9 s
    of ViT-B-32's); with it skipped, parameters stay uninitialised memory until the copy. That is
    safe only because :func:`open_clip.create_model_from_pretrained` loads a full checkpoint with
    ``strict=True`` (every parameter and persistent buffer must be in it) or raises. Buffers not in
    checkpoints (causal masks, rotary tables, position ids) are computed, never drawn: untouched.
    """
    import torch

    init = torch.nn.init
    saved: dict[tuple[Any, str], Any] = {}
    for name in _INIT_FUNCTIONS:
        if hasattr(init, name):
            saved[(init, name)] = getattr(init, name)
            setattr(init, name, _keep)
    for name in _INIT_METHODS:
        saved[(torch.Tensor, name)] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, _keep)
    try:
        yield
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def _keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor
