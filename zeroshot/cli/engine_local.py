"""``classify``'s run, once its options are checked (:class:`ClassifyRun`), and the local engine:
records in input order to stdout or ``--output``, with the run's manifest and contact sheet."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import UsageError
from .common import Steps, count_in_background, output_destination, prepare_run

if TYPE_CHECKING:
    from ..assembly import ModelChoice, MultiLabel, Prepared
    from ..export import ClassifierFile
    from ..files import Destination
    from ..manifest import RunManifest
    from ..pipeline import DecodeOptions
    from ..prompts import PromptSet


@dataclass(frozen=True)
class RayPlacement:
    """``--engine ray``'s own options: the cluster to join and each actor's resources."""

    address: str | None
    gpus_per_worker: float
    cpus_per_worker: float | None


@dataclass(frozen=True)
class ClassifyRun:
    """Everything one ``classify`` run was asked for, checked and typed, built once from the options."""

    inputs: list[str]
    choice: ModelChoice
    prompt_set: PromptSet | None  # None: the classifier file's
    classifier_file: ClassifierFile | None
    multi_label: MultiLabel | None
    decode: DecodeOptions
    top_k: int
    batch_size: int | None  # None: the engine's default for the device
    min_score: float | None
    fmt: str
    output: Path | None
    report: Path | None
    manifest: Path | None
    cache_images: bool
    use_cache: bool
    quiet: bool
    null: bool
    ray: RayPlacement | None  # None: the local engine

    @property
    def stdin(self) -> TextIO | None:
        return sys.stdin if "-" in self.inputs else None


@dataclass(frozen=True)
class Destinations:
    """Where a local run writes, every path checked before any image is read: the records (None:
    stdout), the contact sheet, the manifest."""

    records: Destination | None
    report: Destination | None
    manifest: Destination | None

    @classmethod
    def check(cls, run: ClassifyRun) -> Destinations:
        records = output_destination("--output", run.output, allow_stdout=True)
        if records is not None and records.stdout:
            records = None
        # stdout is free for a manifest or a report only when the records go elsewhere.
        free = records is not None and records.fd != 1
        report = output_destination("--report", run.report, allow_stdout=free)
        manifest = output_destination("--manifest", run.manifest, allow_stdout=free and report is not None and
                                      not report.stdout)  # fmt: skip
        if manifest is None and records is not None and records.regular:  # beside the records file
            from ..files import destination
            from ..manifest import manifest_path

            manifest = destination("--manifest", manifest_path(Path(records.given)))
        if manifest is not None and manifest.regular:
            for option, other in (("--output", records), ("--report", report)):
                if other is not None and other.regular and other.target == manifest.target:
                    raise UsageError(f"--manifest {manifest.given} is the {option} file too: give it a path of its own")
        return cls(records, report, manifest)


def classify_locally(run: ClassifyRun) -> tuple[int, int]:
    """The local engine: records in input order to stdout or ``--output``; (failed, total).

    With ``--cache-images`` and a cached text classifier that holds the model's scoring facts, the
    model loads only when an input needs the image tower: relabelling images whose embeddings are
    all cached builds no model and imports no torch (:func:`zeroshot.pipeline.cache_first`).
    """
    from ..classifier import remember_scoring
    from ..images import count_inputs, iter_inputs
    from ..output import FORMATS, RecordWriter, apply_min_score
    from ..pipeline import ImageEncoder, cache_first, default_batch_size, default_workers, encoded_records

    if run.fmt not in FORMATS:
        raise UsageError(f"--format {run.fmt} needs --engine ray (the local engine writes {', '.join(FORMATS)})")
    where = Destinations.check(run)
    manifest = _manifest_for(run, where.manifest)
    show = not run.quiet and sys.stderr.isatty()
    prepared = prepare_run(
        run.choice, run.prompt_set, classifier_file=run.classifier_file, use_cache=run.use_cache, quiet=run.quiet,
        multi_label=run.multi_label, eager=run.classifier_file is not None or _torch_first(run),
    )  # fmt: skip
    text, rule = prepared.text, prepared.rule
    if text.scoring is None and run.classifier_file is None:
        remember_scoring(prepared.spec, text, prepared.loaded)  # the next run may need no model (nor torch)
    facts = text.scoring
    model_free = run.cache_images and facts is not None and not prepared.is_loaded
    sheet = None
    if where.report is not None:
        from ..report import ContactSheet

        sheet = ContactSheet(
            where.report, title=f"zeroshot classify: {text.prompt_set.name}",
            subtitle=f"model {prepared.spec.label} · {len(text.classes)} classes", max_pixels=run.decode.max_pixels,
        )  # fmt: skip
    batch_size = run.batch_size or default_batch_size(prepared.device)
    workers = run.decode.workers if run.decode.workers is not None else default_workers(prepared.device)
    if not model_free:
        prepared.image_tower(workers)  # before the cache opens: its key depends on the runtime
    if manifest is not None:
        manifest.mark("ready")  # the model (or its engine) and the text side
    image_cache = None
    if run.cache_images:
        from ..imagecache import open_image_cache

        dim = facts["embed_dim"] if facts is not None else prepared.loaded.embed_dim
        image_cache = open_image_cache(prepared.embeddings_key(), dim)

    def encoder() -> ImageEncoder:
        return ImageEncoder(prepared.image_tower(workers), batch_size=batch_size, image_cache=image_cache,
                            options=run.decode)  # fmt: skip

    # live: paths from stdin are handed on as they arrive, and a batch is finished early whenever
    # stdin has nothing more yet, so each record comes out while the producer is still writing.
    stream = iter_inputs(run.inputs, stdin=run.stdin, null=run.null, live=True)
    if model_free and image_cache is not None:
        batches = cache_first(stream, image_cache, encoder, batch_size=batch_size, max_bytes=run.decode.max_bytes)
    else:
        batches = encoder().batches(stream)
    scale = prepared.logit_scale
    failed = total = 0
    steps = Steps(show, "classifying", "images")
    if "-" not in run.inputs:  # paths from stdin cannot be counted ahead
        count_in_background(steps, lambda found: count_inputs(run.inputs, found))
    writer = RecordWriter(run.fmt, where.records, multi_label=rule is not None, width=_table_width(where.records))
    try:
        for record in encoded_records(batches, text.weights, scale, text.classes, run.top_k, rule):
            record = apply_min_score(record, run.min_score)
            writer.write(record)
            if sheet is not None:
                sheet.add(record)
            total += 1
            failed += "error" in record
            steps.advance()
            if manifest is not None and total == 1:
                manifest.mark("first_record")
        writer.close()
        if sheet is not None:
            sheet.write()
    finally:
        writer.abort()  # only does something if the run did not finish: no half-written --output file
        steps.stop()
        if image_cache is not None:
            image_cache.close()
    if manifest is not None:
        _finish_manifest(manifest, run, prepared, total, failed)
    return failed, total


def _tower_used(prepared: Prepared) -> str:
    """What the manifest says of the image tower: the one that ran, or why none did."""
    if not prepared.towers:
        return "not needed: every image embedding was cached"
    tower = prepared.towers[0]
    if tower.runtime == "onnx":
        return f"ran in ONNX Runtime ({tower.precision})" + ("" if prepared.is_loaded else ", without torch")
    return "ran"


def _torch_first(run: ClassifyRun) -> bool:
    """Whether to load the model before anything else: the torch runtime classifying images (not
    only relabelling cached ones) needs it in any case."""
    from ..models import resolve_device, resolve_precision
    from ..runtimes import resolve_runtime

    device = resolve_device(run.choice.device)
    runtime = resolve_runtime(run.choice.runtime, device, resolve_precision(run.choice.precision, device))
    return runtime == "torch" and not run.cache_images


def _table_width(records: Destination | None) -> int | None:
    """``--format table`` at a terminal: its width (long paths fold); elsewhere as wide as needed."""
    import os

    fd = 1 if records is None else records.fd
    if fd is None or not os.isatty(fd):
        return None
    try:
        return os.get_terminal_size(fd).columns
    except OSError:
        return None


def _manifest_for(run: ClassifyRun, dest: Destination | None) -> RunManifest | None:
    """The run's manifest: at --manifest PATH, else beside a regular --output FILE; none for stdout."""
    from ..manifest import RunManifest

    if dest is None:
        return None
    return RunManifest(dest, output=str(run.output) if run.output is not None else None, fmt=run.fmt)


def _finish_manifest(manifest: RunManifest, run: ClassifyRun, prepared: Prepared, total: int, failed: int) -> None:
    import json

    from ..manifest import identity

    text, loaded = prepared.text, prepared.loaded_if_any
    if loaded is not None:
        preprocess = repr(loaded.preprocess)
    elif text.scoring is not None:
        preprocess = json.loads(text.scoring["image_key"]).get("preprocess")
    else:
        preprocess = None
    manifest.fields.update(identity(prepared.spec, text.prompt_set, precision=prepared.precision,
                                    device=prepared.device, preprocess=preprocess))  # fmt: skip
    manifest.fields.update(
        classifier_file=str(run.classifier_file.path) if run.classifier_file is not None else None,
        text_classifier="cache" if text.cache_hit and run.classifier_file is None else (
            "file" if run.classifier_file is not None else "built"),
        image_tower=_tower_used(prepared), runtime=prepared.towers[0].runtime if prepared.towers else None,
        top_k=run.top_k, multi_label=prepared.rule is not None, min_score=run.min_score,
    )  # fmt: skip
    if loaded is not None:
        manifest.timings.update({f"model_{k}": v for k, v in loaded.timings.items()})
    manifest.write(records=total, errors=failed)
