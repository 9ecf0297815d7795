"""``--per-video``: one record per video from the scores of its sampled frames.

A video's scores are the **mean of its frames' probabilities** (softmax rows; per-label scores
with ``--multi-label``), not of their logits. The mean probability is the share of the sampled
moments a label holds, weighted by how sure each moment is: a clip that shows a dog for half its
length scores about 0.5 for "dog". Averaged logits would let a few very confident frames decide
the whole clip (at CLIP's scale of 100, one frame's margin of 0.1 in cosine is 10 in logit, and
outweighs many frames that lean the other way), and averaged embeddings would blend two scenes
into a point that looks like neither.

The record adds ``frames`` (how many were scored), ``peaks`` (the times where the top label is
strongest, best first) and, with ``--multi-label``, ``segments``: for each label that holds in
some frame, the [start, end) spans of consecutive sampled frames where it scores at least the
threshold (end: the next sampled frame's time, or the last one's time plus ``--every``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from ..image.video import FrameInput
from .ranking import MultiLabel, Record, error_record, scored_records, scores
from .records import stacked

PEAKS = 3


class _Clip:
    def __init__(self, path: str) -> None:
        self.path = path
        self.frames: list[tuple[FrameInput, Any]] = []  # (frame, score row) of the frames scored
        self.errors: list[str] = []


def video_record_batches(
    batches: Iterable[list[Any]],
    weights: Any,
    scale: float,
    classes: Sequence[str],
    top_k: int,
    multi_label: MultiLabel | None,
    every: float,
) -> Iterator[list[Record]]:
    """Encoded batches -> records, a batch at a time: a video's frames become one record, given
    with the batch its last frame is in; every other input keeps its own record."""
    clip: _Clip | None = None
    for batch in batches:
        good = [e for e in batch if e.feature is not None]
        rows: dict[int, Any] = {}
        if good:
            table = scores(stacked([e.feature for e in good]), weights, scale, multi_label)
            rows = {id(e): table[i] for i, e in enumerate(good)}
        out: list[Record] = []
        for e in batch:
            if isinstance(e.input, FrameInput):
                if clip is not None and clip.path != e.input.path:
                    out.append(_clip_record(clip, classes, top_k, multi_label, every))
                    clip = None
                if clip is None:
                    clip = _Clip(e.input.path)
                if id(e) in rows:
                    clip.frames.append((e.input, rows[id(e)]))
                else:
                    clip.errors.append(e.error or "unknown error")
                continue
            if clip is not None:
                out.append(_clip_record(clip, classes, top_k, multi_label, every))
                clip = None
            out.append(_one(e.input.path, rows.get(id(e)), e.error, classes, top_k, multi_label))
        yield out
    if clip is not None:
        yield [_clip_record(clip, classes, top_k, multi_label, every)]


def _one(path: str, row: Any, error: str | None, classes: Sequence[str], top_k: int, rule: MultiLabel | None) -> Record:
    if row is None:
        return error_record(path, error or "unknown error")
    return scored_records([path], row[None, :], classes, top_k, rule)[0]


def _clip_record(clip: _Clip, classes: Sequence[str], top_k: int, rule: MultiLabel | None, every: float) -> Record:
    import numpy as np

    if not clip.frames:
        return error_record(clip.path, clip.errors[0] if clip.errors else "no frames")
    rows = np.stack([row for _, row in clip.frames])
    record = cast(dict[str, Any], _one(clip.path, rows.mean(axis=0), None, classes, top_k, rule))
    best = classes.index(record["top_k"][0]["label"])
    order = np.argsort(-rows[:, best], kind="stable")[:PEAKS]
    out: dict[str, Any] = {"path": clip.path, "frames": len(clip.frames)}
    out.update((k, v) for k, v in record.items() if k != "path")
    out["peaks"] = [{"time": clip.frames[i][0].time, "frame": clip.frames[i][0].frame, "score": float(rows[i, best])}
                    for i in order.tolist()]  # fmt: skip
    if rule is not None:
        out["segments"] = _segments(clip, rows, classes, rule.threshold, every)
    if clip.errors:
        out["frame_errors"] = len(clip.errors)
    return cast(Record, out)


def _segments(clip: _Clip, rows: Any, classes: Sequence[str], threshold: float, every: float) -> dict[str, list]:
    """{label: [[start, end], ...]} for the labels that hold in some frame, the best on average first."""
    import numpy as np

    times = [f.time for f, _ in clip.frames]
    ends = times[1:] + [round(times[-1] + every, 6)]
    spans: dict[str, list[list[float]]] = {}
    for c in np.argsort(-rows.mean(axis=0), kind="stable").tolist():
        held = rows[:, c] >= threshold
        if not held.any():
            continue
        runs: list[list[float]] = []
        for i, on in enumerate(held.tolist()):
            if not on:
                continue
            if runs and runs[-1][1] == times[i]:
                runs[-1][1] = ends[i]
            else:
                runs.append([times[i], ends[i]])
        spans[classes[c]] = runs
    return spans
