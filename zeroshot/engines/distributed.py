"""The same classifier on a Ray cluster: Ray Data's streaming batch inference, zeroshot's records.

Install with ``pip install 'zeroshot-clip[ray]'`` (Ray's ``data`` extra). Nothing here is imported by
the rest of zeroshot; without Ray, :func:`require_ray` says what to install.

The pieces:

- :class:`SharedClassifier`: the text classifier as plain data (numpy embeddings, classes, the
  model's identity). It is built once, on the driver (or read from the cache or a classifier file),
  and shipped to the actors; no actor encodes a prompt.
- :class:`ClassifyBatch`: a callable class for ``ray.data.Dataset.map_batches``. Each actor loads
  the model once (on a GPU when Ray gives it one), checks that its weights are the ones the
  classifier was built for, and turns a batch of images (a ``path`` column, plus ``bytes`` when Ray
  read the files) into the CLI's records: the same decoding (the Pillow path: bit-identical to
  open_clip's preprocessing), the same model call and the same scoring. A bad image is a record
  with an ``error``, never a failed task.
- :func:`classify_dataset` / :func:`run`: what ``zeroshot classify --engine ray`` does: build the
  dataset from local paths (expanded on the driver, exactly as the CLI does) or from URIs any Ray
  file reader accepts (``s3://``, ``gs://``, ...), classify with a pool of actors, and write JSON
  Lines (the CLI's records, one per line) or Parquet to a folder. Execution streams: memory is
  bounded by Ray Data's backpressure, not by the number of images. Each run's block files carry a
  token of its own in their names (``zeroshot-TOKEN-...``), which a local folder's mark
  (``_zeroshot-ray.json``, :class:`zeroshot.uses.resume.BlockFolder`) lists before the first block
  is written: resuming, counting and reading back touch those files and nothing else there.

Ray restarts an actor that dies (``max_restarts=-1``) and retries its batch, so a killed worker
loses and duplicates nothing: writes happen after classification, per block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import UsageError

if TYPE_CHECKING:
    from ..image.images import Input
    from ..uses.ranking import Record

RAY_HINT = "the Ray engine needs Ray Data: pip install 'zeroshot-clip[ray]' (or pip install 'ray[data]')"
OUTPUT_FORMATS = ("jsonl", "parquet")


def require_ray() -> Any:
    """Import and return ``ray`` (with ``ray.data``), or raise a :class:`UsageError` saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(RAY_HINT) from None
    return ray


@dataclass
class SharedClassifier:
    """A text classifier as plain, picklable data: what every actor needs, built once."""

    weights: Any  # numpy float32 [num_classes, dim], unit rows
    classes: tuple[str, ...]
    name: str
    model: str
    pretrained: str | None
    identity: dict[str, Any]
    multi_label: dict[str, Any] | None = None  # threshold, kind, scale, bias, background (numpy)
    preprocess: str | None = None  # a checkpoint file's --preprocess TAG
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, spec: Any, text: Any, multi_label: Any = None) -> SharedClassifier:
        """From a :class:`~zeroshot.model.models.ModelSpec` and a :class:`~zeroshot.text.classifier.TextClassifier`."""
        import numpy as np

        from ..base import cache
        from ..model.weightfiles import weights_identity

        weights = text.weights
        rule = None
        if multi_label is not None:
            bg = multi_label.background
            rule = {
                "threshold": multi_label.threshold,
                "kind": multi_label.kind,
                "scale": multi_label.scale,
                "bias": multi_label.bias,
                "background": None if bg is None else bg.detach().float().cpu().numpy(),
            }
        return cls(
            weights=np.ascontiguousarray(weights, dtype=np.float32),
            classes=tuple(text.classes),
            name=text.prompt_set.name,
            model=spec.model,
            pretrained=spec.pretrained,
            identity=weights_identity(spec, cache.hash_memo_dir()),
            multi_label=rule,
            preprocess=spec.preprocess,
        )

    def model_spec(self) -> Any:
        """The model, resolved on this machine (the bundled one wherever this install keeps it)."""
        from ..model.models import spec_built_for

        return spec_built_for(self.model, self.pretrained, self.preprocess)


class ClassifyBatch:
    """``map_batches`` callable: loads the model once per actor, classifies batches of images.

    Input columns: ``path`` (string), optionally ``bytes`` (the file's content, from Ray's readers)
    and ``error`` (a problem already known, e.g. a missing file). Output: a ``pyarrow.Table`` with
    ``path``, ``label``, ``score``, ``error``, ``top_k`` (list of {label, score}), ``labels`` (with
    multi-label) and ``record``, the CLI's JSON record for the row.
    """

    def __init__(
        self,
        classifier: SharedClassifier,
        *,
        top_k: int = 5,
        device: str = "auto",
        precision: str = "auto",
        max_pixels: int | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
        jpeg_draft: bool = False,
        min_score: float | None = None,
        model_batch_size: int | None = None,
        decode_workers: int = 1,
        runtime: str | None = None,
    ) -> None:
        import torch

        from ..image.images import DEFAULT_MAX_PIXELS
        from ..image.reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT
        from ..model.devices import resolve_device, resolve_precision
        from ..model.models import load_model
        from ..towers.pipeline import DecodeOptions, ImageEncoder, default_batch_size
        from ..uses.export import ClassifierFileError
        from ..uses.ranking import MultiLabel

        spec = classifier.model_spec()
        # The weights this node has must be the ones the classifier was built for.
        if not spec.matches(classifier.model, classifier.identity):
            raise ClassifierFileError(
                f"this node's {spec.label} is not the model the classifier was built for "
                f"({classifier.model}, {classifier.identity})"
            )
        from ..assembly import Loading, make_tower, model_precision
        from ..towers.runtimes import resolve_runtime

        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        self.loaded = load_model(spec, dev, model_precision(prec))
        # The actor's image tower: torch, or ONNX Runtime on a CPU actor (exported once per node's cache).
        tower = make_tower(resolve_runtime(runtime, dev, prec), prec, lambda: self.loaded, Loading(), decode_workers)
        self.device = dev
        self.classes = classifier.classes
        self.weights = torch.from_numpy(classifier.weights.copy()).to(dev)
        self.top_k = top_k
        self.min_score = min_score
        self.batch_size = model_batch_size or default_batch_size(dev)
        options = DecodeOptions(
            workers=decode_workers, decoder="pillow", jpeg_draft=jpeg_draft,
            max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
            max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes, timeout=timeout or DEFAULT_TIMEOUT,
        )  # fmt: skip
        # The local engine's image core; the bytes come from Ray's reader, so decoding is done here.
        self.encoder = ImageEncoder(tower, batch_size=self.batch_size, options=options)
        self.decoder = self.encoder.decoder
        # Decoding runs in forked worker processes (as in the local engine) where it can: a file
        # that crashes the decoder then costs its own record, not the actor (whose batch Ray would
        # retry, and crash on, forever).
        from ..image.decoding import processes_usable

        self.decode_workers = decode_workers if processes_usable(self.decoder) else 0
        self.rule = None
        if classifier.multi_label is not None:
            ml = dict(classifier.multi_label)
            bg = ml.pop("background")
            self.rule = MultiLabel(**ml, background=None if bg is None else torch.from_numpy(bg).to(dev))

    def _decode_all(self, paths: Sequence[str], data: Sequence[Any] | None, errors: Sequence[Any] | None) -> list:
        """(payload, error) per input, in order."""
        from ..image.decoding import decode_item, decode_items_in_worker, process_pool
        from ..image.streams import PROCESS_CHUNK, decode_stream

        items = [
            (p, None if data is None else bytes(data[i]), None if errors is None else (errors[i] or None))
            for i, p in enumerate(paths)
        ]
        workers = self.decode_workers
        if workers <= 0:
            return [decode_item(self.decoder, item) for item in items]
        stream = decode_stream(
            items, lambda item: decode_item(self.decoder, item), workers, 4 * PROCESS_CHUNK * workers,
            pool_factory=lambda: process_pool(self.decoder, workers), remote=decode_items_in_worker,
            chunk=PROCESS_CHUNK,
        )  # fmt: skip
        return [(payload, err) for _, payload, err in stream]

    def classify(self, paths: Sequence[str], data: Sequence[Any] | None, errors: Sequence[Any] | None,
                 inputs: Sequence[Input] | None = None) -> list[Record]:  # fmt: skip
        """The CLI's records for these inputs, in order. ``inputs``: rows of local paths, video frames
        among them (:func:`zeroshot.image.video.row_input`), which the local engine's image core reads."""
        from ..image.images import Input
        from ..uses.output import apply_min_score
        from ..uses.records import encoded_records

        if inputs is not None:
            batches = self.encoder.batches(inputs)
        else:
            decoded = [(Input(p), payload, err) for p, (payload, err) in
                       zip(paths, self._decode_all(paths, data, errors), strict=True)]  # fmt: skip
            size = self.batch_size
            batches = self.encoder.encode(decoded[i : i + size] for i in range(0, len(decoded), size))
        recs = encoded_records(batches, self.weights, self.loaded.logit_scale, self.classes, self.top_k, self.rule)
        return [apply_min_score(rec, self.min_score) for rec in recs]

    def __call__(self, batch: dict[str, Any]) -> Any:
        from ..image.video import row_input

        paths, data, errors = [str(p) for p in batch["path"]], batch.get("bytes"), batch.get("error")
        inputs = None
        if "frame" in batch and data is None:  # rows of local paths (frame_row), video frames among them
            inputs = [row_input({k: batch[k][i] for k in batch}) for i in range(len(paths))]
        return records_table(self.classify(paths, data, errors, inputs), multi_label=self.rule is not None)


def records_table(recs: Sequence[Record], *, multi_label: bool = False) -> Any:
    """Records as a ``pyarrow.Table`` with typed columns, and each record's JSON line in ``record``."""
    import pyarrow as pa

    top_type = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    columns: dict[str, Any] = {
        "path": pa.array([r["path"] for r in recs], pa.string()),
        "label": pa.array([r.get("label") for r in recs], pa.string()),
        "score": pa.array([r.get("score") for r in recs], pa.float64()),
        "error": pa.array([r.get("error") for r in recs], pa.string()),
        "top_k": pa.array([r.get("top_k") for r in recs], top_type),
        "time": pa.array([r.get("time") for r in recs], pa.float64()),  # video frames only
        "frame": pa.array([r.get("frame") for r in recs], pa.int64()),
    }
    if multi_label:
        columns["labels"] = pa.array([r.get("labels") for r in recs], pa.list_(pa.string()))
    columns["record"] = pa.array([json.dumps(r, ensure_ascii=False) for r in recs], pa.string())
    return pa.table(columns)


def _block_names(token: str, fmt: str) -> Any:
    """Block file names of one run: ``zeroshot-TOKEN-WRITE-TASK.jsonl`` (Parquet adds ``-N``). The
    token, in the folder's mark before the first block is written, says whose files these are
    (:class:`zeroshot.uses.resume.BlockFolder`); Ray's write id and task index keep them apart, and
    a retried task writes the same name again."""
    from ray.data.datasource import FilenameProvider

    from ..uses.resume import BLOCK_PREFIX

    class BlockNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{BLOCK_PREFIX}{token}-{write_uuid}-{task_index:06}.{fmt}"

    return BlockNames(file_format=fmt)


def _jsonl_datasink(path: str, names: Any) -> Any:
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLinesDatasink(BlockBasedFileDatasink):
        """The ``record`` column, one JSON object per line: the CLI's output, split over files."""

        def __init__(self, path: str) -> None:
            super().__init__(path, file_format="jsonl", filename_provider=names)

        def write_block_to_file(self, block: Any, file: Any) -> None:
            lines = block.to_arrow().column("record").to_pylist()
            file.write("".join(line + "\n" for line in lines).encode("utf-8"))

    return JsonLinesDatasink(path)


def has_scheme(value: str) -> bool:
    """A URI for Ray's file readers (``s3://bucket/x``), not a local path nor an http(s) URL, which
    the actors fetch themselves (with the CLI's timeouts and byte cap)."""
    from ..image.reading import is_url

    if is_url(value):
        return False
    head, sep, _ = value.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").isalnum() and len(head) > 1


def input_dataset(
    inputs: Sequence[str],
    *,
    stdin: Any = None,
    blocks: int | None = None,
    null: bool = False,
    done: set[str] | frozenset[str] = frozenset(),
    video: Any = None,
) -> Any:
    """A Ray dataset of the inputs: local paths expanded as the CLI does (``path``, ``error``), or,
    for URIs, Ray's binary reader over image files (``path``, ``bytes``). Not both kinds at once.
    ``done``: paths a resumed run has records of already, left out (None when nothing is left)."""
    ray = require_ray()
    from ..image.images import IMAGE_EXTENSIONS, iter_inputs

    remote = [i for i in inputs if has_scheme(i)]
    if remote and len(remote) != len(inputs):
        raise UsageError("give either local paths or URIs (s3://...) to --engine ray, not both")
    if remote:
        exts = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        ds = ray.data.read_binary_files(list(remote), include_paths=True, file_extensions=exts)
        return ds.filter(lambda row: row["path"] not in done) if done else ds
    # "" for no error: a column of only None would reach the batches as NaN floats. A video's
    # sampled frames are rows of their own (frame_row), so a long video spreads over the actors.
    from ..image.video import VideoOptions, expand, frame_row, unit_key

    found = expand(iter_inputs(inputs, stdin=stdin, null=null), video or VideoOptions())
    items = [frame_row(inp) for inp in found]
    if not items:
        raise UsageError("no inputs")
    items = [item for item in items if unit_key(item) not in done]
    if not items:
        return None
    return ray.data.from_items(items, override_num_blocks=blocks or min(len(items), 200))


def classify_dataset(
    ds: Any,
    classifier: SharedClassifier,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    batch_size: int = 64,
    **options: Any,
) -> Any:
    """``ds.map_batches(ClassifyBatch, ...)`` with a pool of ``workers`` actors."""
    import ray.data

    device = "cuda" if gpus_per_worker > 0 else "cpu"
    kwargs: dict[str, Any] = {}
    if cpus_per_worker is not None:
        kwargs["num_cpus"] = cpus_per_worker
    if gpus_per_worker:
        kwargs["num_gpus"] = gpus_per_worker
    return ds.map_batches(
        ClassifyBatch,
        fn_constructor_args=(classifier,),
        fn_constructor_kwargs={"device": device, **options},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        **kwargs,
    )


def count_output(folder: str | Path, fmt: str) -> tuple[int, int]:
    """(records, errors) in an output folder written by :func:`run` (local folders only): its
    block files, not whatever else the folder holds."""
    total = errors = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for f in _blocks(folder, fmt):
            column = pq.read_table(f, columns=["error"]).column("error")
            total += len(column)
            errors += len(column) - column.null_count
        return total, errors
    for line in _jsonl_lines(folder):
        total += 1
        # Exact without parsing: inside JSON strings a quote is escaped, so this is only ever the key.
        errors += '"error": ' in line
    return total, errors


def tally_output(folder: str | Path, fmt: str) -> Any:
    """What the records of an output folder stand for (:class:`zeroshot.uses.output.Tally`: inputs,
    a video's sampled frames counted apart), in file order; local folders only."""
    from ..uses.output import Tally

    tally = Tally()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for f in _blocks(folder, fmt):
            names = pq.read_schema(f).names
            for row in pq.read_table(f, columns=[c for c in ("path", "time", "error") if c in names]).to_pylist():
                tally.add({k: v for k, v in row.items() if v is not None})
        return tally
    for line in _jsonl_lines(folder):
        # Only a frame's record holds the key (a quote inside a JSON string is escaped): parse those.
        if '"time": ' in line:
            tally.add(json.loads(line))
        else:
            tally.add({"error": True} if '"error": ' in line else {})
    return tally


def _blocks(folder: str | Path, fmt: str) -> list[Path]:
    from ..uses.resume import BlockFolder

    return BlockFolder(Path(folder), fmt).blocks()


def _jsonl_lines(folder: str | Path) -> Iterator[str]:
    for f in _blocks(folder, "jsonl"):
        with f.open(encoding="utf-8") as fh:
            yield from fh


def run(
    inputs: Sequence[str],
    classifier: SharedClassifier,
    output: str,
    *,
    fmt: str = "jsonl",
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    batch_size: int = 64,
    stdin: Any = None,
    null: bool = False,
    quiet: bool = False,
    resume: bool = False,
    video: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Classify ``inputs`` on Ray and write the records to the ``output`` folder; returns a summary.

    Joins the Ray at ``address`` (or the one this process already has, or starts a local one, which
    it shuts down again at the end). ``resume``: go on with an interrupted run into the same
    folder, classifying only the inputs it has no record of (a local folder holding records is
    refused without it).
    """
    ray = require_ray()
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--format with --engine ray must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if resume and has_scheme(output):
        raise UsageError("--resume with --engine ray needs a local --output folder")
    from ..uses.resume import BlockFolder

    folder = None if has_scheme(output) else BlockFolder(Path(output), fmt)
    done = set() if folder is None else folder.progress(resume)
    start = time.perf_counter()
    # Ray prints worker deaths and logs on stdout; ours carries the summary.
    from .raysession import ray_session, stdout_to_stderr

    with stdout_to_stderr(), ray_session(ray, address, quiet):
        ray.data.DataContext.get_current().enable_progress_bars = not quiet
        todo = input_dataset(inputs, stdin=stdin, null=null, done=done, video=video)
        if todo is not None:
            ds = classify_dataset(todo, classifier, workers=workers, gpus_per_worker=gpus_per_worker,
                                  cpus_per_worker=cpus_per_worker, batch_size=batch_size, **options)  # fmt: skip
            import secrets

            # the folder's mark names this run's token before any block file is written
            token = secrets.token_hex(6) if folder is None else folder.begin()
            if fmt == "parquet":
                ds.drop_columns(["record"]).write_parquet(output, filename_provider=_block_names(token, fmt))
            else:
                ds.write_datasink(_jsonl_datasink(output, _block_names(token, fmt)))
            if folder is not None:
                folder.end(token)
    summary: dict[str, Any] = {"engine": "ray", "output": output, "format": fmt, "workers": workers}
    if done:
        summary["resumed_after"] = len(done)
    if not has_scheme(output):
        summary["records"], summary["errors"] = count_output(output, fmt)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def iter_records(folder: str | Path, fmt: str = "jsonl") -> Iterable[dict[str, Any]]:
    """Read back the records of an output folder (local), in file order: the block files its mark
    lists (a folder written before there was a mark: every file of the format)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for f in _blocks(folder, fmt):
            yield from pq.read_table(f).to_pylist()
        return
    for line in _jsonl_lines(folder):
        yield json.loads(line)
