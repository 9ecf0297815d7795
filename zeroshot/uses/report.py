"""Self-contained HTML reports: ``eval --report`` and ``classify --report``.

One file, nothing fetched: styles inline, thumbnails as ``data:`` URIs, no scripts. Every text
that comes from a file name, a label or an error message is HTML-escaped. Written atomically.

- The eval report: the headline figures, the confusion matrix (shaded by row share; for more
  than :data:`MATRIX_LIMIT` classes, the classes with the most mistakes), per-class recall bars,
  and the worst mistakes (the most confident wrong answers) as thumbnails with their top-3.
- The contact sheet: one card per classify record, thumbnail and top-k bars, or the error.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import files

if TYPE_CHECKING:
    from .ranking import Record

THUMB = 144  # thumbnail box, pixels
MATRIX_LIMIT = 40  # classes shown in the confusion matrix
WORST = 36  # mistakes shown
SHEET_THUMBS = 2000  # contact-sheet cards with a thumbnail; later cards are text only

CSS = """
:root { --fg:#1d232a; --muted:#5b6570; --line:#d9dee3; --bar:#3b7dd8; --good:#1f9d55; --bad:#d64545; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 24px; background: #f6f7f9; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: var(--muted); margin-bottom: 16px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.stat { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 120px; }
.stat b { display: block; font-size: 20px; }
.stat span { color: var(--muted); font-size: 12px; }
table.cm { border-collapse: collapse; background: #fff; font-size: 11px; }
table.cm th, table.cm td { border: 1px solid var(--line); padding: 2px 4px; text-align: right; min-width: 26px; }
table.cm th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; max-height: 160px;
                  white-space: nowrap; overflow: hidden; }
table.cm th.row { text-align: left; white-space: nowrap; max-width: 220px; overflow: hidden; text-overflow: ellipsis; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; overflow: hidden; }
.card.err { border-color: var(--bad); background: #fff5f5; }
.thumb { height: 144px; display: flex; align-items: center; justify-content: center; background: #eef0f3;
         border-radius: 4px; margin-bottom: 6px; }
.thumb img { max-width: 100%; max-height: 144px; image-rendering: auto; }
.name { font-size: 12px; color: var(--muted); white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.label { font-weight: 600; margin: 2px 0 4px; } .label.none { color: var(--muted); font-style: italic; }
.truth { font-size: 12px; } .truth b { color: var(--good); } .truth i { color: var(--bad); font-style: normal; }
.bar { display: grid; grid-template-columns: 1fr 44px; gap: 4px; align-items: center; font-size: 11px; margin: 2px 0; }
.bar .t { position: relative; background: #edf1f6; border-radius: 3px; height: 16px; overflow: hidden; }
.bar .t i { position: absolute; left: 0; top: 0; bottom: 0; background: var(--bar); opacity: .35; }
.bar .t span { position: relative; padding-left: 4px; white-space: nowrap; }
.bar .v { text-align: right; font-variant-numeric: tabular-nums; }
.recall { display: grid; grid-template-columns: minmax(120px, 260px) 1fr 52px; gap: 4px 8px; align-items: center;
          max-width: 760px; font-size: 12px; }
.recall .t { background: #edf1f6; height: 12px; border-radius: 3px; overflow: hidden; }
.recall .t i { display: block; height: 100%; background: var(--good); }
.note { color: var(--muted); font-size: 12px; }
.errmsg { color: var(--bad); font-size: 12px; word-break: break-word; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def thumbnail_uri(image: Any, box: int = THUMB) -> str | None:
    """A PIL image (or None) as a small ``data:`` URI: PNG for small/flat images, else JPEG."""
    if image is None:
        return None
    from PIL import Image

    img = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    if max(img.size) < box // 2:  # tiny (28x28 MNIST): scale up without blurring into mush
        factor = max(1, box // max(img.size))
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    img.thumbnail((box, box), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small = img.width * img.height <= 64 * 64 or img.mode == "L"
    if small:
        img.save(buf, "PNG", optimize=True)
        kind = "png"
    else:
        img.save(buf, "JPEG", quality=80)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def file_thumbnail(path: str, max_pixels: int | None = None) -> str | None:
    """The thumbnail of an image file, or None when it cannot be read (the card says why anyway)."""
    from ..image.images import DEFAULT_MAX_PIXELS, ImageError, open_image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels  # 0: no limit, as for classifying
    try:
        return thumbnail_uri(open_image(path, draft=THUMB, max_pixels=limit))
    except (ImageError, OSError, ValueError):
        return None


def frame_thumbnail(path: str, time: float, max_pixels: int | None = None) -> str | None:
    """The thumbnail of a video's frame at ``time`` seconds, or None (a URL, a file gone, a decode error)."""
    from ..image.images import DEFAULT_MAX_PIXELS, ImageError
    from ..image.reading import is_url

    if is_url(path):
        return None  # the run's copy is gone: not fetched again for a picture
    from ..image.videodecode import frame_at

    try:
        image = frame_at(path, time, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    except (ImageError, OSError):
        return None
    return thumbnail_uri(image)


def _bars(top: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for t in top:
        pct = max(0.0, min(1.0, float(t["score"]))) * 100
        rows.append(
            f'<div class="bar"><div class="t"><i style="width:{pct:.1f}%"></i><span>{esc(t["label"])}</span></div>'
            f'<div class="v">{float(t["score"]):.3f}</div></div>'
        )
    return "".join(rows)


def _thumb(uri: str | None) -> str:
    inner = f'<img alt="" src="{uri}">' if uri else '<span class="note">no preview</span>'
    return f'<div class="thumb">{inner}</div>'


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="zeroshot">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div>{body}</body></html>\n'
    )


def _write(path: str | Path | files.Destination, text: str) -> None:
    files.write_named(path, text.encode("utf-8"), "--report")


def _stat(value: str, what: str) -> str:
    return f'<div class="stat"><b>{esc(value)}</b><span>{esc(what)}</span></div>'


# --- eval -------------------------------------------------------------------------------------


def _matrix_html(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    c = len(classes)
    shown = list(range(c))
    note = ""
    if c > MATRIX_LIMIT:
        errors = [sum(confusion[i]) - confusion[i][i] + sum(confusion[j][i] for j in range(c)) - confusion[i][i]
                  for i in range(c)]  # fmt: skip
        shown = sorted(sorted(range(c), key=lambda i: -errors[i])[:MATRIX_LIMIT])
        note = (f'<p class="note">{c} classes: showing the {MATRIX_LIMIT} with the most mistakes '
                "(rows and columns), in class order.</p>")  # fmt: skip
    head = "".join(f'<th class="col" title="{esc(classes[j])}">{esc(classes[j])}</th>' for j in shown)
    rows = []
    for i in shown:
        total = sum(confusion[i]) or 1
        cells = []
        for j in shown:
            n = confusion[i][j]
            share = n / total
            if n == 0:
                cells.append("<td></td>")
                continue
            colour = "31,157,85" if i == j else "214,69,69"
            cells.append(
                f'<td style="background:rgba({colour},{0.12 + 0.78 * share:.3f})" '
                f'title="true {esc(classes[i])}, predicted {esc(classes[j])}: {n} ({share:.1%})">{n}</td>'
            )
        rows.append(f'<tr><th class="row" title="{esc(classes[i])}">{esc(classes[i])}</th>{"".join(cells)}</tr>')
    return (
        f'{note}<p class="note">Rows: true class; columns: predicted. Shading: share of the row.</p>'
        f'<table class="cm"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    )


def _eval_image(run: Any, row: int) -> Any:
    from PIL import Image

    key = run.keys[row]
    if isinstance(key, int) and run.array is not None:
        return Image.fromarray(run.array[key])
    from ..image.images import ImageError, open_image

    try:
        return open_image(str(key), draft=THUMB)
    except (ImageError, OSError, ValueError):
        return None


def eval_report(
    path: str | Path | files.Destination, run: Any, text: Any, logit_scale: float, *, worst: int = WORST
) -> None:
    """Write the eval report for an :class:`~zeroshot.uses.evaluate.EvalRun`."""
    rec = run.record
    classes = list(text.classes)
    stats = [
        _stat(f"{rec['top1']:.2%}", "top-1"),
        _stat(f"{rec.get('top5', rec.get(f'top{min(5, len(classes))}', 0.0)):.2%}", f"top-{min(5, len(classes))}"),
        _stat(f"{rec['mean_per_class_recall']:.2%}", "mean per-class recall"),
        _stat(f"{rec['images']:,}", "images"),
        _stat(str(len(classes)), "classes"),
        _stat(str(rec.get("templates", "")), "templates"),
    ]
    if rec.get("failed"):
        stats.append(_stat(str(rec["failed"]), "unreadable images"))
    recall = rec["per_class_recall"]
    recall_rows = []
    for name in classes:
        r = recall.get(name)
        width = 0.0 if r is None else r * 100
        shown = "—" if r is None else f"{r:.1%}"
        recall_rows.append(f'<div title="{esc(name)}">{esc(name)}</div><div class="t"><i style="width:{width:.1f}%">'
                           f'</i></div><div class="v">{shown}</div>')  # fmt: skip

    cards = []
    n = len(run.labels)
    if n:
        probs = (logit_scale * run.sims(text)).softmax(dim=-1)
        conf, pred = probs.max(dim=1)
        wrong = (pred != run.labels).nonzero().flatten().tolist()
        wrong.sort(key=lambda i: -float(conf[i]))
        for i in wrong[:worst]:
            values, idx = probs[i].topk(min(3, len(classes)))
            top = [{"label": classes[j], "score": float(v)} for v, j in zip(values.tolist(), idx.tolist(), strict=True)]
            key = run.keys[i]
            name = f"#{key}" if isinstance(key, int) else Path(str(key)).name
            cards.append(
                f'<div class="card">{_thumb(thumbnail_uri(_eval_image(run, i)))}'
                f'<div class="name" title="{esc(key)}">{esc(name)}</div>'
                f'<div class="truth">true <b>{esc(classes[int(run.labels[i])])}</b></div>'
                f'<div class="truth">predicted <i>{esc(classes[int(pred[i])])}</i></div>{_bars(top)}</div>'
            )
        mistakes = len(wrong)
    else:
        mistakes = 0
    body = (
        f'<div class="cards">{"".join(stats)}</div>'
        f"<h2>Confusion matrix</h2>{_matrix_html(rec['confusion_matrix'], classes)}"
        f'<h2>Per-class recall</h2><div class="recall">{"".join(recall_rows)}</div>'
        f"<h2>Worst mistakes</h2>"
        f'<p class="note">{mistakes:,} of {n:,} images wrong; the {min(worst, mistakes)} most confident wrong answers '
        "first.</p>"
        f'<div class="grid">{"".join(cards) or "<p class=note>No mistakes.</p>"}</div>'
    )
    model = rec.get("model", "") + (f" ({rec['pretrained']})" if rec.get("pretrained") else "")
    _write(path, _page(f"zeroshot eval: {rec.get('dataset', '')}", f"model {model} · prompts {text.prompt_set.name}",
                       body))  # fmt: skip


# --- classify ---------------------------------------------------------------------------------


class ContactSheet:
    """Collects classify records (with thumbnails) and writes the contact sheet at the end."""

    def __init__(
        self, path: str | Path | files.Destination, *, title: str, subtitle: str, max_pixels: int | None = None
    ) -> None:
        self.path = path if isinstance(path, files.Destination) else files.destination("--report", path)
        self.title = title
        self.subtitle = subtitle
        self.max_pixels = max_pixels
        self.cards: list[str] = []
        self.counts = {"records": 0, "errors": 0, "none": 0}

    def add(self, record: Record) -> None:
        path = str(record["path"])
        name = (Path(path).name or path) + (f" @ {record['time']:g} s" if "time" in record else "")  # a frame
        self.counts["records"] += 1
        head = f'<div class="name" title="{esc(path)}">{esc(name)}</div>'
        if "error" in record:
            self.counts["errors"] += 1
            self.cards.append(f'<div class="card err">{_thumb(None)}{head}'
                              f'<div class="errmsg">{esc(record["error"])}</div></div>')  # fmt: skip
            return
        uri, when = None, record.get("time")
        if len(self.cards) < SHEET_THUMBS:
            limit = self.max_pixels
            uri = frame_thumbnail(path, when, limit) if when is not None else file_thumbnail(path, limit)
        shown = ", ".join(record["labels"]) if "labels" in record else record.get("label") or ""
        if not shown:
            self.counts["none"] += 1
            label = '<div class="label none">none of these</div>'
        else:
            label = f'<div class="label">{esc(shown)}</div>'
        self.cards.append(f'<div class="card">{_thumb(uri)}{head}{label}{_bars(record.get("top_k", []))}</div>')

    def write(self) -> None:
        c = self.counts
        stats = _stat(f"{c['records']:,}", "inputs") + _stat(f"{c['errors']:,}", "errors")
        if c["none"]:
            stats += _stat(f"{c['none']:,}", "none of these")
        more = ""
        if c["records"] > SHEET_THUMBS:
            more = f'<p class="note">Thumbnails for the first {SHEET_THUMBS:,} inputs.</p>'
        body = f'<div class="cards">{stats}</div><h2>Results</h2>{more}<div class="grid">{"".join(self.cards)}</div>'
        _write(self.path, _page(self.title, self.subtitle, body))
