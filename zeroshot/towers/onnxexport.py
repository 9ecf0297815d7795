"""The CPU engine's files: an image tower exported to ONNX once, checked against torch, cached.

The first run of a model with ``--runtime onnx`` (the default on the CPU) exports its image tower
(``encode_image``, raw features, dynamic batch) with torch's ONNX exporter, runs the file in ONNX
Runtime next to torch on random batches of 1 and 3 images, and keeps it only if the two agree
(features within 1e-4 of their scale, cosine at least 0.99999). ``--precision int8`` quantizes
that file's weights to int8 (ONNX Runtime's dynamic quantization) into a file of its own, checked
the same way with an int8 bound (cosine at least 0.99). A tower that cannot be exported or that
disagrees is written down with the reason, once, and runs on torch with a one-line note.

Everything lives under ``<cache>/onnx/<digest>/`` (``image.onnx``, its weights beside it when the
model is over 2 GB, ``meta.json``), keyed by the image-embedding key of the model (architecture,
weights identity, open_clip and torch versions, preprocessing), the precision and this format's
version, and written to a temporary folder renamed into place: a reader sees a whole engine or none.
One run at a time makes an engine (``<cache>/onnx/<digest>.lock``): a second run started meanwhile
waits, then finds the first one's. A cache that cannot be written is named once per run, with its
cost (the export is made again on every run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..base import cache

SUBDIR = cache.ONNX_SUBDIR
FORMAT = 1
OPSET = 17
MODEL_FILE = "image.onnx"  # the image tower's; the text tower's is "text.onnx" (zeroshot.towers.onnxtext)
META_FILE = "meta.json"
REJECTED_FILE = "rejected.json"
# Agreement asked of an exported tower, on random pixels (fp32: last-digit differences only).
FP32_RELATIVE, FP32_COSINE, INT8_COSINE = 1e-4, 0.99999, 0.99
Engine = tuple[Path | bytes, dict[str, Any]]  # the model (a file, or its bytes in memory) and its metadata


def runtime_image_key(image_key: str, runtime: str, precision: str) -> str:
    """The image-embedding cache key for features made by ``runtime``: the torch tower's own key
    unchanged (caches written before the CPU engine still hit), ONNX Runtime's its own (its
    features differ from torch's in the last digits, int8's by more)."""
    if runtime == "torch":
        return image_key
    return cache.key_text({"kind": "image-embeddings", "model_key": image_key, "runtime": runtime,
                           "precision": precision})  # fmt: skip


def engine_dir(image_key: str, precision: str, tower: str = "image") -> Path:
    return cache.cache_dir() / SUBDIR / cache.key_digest(_engine_key(image_key, precision, tower))


def _engine_key(image_key: str, precision: str, tower: str = "image") -> str:
    return cache.key_text({"kind": f"onnx-{tower}-tower", "model_key": image_key, "precision": precision,
                           "format": FORMAT, "opset": OPSET})  # fmt: skip


def lock_path(image_key: str, precision: str, tower: str = "image") -> Path:
    """The lock file a run holds while it makes this engine (beside the engine's folder)."""
    folder = engine_dir(image_key, precision, tower)
    return folder.with_name(folder.name + ".lock")


def model_file(tower: str) -> str:
    return MODEL_FILE if tower == "image" else f"{tower}.onnx"


def read_engine(image_key: str, precision: str, tower: str = "image") -> Engine | str | None:
    """The cached engine's model file and metadata, or the reason it was rejected (a str), or None
    when there is none yet (or it is unreadable: it is made again). ``tower``: image or text."""
    folder = engine_dir(image_key, precision, tower)
    key = _engine_key(image_key, precision, tower)
    for name in (META_FILE, REJECTED_FILE):
        try:
            meta = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("key") != key:
            continue
        if name == REJECTED_FILE:
            return str(meta.get("reason") or "rejected")
        if (folder / model_file(tower)).is_file():
            return folder / model_file(tower), meta
    return None


def describe(folder: Path) -> dict[str, Any]:
    """What a cached engine folder is, for ``zeroshot cache``: its tower, model, weights and
    precision, when it was made, and how long that took, or why it was rejected; ``problem``
    when its description cannot be read (a run makes that engine again)."""
    for name in (META_FILE, REJECTED_FILE):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            key = json.loads(meta["key"])
            model = json.loads(key.get("model_key", "{}"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {"problem": f"{name} is unreadable ({_one_line(e)})"}
        if not isinstance(meta, dict) or not isinstance(key, dict) or not isinstance(model, dict):
            return {"problem": f"{name} is not an engine's description"}
        kind = str(key.get("kind", ""))
        out = {"tower": kind.removeprefix("onnx-").removesuffix("-tower") or "?", "model": model.get("model", "?"),
               "weights": _weights_text(model.get("weights")), "precision": key.get("precision", "?"),
               "created": meta.get("created", "?")}  # fmt: skip
        if name == REJECTED_FILE:
            out["reason"] = str(meta.get("reason", "rejected"))
        elif "seconds" in meta:
            out["seconds"] = meta["seconds"]
        return out
    return {"problem": f"it holds no {META_FILE} (an unfinished engine: it is made again)"}


def _weights_text(weights: Any) -> str:
    """The weights' identity in a few words: a tag, a Hub id, a checkpoint's content hash."""
    if not isinstance(weights, dict):
        return "?"
    kind = weights.get("kind")
    if kind == "tag":
        return str(weights.get("tag"))
    if kind == "hf-hub":
        return f"hf-hub:{weights.get('id')}"
    if kind == "file":
        return f"file sha256 {str(weights.get('sha256'))[:12]}"
    return str(kind)


def cached_tower(image_key: str, precision: str, threads: int = 0) -> Any:
    """The cached engine as an :class:`~zeroshot.towers.runtimes.OnnxTower` that needs no torch (its
    transform is Pillow-only), or None: not exported yet, rejected, or its transform needs the model."""
    from .runtimes import OnnxTower, split_from_spec

    found = read_engine(image_key, precision)
    if not isinstance(found, tuple) or not found[1].get("split"):
        return None
    path, meta = found
    return OnnxTower(path, split=split_from_spec(meta["split"]), precision=precision, threads=threads)


def tower_for(loaded: Any, precision: str, *, threads: int = 0, loading: Any = None) -> tuple[Any, str | None]:
    """``(tower, None)``: the loaded model's image tower in ONNX Runtime, exported (and quantized
    for int8) on first use; or ``(None, reason)`` when it cannot run there (run it on torch)."""
    from ..image.decoding import split_preprocess
    from ..model.weightfiles import image_cache_key
    from .runtimes import OnnxTower, split_spec

    found = find_or_make(loaded, image_cache_key(loaded), precision, loading=loading)
    if isinstance(found, str):
        return None, found
    split = split_preprocess(loaded.preprocess)
    preprocess = None if split_spec(split) is not None else loaded.preprocess
    return OnnxTower(found[0], split=split, preprocess=preprocess, precision=precision, threads=threads), None


def find_or_make(
    loaded: Any,
    image_key: str,
    precision: str,
    tower: str = "image",
    build: Callable[[Any, Path], dict] | None = None,
    loading: Any = None,
) -> Engine | str:
    """The cached engine (or the reason it was rejected), else made now (:func:`make_engine`) and
    stored. Checking the cache, making and storing hold the engine's lock, so of the runs that
    find no engine at once, one makes it and the others wait and read it (``loading`` shows the
    wait, then the making); a cache where the lock cannot be taken makes it unlocked."""
    found = read_engine(image_key, precision, tower)
    if found is not None:
        return found
    what = precision if tower == "image" else f"{tower}, {precision}"

    def waiting() -> None:
        if loading is not None:
            loading.notes([f"{loaded.spec.label}: another zeroshot run is exporting its CPU engine ({what}); "
                           "waiting for it"])  # fmt: skip

    with cache.exclusive(lock_path(image_key, precision, tower), waiting):
        found = read_engine(image_key, precision, tower)
        if found is not None:
            return found
        with loading.engine(loaded.spec, what) if loading is not None else contextlib.nullcontext():
            return make_engine(loaded, image_key, precision, tower, build)


def _unwritable(error: BaseException) -> None:
    cache.warn_unwritable("the CPU engine's export", error, "it is exported again on every run")


def make_engine(
    loaded: Any, image_key: str, precision: str, tower: str = "image", build: Callable[[Any, Path], dict] | None = None
) -> Engine | str:
    """Export (for int8: quantize the fp32 export), check and store the engine; the reason when it
    cannot run. A cache that cannot be written (read-only, full) costs the next run the export, not
    this run its engine: it is made in a temporary folder outside the cache and kept in memory."""
    try:
        work, in_cache = Path(tempfile.mkdtemp(prefix=".export-", dir=_ensure(cache.cache_dir() / SUBDIR))), True
    except OSError as e:
        _unwritable(e)
        work, in_cache = Path(tempfile.mkdtemp(prefix="zeroshot-onnx-")), False
    began = time.perf_counter()
    try:
        try:
            figures = _build(loaded, image_key, precision, work, tower, build)
        except OSError as e:  # the cache's disk, not the model: once more outside it
            if not in_cache:
                raise
            _unwritable(e)
            shutil.rmtree(work, ignore_errors=True)
            work, in_cache = Path(tempfile.mkdtemp(prefix="zeroshot-onnx-")), False
            figures = _build(loaded, image_key, precision, work, tower, build)
    except Exception as e:  # an exporter or runtime that cannot take this model: its reason, once
        shutil.rmtree(work, ignore_errors=True)
        done = "quantized to int8" if precision == "int8" else "exported to ONNX"
        reason = f"its {tower} tower could not be {done} ({_one_line(e)})"
        return _store(image_key, precision, None, {"reason": reason}, tower)
    if "reason" in figures:
        shutil.rmtree(work, ignore_errors=True)
        return _store(image_key, precision, None, figures, tower)
    from ..image.decoding import split_preprocess
    from .runtimes import split_spec

    meta = {"precision": precision, "opset": OPSET, "split": split_spec(split_preprocess(loaded.preprocess)),
            "embed_dim": loaded.embed_dim, "seconds": round(time.perf_counter() - began, 2), **figures}  # fmt: skip
    if in_cache:
        stored = _store(image_key, precision, work, meta, tower)
        if not isinstance(stored, str) or not work.is_dir():
            return stored
    return _in_memory(work, meta, tower)


def _build(
    loaded: Any, image_key: str, precision: str, work: Path, tower: str, build: Callable[[Any, Path], dict] | None
) -> dict[str, Any]:
    """The engine's model file in ``work``, checked: its agreement figures, or ``{"reason": ...}``.
    A tower other than the image one brings its own ``build`` (the text tower: :mod:`zeroshot.towers.onnxtext`)."""
    if build is not None:
        return build(loaded, work / model_file(tower))
    if precision == "int8":
        base = read_engine(image_key, "fp32")
        if isinstance(base, str):
            return {"reason": base}  # the fp32 export's own reason
        if base is None:  # exported here for the quantizer, not kept
            (work / "fp32").mkdir()
            _export(loaded, work / "fp32" / MODEL_FILE)
            base = (work / "fp32" / MODEL_FILE, _check(loaded, work / "fp32" / MODEL_FILE, "fp32"))
            if "reason" in base[1]:
                return base[1]
        assert isinstance(base[0], Path)
        _quantize(base[0], work / MODEL_FILE)
        shutil.rmtree(work / "fp32", ignore_errors=True)
    else:
        _export(loaded, work / MODEL_FILE)
    return _check(loaded, work / MODEL_FILE, precision)


def _in_memory(work: Path, meta: dict[str, Any], tower: str) -> Engine | str:
    """An engine that could not be stored, read into memory (a model over 2 GB, whose weights are a
    file of their own, cannot be)."""
    try:
        if any(p.name != model_file(tower) for p in work.iterdir()):
            return f"its exported {tower} tower (over 2 GB) could not be stored: the cache cannot be written"
        return (work / model_file(tower)).read_bytes(), meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _store(image_key: str, precision: str, work: Path | None, meta: dict[str, Any], tower: str) -> Engine | str:
    """Put an engine (``work``, a folder holding the model) or a rejection (``work`` None) in place;
    what is in place then (another run's, when it was first), or why there is none."""
    key = _engine_key(image_key, precision, tower)
    meta = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
    folder = engine_dir(image_key, precision, tower)
    try:
        if work is None:
            work = Path(tempfile.mkdtemp(prefix=".rejected-", dir=_ensure(folder.parent)))
        (work / (REJECTED_FILE if "reason" in meta else META_FILE)).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.replace(work, folder)  # atomic; fails when another run put one there first: keep theirs
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except OSError as e:
        _unwritable(e)
    found = read_engine(image_key, precision, tower)
    if found is None:
        return str(meta.get("reason", "the engine could not be stored"))
    return found


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def input_shape(loaded: Any) -> tuple[int, ...]:
    """The model input of one image, [3, H, W], as the model's own transform makes it."""
    from PIL import Image

    return tuple(loaded.preprocess(Image.new("RGB", (64, 48))).shape)


def _image_tower(model: Any) -> Any:
    """``encode_image`` alone, as a module for the exporter (raw features, as torch gives them)."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            return self.model.encode_image(pixels)

    return ImageTower().eval()


def _export(loaded: Any, path: Path) -> None:
    import warnings

    import torch

    if loaded.precision != "fp32" or str(loaded.device) != "cpu":
        raise ValueError(f"the CPU engine exports fp32 models on the CPU, not {loaded.precision} on {loaded.device}")
    pixels = torch.randn((2, *input_shape(loaded)), generator=torch.Generator().manual_seed(0))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX form
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _image_tower(loaded.model), (pixels,), str(path), opset_version=OPSET, dynamo=False,
                input_names=["pixels"], output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            )  # fmt: skip
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    _one_weights_file(path)


def _one_weights_file(path: Path) -> None:
    """Over 2 GB, the exporter writes each weight to a file of its own: gather them into one."""
    folder = path.parent
    if len([p for p in folder.iterdir() if p.is_file()]) <= 1:
        return
    import onnx

    model = onnx.load(str(path))  # reads the external files too
    for p in folder.iterdir():
        if p != path:
            p.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)  # fmt: skip


def _quantize(source: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = any(p != source for p in source.parent.iterdir() if p.name.startswith(source.name))
    with _quiet_quantizer():
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=big)  # fmt: skip


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer gives advice on the root logger (which, with no handler there,
    would install one on stderr for good) and through warnings; while it runs, its records are
    dropped (no one else's) and nothing is installed."""
    import logging
    import warnings

    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None

    def not_the_quantizers(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts

    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(not_the_quantizers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(not_the_quantizers)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _check(loaded: Any, path: Path, precision: str) -> dict[str, Any]:
    """How the file agrees with torch on random batches of 1 and 3 (other than the export's 2):
    the figures, or ``{"reason": ...}`` when they are not close enough."""
    import numpy as np
    import torch

    from .runtimes import OnnxTower

    tower = OnnxTower(path, split=None, precision=precision)
    gen = torch.Generator().manual_seed(1)
    worst_rel, worst_cos = 0.0, 1.0
    for n in (1, 3):
        pixels = torch.randn((n, *input_shape(loaded)), generator=gen)
        with torch.inference_mode():
            ref = loaded.model.encode_image(pixels).float().numpy().astype(np.float64)
        got = tower.session.run(None, {tower.input_name: pixels.numpy()})[0].astype(np.float64)
        if got.shape != ref.shape:
            shapes = f"{list(got.shape)} for a batch of {n}, torch {list(ref.shape)}"
            return {"reason": f"its exported image tower gives features of shape {shapes}"}
        worst_rel = max(worst_rel, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
        cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
    figures: dict[str, Any] = {"max_relative_difference": worst_rel, "min_cosine": worst_cos}
    ok = worst_cos >= INT8_COSINE if precision == "int8" else (worst_rel <= FP32_RELATIVE and worst_cos >= FP32_COSINE)
    if not ok:
        what = "int8 image tower" if precision == "int8" else "exported image tower"
        figures["reason"] = f"its {what} disagrees with torch (cosine {worst_cos:.6f}, difference {worst_rel:.1e})"
    return figures


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
