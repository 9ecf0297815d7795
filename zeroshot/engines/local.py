"""``classify``'s run, once its options are checked (:class:`ClassifyRun`), and the local engine:
records in input order to stdout or ``--output``, with the run's manifest and contact sheet.

The engine opens the image cache, picks the image tower, makes the records and writes them; what a
person sees meanwhile is the face's to give (the CLI's spinner, notes and progress bar): it comes in
as ``prepare`` (the assembly with a display) and ``progress`` (a bar over the records), and without
them the engine shows nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ..base.errors import UsageError
from ..uses.output import Tally

if TYPE_CHECKING:
    from ..assembly import ModelChoice, MultiLabel, Prepared
    from ..base.files import Destination
    from ..image.video import VideoOptions
    from ..text.prompts import PromptSet
    from ..towers.pipeline import DecodeOptions
    from ..uses.export import ClassifierFile
    from ..uses.manifest import RunManifest
    from ..uses.report import ContactSheet
    from ..uses.resume import PartialOutput


def _video_defaults() -> VideoOptions:
    from ..image.video import VideoOptions

    return VideoOptions()


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
    resume: bool = False  # go on from FILE.partial (zeroshot.uses.resume)
    video: VideoOptions = field(default_factory=lambda: _video_defaults())
    per_video: bool = False  # one record per video (zeroshot.uses.clips)

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
        records = _destination("--output", run.output, allow_stdout=True)
        if records is not None and records.stdout:
            records = None
        # stdout is free for a manifest or a report only when the records go elsewhere.
        free = records is not None and records.fd != 1
        report = _destination("--report", run.report, allow_stdout=free)
        manifest = _destination("--manifest", run.manifest, allow_stdout=free and report is not None and
                                      not report.stdout)  # fmt: skip
        if manifest is None and records is not None and records.regular:  # beside the records file
            from ..base.files import destination
            from ..uses.manifest import manifest_path

            manifest = destination("--manifest", manifest_path(Path(records.given)))
        if manifest is not None and manifest.regular:
            for option, other in (("--output", records), ("--report", report)):
                if other is not None and other.regular and other.target == manifest.target:
                    raise UsageError(f"--manifest {manifest.given} is the {option} file too: give it a path of its own")
        return cls(records, report, manifest)


def _destination(option: str, path: Path | None, *, allow_stdout: bool = False) -> Destination | None:
    """An output option's destination, checked before any work is done (see
    :func:`zeroshot.base.files.destination`), or None when the option was not given."""
    if path is None:
        return None
    from ..base.files import destination

    return destination(option, path, allow_stdout=allow_stdout)


class Progress(Protocol):
    """A display of the records made so far (the CLI's progress bar); :class:`NoProgress` shows none."""

    def advance(self, n: int = 1) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def stop(self) -> None:
        pass


def quiet_prepare(
    choice: ModelChoice,
    prompt_set: PromptSet | None,
    *,
    classifier_file: ClassifierFile | None = None,
    multi_label: MultiLabel | None = None,
    quiet: bool = True,
    use_cache: bool = True,
    eager: bool = True,
) -> Prepared:
    """:func:`zeroshot.assembly.prepare` showing nothing: the engine's ``prepare`` when its face
    gives none (the CLI gives :func:`zeroshot.cli.common.prepare_run`, which takes the same arguments)."""
    from ..assembly import prepare

    return prepare(choice, None if classifier_file is not None else prompt_set, classifier_file=classifier_file,
                   multi_label=multi_label, use_cache=use_cache, eager=eager)  # fmt: skip


def classify_locally(
    run: ClassifyRun,
    *,
    prepare: Callable[..., Prepared] = quiet_prepare,
    progress: Callable[[ClassifyRun], Progress] | None = None,
) -> Tally:
    """The local engine: records in input order to stdout or ``--output``; what they stand for.

    ``prepare`` makes the model and text side (called as :func:`quiet_prepare` is); ``progress``
    makes the display of the records, once the records are about to come (none by default).

    With ``--cache-images`` and a cached text classifier that holds the model's scoring facts, the
    model loads only when an input needs the image tower: relabelling images whose embeddings are
    all cached builds no model and imports no torch (:func:`zeroshot.towers.pipeline.cache_first`).
    """
    from ..base.errors import AFTERWORDS
    from ..image import video
    from ..image.images import iter_inputs
    from ..text.classifier import remember_scoring
    from ..towers.pipeline import ImageEncoder, cache_first, default_batch_size, default_workers
    from ..uses.output import FORMATS, RecordWriter
    from ..uses.resume import check_before_run

    if run.fmt not in FORMATS:
        raise UsageError(f"--format {run.fmt} needs --engine ray (the local engine writes {', '.join(FORMATS)})")
    AFTERWORDS.clear()  # what an earlier command in this process kept is not this one's to say
    where = Destinations.check(run)
    check_before_run(where.records, run.resume, run.fmt)
    _name_leftovers(where.records)
    manifest = _manifest_for(run, where.manifest)
    prepared = prepare(
        run.choice, run.prompt_set, classifier_file=run.classifier_file, use_cache=run.use_cache, quiet=run.quiet,
        multi_label=run.multi_label, eager=run.classifier_file is not None or _torch_first(run),
    )  # fmt: skip
    text, rule = prepared.text, prepared.rule
    if text.scoring is None and run.classifier_file is None:
        remember_scoring(prepared.spec, text, prepared.loaded)  # the next run may need no model (nor torch)
    model_free = run.cache_images and text.scoring is not None and not prepared.is_loaded
    sheet = _contact_sheet(run, where, prepared)
    batch_size = run.batch_size or default_batch_size(prepared.device)
    workers = run.decode.workers if run.decode.workers is not None else default_workers(prepared.device)
    if not model_free:
        prepared.image_tower(workers)  # before the cache opens: its key depends on the runtime
    if manifest is not None:
        manifest.mark("ready")  # the model (or its engine) and the text side
    image_cache = image_cache_for(prepared) if run.cache_images else None

    def encoder() -> ImageEncoder:
        return ImageEncoder(prepared.image_tower(workers), batch_size=batch_size, image_cache=image_cache,
                            options=run.decode)  # fmt: skip

    partial = _side_file(run, where, prepared, batch_size, read_back=sheet is not None)
    if isinstance(partial, Tally):  # --resume of a run that had finished: nothing to do
        if image_cache is not None:
            image_cache.close()
        return partial
    # live: paths from stdin are handed on as they arrive, and a batch is finished early whenever
    # stdin has nothing more yet, so each record comes out while the producer is still writing.
    stream = video.expand(iter_inputs(run.inputs, stdin=run.stdin, null=run.null, live=True), run.video)
    if partial is not None:
        stream = partial.skip_done(stream)  # what the side file holds already: neither decoded nor encoded
    if model_free and image_cache is not None:
        batches = cache_first(stream, image_cache, encoder, batch_size=batch_size, max_bytes=run.decode.max_bytes)
    else:
        batches = encoder().batches(stream)
    failed = total = 0
    steps = progress(run) if progress is not None else NoProgress()
    writer = RecordWriter(run.fmt, where.records, multi_label=rule is not None, width=_table_width(where.records),
                          partial=partial, frames=_asks_for_frames(run))  # fmt: skip
    if partial is not None:
        total, failed = partial.records, partial.errors  # a resumed run's records so far count too
        steps.advance(total)
        if sheet is not None:  # the contact sheet shows the whole run, the records kept included
            for earlier in partial.kept:
                sheet.add(earlier)  # type: ignore[arg-type]  # a record read back from the side file
    try:
        failed, total = _write_records(run, run_records(run, prepared, batches), writer, sheet, steps, manifest,
                                       failed, total)  # fmt: skip
        writer.close()
        if sheet is not None:
            sheet.write()
    finally:
        # Only does something if the run did not finish: the side file keeps its whole batches (the
        # error line says so), any other half-written --output file goes.
        kept = writer.abort()
        if kept is not None:
            AFTERWORDS.append(kept)
        steps.stop()
        video.remove_downloads()
        if image_cache is not None:
            image_cache.close()
    if manifest is not None:
        if partial is not None:
            from ..uses.resume import key_digest

            # the key itself too: a --resume of the finished FILE by another command names what changed
            manifest.fields.update(resume_key=key_digest(partial.key), run_key=partial.key, segments=partial.segments)
        manifest.fields.update(inputs=_inputs_field(writer.tally))
        _finish_manifest(manifest, run, prepared, total, failed)
    return writer.tally


def _side_file(
    run: ClassifyRun, where: Destinations, prepared: Prepared, batch_size: int, *, read_back: bool
) -> PartialOutput | Tally | None:
    """A regular ``--output`` FILE's side file, its records kept as they are made (None for any
    other destination), or what the records of a finished run that ``--resume`` finds complete
    stand for."""
    if where.records is None or not where.records.regular:
        return None
    from ..uses.resume import PartialOutput

    key = _resume_key(run, prepared, batch_size)
    if run.resume and (done := _finished_already(where, key)) is not None:
        return done
    return PartialOutput(where.records, key, resume=run.resume, fmt=run.fmt, read_back=read_back)


def _contact_sheet(run: ClassifyRun, where: Destinations, prepared: Prepared) -> ContactSheet | None:
    """``--report``: the contact sheet the records are added to (or None)."""
    if where.report is None:
        return None
    from ..uses.report import ContactSheet

    text = prepared.text
    return ContactSheet(
        where.report, title=f"zeroshot classify: {text.prompt_set.name}",
        subtitle=f"model {prepared.spec.label} · {len(text.classes)} classes", max_pixels=run.decode.max_pixels,
    )  # fmt: skip


def _write_records(
    run: ClassifyRun, made: Iterator[list[Any]], writer: Any, sheet: Any, steps: Progress, manifest: Any,
    failed: int, total: int,
) -> tuple[int, int]:  # fmt: skip
    """Each batch's records to the writer (whole batches into a side file), the contact sheet and
    the progress bar; the counts (failed, total), a resumed run's earlier records included."""
    from ..uses.output import apply_min_score

    for records in made:
        for record in records:
            record = apply_min_score(record, run.min_score)
            writer.write(record)
            if sheet is not None:
                sheet.add(record)
            total += 1
            failed += "error" in record
            steps.advance()
            if manifest is not None and "first_record" not in manifest.timings:
                manifest.mark("first_record")
        writer.batch_done()
    return failed, total


def image_cache_for(prepared: Prepared) -> Any:
    """``--cache-images``: the image-embedding cache for this model and runtime (its key depends on
    the runtime: pick the image tower first), or None where it cannot be opened
    (:func:`~zeroshot.image.imagecache.open_image_cache`)."""
    from ..image.imagecache import open_image_cache

    facts = prepared.text.scoring
    dim = facts["embed_dim"] if facts is not None else prepared.loaded.embed_dim
    return open_image_cache(prepared.embeddings_key(), dim)


def run_records(run: ClassifyRun, prepared: Prepared, batches: Iterator[Any]) -> Iterator[list[Any]]:
    """Encoded batches -> records, a batch at a time: one per input and sampled frame, or with
    ``--per-video`` one per video (:mod:`zeroshot.uses.clips`)."""
    from ..uses.records import record_batches

    text, rule, scale = prepared.text, prepared.rule, prepared.logit_scale
    if run.per_video:
        from ..uses.clips import video_record_batches

        return video_record_batches(batches, text.weights, scale, text.classes, run.top_k, rule, run.video.every)
    return record_batches(batches, text.weights, scale, text.classes, run.top_k, rule)


def _asks_for_frames(run: ClassifyRun) -> bool:
    """Whether the run is about video frames: a video option given, or a video named."""
    from ..image.images import is_video_name
    from ..image.video import VideoOptions

    if run.per_video:
        return False
    v, default = run.video, VideoOptions()
    asked = v.every != default.every or v.max_frames is not None or v.animated
    return asked or any(is_video_name(i, v.animated) for i in run.inputs)


def _resume_key(run: ClassifyRun, prepared: Prepared, batch_size: int) -> dict[str, object]:
    """What a resumed run must share with the interrupted one for FILE to come out as one run's:
    the image features' identity, the text classifier's numbers, the inputs and every option that
    changes a record or which inputs share a batch."""
    import hashlib
    import json

    import numpy as np

    from ..uses.resume import run_key

    text = prepared.text
    digest = hashlib.sha256(np.ascontiguousarray(text.weights, dtype=np.float32).tobytes())
    digest.update(json.dumps([list(text.classes), prepared.logit_scale]).encode("utf-8"))
    d = run.decode
    return run_key(
        # The inputs as a digest: the mark is rewritten after every batch, and a shell glob can name
        # a hundred thousand files.
        image=prepared.embeddings_key(), text=digest.hexdigest()[:16], null=run.null,
        inputs=hashlib.sha256(json.dumps(run.inputs).encode("utf-8", "surrogateescape")).hexdigest()[:16],
        format=run.fmt, top_k=run.top_k, min_score=run.min_score, multi_label=repr(run.multi_label),
        batch_size=batch_size, decoder=d.decoder, jpeg_draft=d.jpeg_draft, max_pixels=d.max_pixels,
        max_bytes=d.max_bytes, **_video_key(run.video),
    )  # fmt: skip


def _video_key(v: VideoOptions) -> dict[str, object]:
    """The video options that change records, where they differ from their defaults (so a side
    file made before videos were read, which has none of them, still resumes)."""
    from ..image.video import VideoOptions

    default = VideoOptions()
    fields = {"every": (v.every, default.every), "max_frames": (v.max_frames, default.max_frames),
              "animated_as_video": (v.animated, default.animated),
              "max_video_bytes": (v.max_bytes, default.max_bytes)}  # fmt: skip
    return {name: value for name, (value, usual) in fields.items() if value != usual}


def _finished_already(where: Destinations, key: dict[str, object]) -> Tally | None:
    """``--resume`` with no side file but FILE there: the finished run of this very command (its
    manifest holds the same key), so nothing to do, said in a note; returns what its records stand
    for. None: nothing there, a run to make. FILE made by another command, or with no manifest to
    say which, is refused (a resume never replaces a finished FILE)."""
    import json

    from ..uses.resume import key_difference, key_digest, side_files

    assert where.records is not None
    records = where.records
    if os.path.lexists(side_files(records.target)[0]) or not os.path.lexists(records.target):
        return None
    done: object = None
    why, manifest = "unreadable", where.manifest
    if manifest is not None and manifest.regular:
        try:
            done = json.loads(manifest.target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            why = "missing"
        except (OSError, ValueError):
            pass
    if not isinstance(done, dict) or not isinstance(done.get("resume_key"), str):
        said = f"its manifest {manifest.given} is {why}" if manifest is not None and manifest.regular else (
            f"--manifest {manifest.given} keeps no manifest to check it against" if manifest is not None else
            "it has no manifest")  # fmt: skip
        raise UsageError(f"--resume: {records.given} is there but {said}, so nothing says which command made it: "
                         "leave out --resume to replace it")  # fmt: skip
    if done["resume_key"] != key_digest(key):
        was = done.get("run_key")
        what = key_difference(was, key) if isinstance(was, dict) else None
        raise UsageError(f"--resume: {records.given} was made with other {what or 'inputs, model or options'}: "
                         "run it as it was, or leave out --resume to replace it")  # fmt: skip
    sys.stderr.write(f"zeroshot: note: {records.given} is complete ({done.get('records', 0):,} records): "
                     "nothing to resume\n")  # fmt: skip
    counts = done.get("inputs")
    if isinstance(counts, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return Tally(int(counts["total"]), int(counts["failed"]), int(counts["video_frames"]),
                         int(counts["failed_video_frames"]))  # fmt: skip
    return Tally(int(done.get("records") or 0), int(done.get("errors") or 0))


def _inputs_field(tally: Tally) -> dict[str, int]:
    """The manifest's ``inputs``: what the records stand for (a video is one input, its frames counted apart)."""
    return {"total": tally.inputs, "failed": tally.failed, "video_frames": tally.frames,
            "failed_video_frames": tally.failed_frames}  # fmt: skip


def _name_leftovers(records: Destination | None) -> None:
    """Temporary files of killed runs of older versions beside FILE: named, never left unsaid."""
    if records is None or not records.regular:
        return
    from ..uses.resume import leftover_temporaries

    found = leftover_temporaries(records.target)
    if found:
        import logging

        names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        logging.getLogger("zeroshot").warning(
            f"temporary files of interrupted runs beside {records.given}: {names} (no run reads them: delete them)"
        )


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
    from ..model.devices import resolve_device, resolve_precision
    from ..towers.runtimes import resolve_runtime

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
    from ..uses.manifest import RunManifest

    if dest is None:
        return None
    return RunManifest(dest, output=str(run.output) if run.output is not None else None, fmt=run.fmt)


def _finish_manifest(manifest: RunManifest, run: ClassifyRun, prepared: Prepared, total: int, failed: int) -> None:
    import json

    from ..uses.manifest import identity

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
