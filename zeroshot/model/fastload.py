"""Loading without waste: no random initialisation of weights a checkpoint overwrites, and no
``transformers``, ``timm`` or ``torch._dynamo`` import for the runs that do not use them."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Iterator
from typing import Any


class _LeanOpenClip(importlib.abc.MetaPathFinder):
    """Import open_clip without what most runs never use, for the CLI's first answer.

    Importing open_clip costs 2.6 s on a 2-core CPU, of which the first answer needs a quarter:
    it imports ``transformers`` (0.8 s) and ``timm`` (0.2 s) whenever they are installed, though
    only some families use them, and its ``torchvision`` import pulls in ``torch._dynamo`` (0.9 s
    to import, and as much again to tear down at exit), which torchvision's ``roi_align`` names at
    import time but calls only when an op runs. Installed on ``sys.meta_path`` by the CLI
    (:func:`lean_open_clip`), this finder wraps open_clip's own loader so that, while the package
    executes, ``import transformers`` and ``import timm`` fail as if they were absent (open_clip
    expects that), and ``torch._dynamo.utils`` is a stand-in offering only the functions named in
    :data:`_DYNAMO_FORWARDS`, each importing the real one when first called. Anything else asked of
    the stand-in fails the import, which is then done again with the real ``torch._dynamo``: a new
    torchvision costs time, never correctness. :func:`attach_optional` hands transformers and timm
    over before a model that needs them is built. Library users' imports are left alone.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "open_clip" or "open_clip" in sys.modules:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _LeanLoader(spec.loader)
        return spec


# What torchvision takes from torch._dynamo.utils when it is imported (functions only).
_DYNAMO_FORWARDS = ("is_compile_supported",)
_OPTIONAL = ("transformers", "timm")


def _forward(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        real = importlib.import_module("torch._dynamo.utils")
        return getattr(real, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _dynamo_stand_ins() -> dict[str, Any]:
    """Stand-ins for ``torch._dynamo`` and ``torch._dynamo.utils`` (none when it is loaded already)."""
    import types

    if "torch._dynamo" in sys.modules:
        return {}
    package = types.ModuleType("torch._dynamo", "zeroshot's import-time stand-in (see zeroshot.model.fastload)")
    package.__path__ = []
    utils = types.ModuleType("torch._dynamo.utils")
    for name in _DYNAMO_FORWARDS:
        setattr(utils, name, _forward(name))
    return {"torch._dynamo": package, "torch._dynamo.utils": utils}


class _LeanLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        hidden = [name for name in _OPTIONAL if name not in sys.modules]
        stand_ins = _dynamo_stand_ins()
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # "import timm" -> ImportError
        sys.modules.update(stand_ins)
        try:
            try:
                self.loader.exec_module(module)
            except Exception:
                if not stand_ins:
                    raise
                _remove(stand_ins)  # something wanted more of torch._dynamo: the real one, then
                stand_ins = {}
                self.loader.exec_module(module)
        finally:
            _remove(stand_ins)
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]


def _remove(modules: dict[str, Any]) -> None:
    for name, module in modules.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]


def lean_open_clip() -> None:
    """For the CLI: open_clip, when it is imported, comes without transformers, timm and
    torch._dynamo until something needs them."""
    if "open_clip" not in sys.modules and not any(isinstance(f, _LeanOpenClip) for f in sys.meta_path):
        sys.meta_path.insert(0, _LeanOpenClip())


def attach_optional(transformers: bool = True, timm: bool = True) -> None:
    """Give open_clip the packages :func:`lean_open_clip` kept from it (an ImportError here, when one
    is not installed, becomes the one-line "needs the 'transformers' package")."""
    if transformers:
        _attach_transformers()
    if timm:
        _attach_timm()


def _attach_transformers() -> None:
    hf_model = sys.modules.get("open_clip.hf_model")
    if hf_model is None or getattr(hf_model, "transformers", None) is not None:
        return
    import transformers  # noqa: F401  (an ImportError here is the one-line "needs the package")

    # Run the module again, now that its imports succeed. Binding a few names by hand is not enough:
    # it uses more of transformers at call time (ClsPooler checks BaseModelOutputWithPooling, which
    # stayed unbound: NLLB-CLIP failed with a NameError from the command line). A reload executes it
    # in the same namespace, which the classes open_clip.model already holds read their globals from.
    importlib.reload(hf_model)


def _attach_timm() -> None:
    timm_model = sys.modules.get("open_clip.timm_model")
    if timm_model is None or getattr(timm_model, "timm", None) is not None:
        return
    try:
        import timm  # noqa: F401
    except ImportError:  # open_clip requires it; without it, open_clip's own error for a timm model
        return

    # Run the module again in its own namespace, now that its ``import timm`` succeeds: the
    # TimmModel class open_clip.model holds reads timm and its layers from that namespace.
    importlib.reload(timm_model)


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

    Only the calling thread skips: while any thread is inside, torch's initialisers are wrappers
    that draw as usual for every other thread (a library user's model built meanwhile is random as
    it should be); the last thread out puts the originals back.
    """
    global _inside
    with _patch_lock:
        if _inside == 0:
            _install()
        _inside += 1
    _skipping.active = getattr(_skipping, "active", 0) + 1
    try:
        yield
    finally:
        _skipping.active -= 1
        with _patch_lock:
            _inside -= 1
            if _inside == 0:
                _uninstall()


_skipping = threading.local()  # .active > 0: this thread builds a model whose weights a checkpoint overwrites
_patch_lock = threading.Lock()
_inside = 0  # threads inside skip_random_init
_originals: dict[tuple[Any, str], Any] = {}


def _install() -> None:
    import torch

    for owner, names in ((torch.nn.init, _INIT_FUNCTIONS), (torch.Tensor, _INIT_METHODS)):
        for name in names:
            original = getattr(owner, name, None)
            if original is not None:
                _originals[(owner, name)] = original
                setattr(owner, name, _skipping_in_this_thread(original))


def _uninstall() -> None:
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()


def _skipping_in_this_thread(original: Any) -> Any:
    @functools.wraps(original)
    def init(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_skipping, "active", 0):
            return tensor
        return original(tensor, *args, **kwargs)

    return init
