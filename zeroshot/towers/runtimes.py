"""Where the image tower runs: torch (the model open_clip built) or ONNX Runtime (the same tower
exported once, :mod:`zeroshot.towers.onnxexport`). One small interface, an *image tower*, chosen once in
the assembly (:meth:`zeroshot.assembly.Prepared.image_tower`); the image core
(:class:`zeroshot.towers.pipeline.ImageEncoder`) only calls it:

- ``prepare(payloads, batch)``: the decoded payloads of one batch -> ``batch.pixels``, the model
  input (may run in a helper thread one batch ahead, when ``overlap``);
- ``encode(batch)``: ``batch.pixels`` -> one raw feature row per payload (torch rows on the
  model's device, or numpy float32 rows);
- ``to_numpy(row)`` / ``from_numpy(array)``: a feature row to and from the image-embedding cache.

Each tower also says what the decoders need: ``preprocess`` and ``split`` (the transform, cut
before ``ToTensor``), ``device``, and whether JPEGs may be decoded as a batch on the device.
:class:`OnnxTower` imports neither torch nor open_clip when its transform is one Pillow can run
alone (:func:`split_from_spec`).
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

from ..base.options import named
from ..image.decoding import Split, SquashPilStage, StandardPilStage
from ..model.devices import exact_fp32


class Runtime(str, Enum):
    """``--runtime``: auto is ONNX Runtime on the CPU and torch on CUDA."""

    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"


RUNTIMES = tuple(r.value for r in Runtime)


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def requested_runtime(choice: str | None) -> str:
    """The runtime asked for: ``--runtime``, else ``ZEROSHOT_RUNTIME``, else auto (unchecked)."""
    return (choice or os.environ.get("ZEROSHOT_RUNTIME") or "auto").strip().lower()


def text_runtime(choice: str | None, runtime: str) -> str:
    """Where text classifiers are built when the image tower runs on ``runtime``: ONNX Runtime only
    when onnx is asked for by name. Under auto the model is loaded anyway whenever text is built, and
    torch's text path (prefix sharing) is the faster one on large prompt sets (figures in docs/speed.md)."""
    return "onnx" if runtime == "onnx" and requested_runtime(choice) == "onnx" else "torch"


def resolve_runtime(choice: str | None, device: str, precision: str) -> str:
    """``--runtime`` (else ``ZEROSHOT_RUNTIME``, else auto) for a run on ``device`` at ``precision``
    (``fp32``, ``fp16``, ``bf16`` or ``int8``): ``"torch"`` or ``"onnx"``."""
    from ..base.errors import UsageError

    name = requested_runtime(choice)
    if name not in RUNTIMES:
        raise UsageError(f"{named('runtime', name)}: expected {', '.join(RUNTIMES)} (or ZEROSHOT_RUNTIME)")
    cpu = not device.startswith("cuda")
    if name == "auto":
        name = "onnx" if cpu and precision in ("fp32", "int8") and onnxruntime_available() else "torch"
    if name == "onnx":
        if not cpu:
            raise UsageError(
                f"{named('runtime', 'onnx')} runs on the CPU; on CUDA use {named('runtime', 'torch')} (auto does)"
            )
        if precision not in ("fp32", "int8"):
            raise UsageError(f"{named('runtime', 'onnx')} runs fp32 or int8, not {precision}")
        if not onnxruntime_available():
            raise UsageError(f"{named('runtime', 'onnx')} needs the 'onnxruntime' package: pip install onnxruntime")
    elif precision == "int8":
        raise UsageError(
            f"{named('precision', 'int8')} is ONNX Runtime's: use it with {named('runtime', 'onnx')} (or auto) "
            "on the CPU"
        )
    return name


def onnx_threads(decode_workers: int) -> int:
    """ONNX Runtime's threads beside ``decode_workers`` decoding processes: the cores the decoders
    leave (each worker is busy for a fraction of the model's time, so they share: never fewer than
    the cores less one, at least one); ``ZEROSHOT_ONNX_THREADS`` sets it outright."""
    from ..image.decoding import cpu_count

    forced = os.environ.get("ZEROSHOT_ONNX_THREADS", "").strip()
    if forced.isdigit() and int(forced) > 0:  # measuring the split (benchmarks/runtimes.py)
        return int(forced)
    cores = cpu_count()
    return max(1, cores - max(0, decode_workers - 1)) if cores > 2 else cores


# --- the transform as data, for a tower that runs without torchvision ---------------------------


def split_spec(split: Split | None) -> dict[str, Any] | None:
    """A Pillow-only transform as JSON-able data (None when it needs torchvision)."""
    if split is None:
        return None
    stage = split.pil_stage
    common = {"mean": split.mean, "std": split.std}
    if isinstance(stage, StandardPilStage):
        return {"kind": "shortest", "size": stage.size, "interpolation": stage.interpolation,
                "crop": list(stage.crop), **common}  # fmt: skip
    if isinstance(stage, SquashPilStage):
        return {"kind": "squash", "size": list(stage.size), "interpolation": stage.interpolation, **common}
    return None


def split_from_spec(spec: dict[str, Any]) -> Split:
    """The :class:`~zeroshot.image.decoding.Split` :func:`split_spec` described (no torch needed)."""
    mean = tuple(spec["mean"]) if spec.get("mean") is not None else None
    std = tuple(spec["std"]) if spec.get("std") is not None else None
    if spec["kind"] == "shortest":
        crop = (int(spec["crop"][0]), int(spec["crop"][1]))
        stage = StandardPilStage(int(spec["size"]), spec["interpolation"], crop)
        return Split(stage, mean, std, int(spec["size"]), spec["interpolation"], crop)
    if spec["kind"] == "squash":
        size = (int(spec["size"][0]), int(spec["size"][1]))
        return Split(SquashPilStage(size, spec["interpolation"]), mean, std, None, spec["interpolation"], None)
    raise ValueError(f"unknown transform kind {spec.get('kind')!r}")


def numpy_model_input(payloads: list[Any], split: Split | None) -> Any:
    """Payloads -> float32 [N, 3, H, W]: uint8 HxWx3 pixels normalized with the same float32
    arithmetic as ``ToTensor`` + ``Normalize`` (divide by 255, subtract the mean, divide by the
    std), or float tensors the whole transform made (a transform of another shape)."""
    import numpy as np

    if split is None:  # torch tensors from the transform run whole in the workers
        return np.ascontiguousarray(np.stack([p.numpy() for p in payloads]).astype(np.float32))
    x: Any = np.stack(payloads).astype(np.float32) / np.float32(255)
    if split.mean is not None and split.std is not None:
        x = (x - np.asarray(split.mean, dtype=np.float32)) / np.asarray(split.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# --- the towers ----------------------------------------------------------------------------------


class TorchTower:
    """The model's own ``encode_image`` (CPU or CUDA, any precision): uint8 pixels normalized on
    the device, on CUDA through pinned memory on a second stream, one batch ahead; JPEGs optionally
    decoded as a batch on the device (nvJPEG), falling back to Pillow for what it refuses."""

    runtime = "torch"

    def __init__(self, loaded: Any) -> None:
        from ..image.decoding import split_preprocess

        self.loaded = loaded
        self.device = loaded.device
        self.cuda = str(self.device).startswith("cuda")
        self.preprocess = loaded.preprocess
        self.split = split_preprocess(loaded.preprocess)
        self.precision = loaded.precision
        self.batched: Any = None  # a BatchJpegDecoder, when JPEGs are decoded on the device
        self.fallback: Any = None  # a FileDecoder for the JPEGs it refuses

    @property
    def batched_jpeg(self) -> bool:
        """Whether this tower can take JPEG bytes decoded as a batch on its device."""
        return self.split is not None and self.split.resize is not None

    def use_batched_jpeg(self, fallback: Any) -> None:
        from ..image.tensordecode import BatchJpegDecoder

        assert self.split is not None and isinstance(self.split.pil_stage, StandardPilStage)
        self.batched, self.fallback = BatchJpegDecoder(self.split.pil_stage, self.device), fallback

    @property
    def overlap(self) -> bool:
        """Prepare the next batch in a helper thread while the model runs (copies, batched decoding)."""
        return self.cuda or self.batched is not None

    def prepare(self, payloads: list[Any], batch: Any) -> None:
        import torch

        with torch.inference_mode():
            if self.cuda:
                from ..image.streams import prep_stream

                stream = prep_stream(self.device)
                with torch.cuda.stream(stream):
                    batch.pixels = self._model_input(payloads, batch)
                    batch.event = torch.cuda.Event()
                    batch.event.record(stream)
            else:
                batch.pixels = self._model_input(payloads, batch)

    def _model_input(self, payloads: list[Any], batch: Any) -> Any:
        """Payloads (uint8 pixels, float tensors, JPEG bytes) -> one model input on the device."""
        import torch

        from ..image.decoding import Jpeg
        from ..image.images import ImageError

        device, dtype = self.device, self.loaded.input_dtype
        jpeg_at = [i for i, p in enumerate(payloads) if isinstance(p, Jpeg)]
        if jpeg_at and self.batched is not None:
            for i, px in zip(jpeg_at, self.batched([payloads[i] for i in jpeg_at]), strict=True):
                if px is None:
                    try:
                        px = self.fallback.decode_bytes(payloads[i].data)
                    except ImageError as e:
                        batch.error_for[id(batch.ok[batch.todo[i]][0])] = str(e)
                payloads[i] = px
        keep = [i for i, p in enumerate(payloads) if p is not None]
        if len(keep) < len(payloads):
            batch.todo = [batch.todo[i] for i in keep]
            payloads = [payloads[i] for i in keep]
        if not payloads:
            return None
        if self.split is None:  # whole transform ran in the workers: float tensors
            return torch.stack(payloads).to(device, dtype=dtype, non_blocking=self.cuda)
        from ..image.decoding import to_model_input

        stacked: Any
        if any(isinstance(p, torch.Tensor) for p in payloads):  # some decoded on the device
            stacked = torch.stack([p if isinstance(p, torch.Tensor) else torch.from_numpy(p).to(device)
                                   for p in payloads])  # fmt: skip
        else:
            import numpy as np

            stacked = np.stack(payloads)
        return to_model_input(stacked, self.split, device, dtype)

    def encode(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode(), exact_fp32(self.device, self.precision):
            if batch.event is not None:  # made on the preparing stream: wait for it, and tell the
                # allocator the main stream uses it, so it is not recycled early
                main = torch.cuda.current_stream(self.device)
                main.wait_event(batch.event)
                batch.pixels.record_stream(main)
            return self.loaded.model.encode_image(batch.pixels).float()

    def to_numpy(self, row: Any) -> Any:
        return row.cpu().numpy()

    def from_numpy(self, array: Any) -> Any:
        import torch

        return torch.from_numpy(array.copy()).to(self.device)


class OnnxTower:
    """An exported image tower in an ONNX Runtime session on the CPU: numpy in, numpy out.

    ``split`` (with ``preprocess`` None) when the transform is Pillow-only: then nothing here, in
    the decoding workers or in the session imports torch.
    """

    runtime = "onnx"
    device = "cpu"
    cuda = False
    overlap = False
    batched_jpeg = False

    def __init__(
        self, path: Any, *, split: Split | None, preprocess: Any = None, precision: str = "fp32", threads: int = 0
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers and the like: not for users
        # Threads that wait without spinning leave the cores to the decoding workers between batches
        # (measured: classify 16.8-17.6 images/s against 15.6-17.3 spinning, ViT-B-32, 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = path if isinstance(path, bytes) else str(path)  # a file, or an engine kept in memory
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.path, self.split, self.preprocess, self.precision = path, split, preprocess, precision

    def use_batched_jpeg(self, fallback: Any) -> None:
        raise ValueError("ONNX Runtime's tower takes decoded pixels")

    def prepare(self, payloads: list[Any], batch: Any) -> None:
        batch.pixels = numpy_model_input(payloads, self.split) if payloads else None

    def encode(self, batch: Any) -> Any:
        return self.session.run(None, {self.input_name: batch.pixels})[0]

    def to_numpy(self, row: Any) -> Any:
        return row

    def from_numpy(self, array: Any) -> Any:
        return array.copy()


def as_tower(tower_or_loaded: Any) -> Any:
    """A tower as it is, or a :class:`~zeroshot.model.models.LoadedModel` as its :class:`TorchTower`."""
    return tower_or_loaded if hasattr(tower_or_loaded, "encode") else TorchTower(tower_or_loaded)
