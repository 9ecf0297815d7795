"""HTML reports: eval --report and classify --report, self-contained, escaped, and rendered by a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import unescape

import pytest
from PIL import Image

from zeroshot.model.models import BUNDLED_NAME
from zeroshot.text.prompts import load_pack

from .conftest import invoke, make_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '<img src=x onerror="alert(1)">&.png'


def data_images(html: str) -> list[Image.Image]:
    out = []
    for kind, payload in re.findall(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', html):
        img = Image.open(io.BytesIO(base64.b64decode(payload)))
        img.load()
        assert img.format.lower() == kind
        out.append(img)
    return out


def sheet_cards(html: str) -> list[dict]:
    """The contact sheet's cards in order, read back: the path (its title), the label line or the
    error, each bar's label and score as shown, and whether it has a thumbnail."""
    grid = html.split('<div class="grid">', 1)[1]
    cards = []
    for chunk in re.split(r'(?=<div class="card(?: err)?">)', grid)[1:]:
        card = {"path": unescape(re.search(r'<div class="name" title="([^"]*)">', chunk)[1]),
                "thumbnail": 'src="data:image/' in chunk}  # fmt: skip
        if chunk.startswith('<div class="card err">'):
            card["error"] = unescape(re.search(r'<div class="errmsg">(.*?)</div>', chunk)[1])
        else:
            card["label"] = unescape(re.search(r'<div class="label(?: none)?">(.*?)</div>', chunk)[1])
            bars = re.findall(r'<span>(.*?)</span></div><div class="v">([^<]*)</div>', chunk)
            card["bars"] = [(unescape(label), value) for label, value in bars]
        cards.append(card)
    return cards


def card_of(record: dict) -> dict:
    """What the card of a record shows: its path, its label ("none of these" when it has none) and
    its top-k with scores to 3 places, or its error."""
    if "error" in record:
        return {"path": record["path"], "thumbnail": False, "error": record["error"]}
    return {"path": record["path"], "thumbnail": True, "label": record["label"] or "none of these",
            "bars": [(t["label"], f"{t['score']:.3f}") for t in record["top_k"]]}  # fmt: skip


def assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(?!data:)', html), "every resource is inline"


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory, fashion_mnist):
    out = tmp_path_factory.mktemp("rep") / "eval.html"
    result = invoke("eval", "--dataset", "fashion-mnist", "-m", BUNDLED_NAME, "--limit", "300", "--report", out, "-q")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_eval_report_holds_the_figures_matrix_and_worst_mistakes(eval_report):
    out, record = eval_report
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert record["report"] == str(out)
    classes = load_pack("fashion-mnist").classes
    assert f"{record['top1']:.2%}" in html and f"{record['images']:,}" in html
    assert all(f'<th class="row" title="{c}">' in html for c in classes)
    matrix = record["confusion_matrix"]
    for i, row in enumerate(matrix):  # every non-zero count is in its cell
        for j, n in enumerate(row):
            if n:
                assert f"true {classes[i]}, predicted {classes[j]}: {n} (" in html
    wrong = record["images"] - sum(matrix[i][i] for i in range(len(classes)))
    cards = html.count('<div class="card">')
    assert cards == min(36, wrong) and wrong > 0
    thumbs = data_images(html)
    assert len(thumbs) == cards and all(t.size[0] >= 100 for t in thumbs)  # 28x28 scaled up, not a speck


def test_classify_contact_sheet_one_card_per_input_escaped(tmp_path, image_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(sorted(image_dir.iterdir())[:3]):
        shutil.copy(p, folder / f"{i}-{p.name}")
    make_image(folder / HOSTILE, seed=5)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "sheet.html"
    result = invoke("classify", folder, "-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "--report", out, "-q",
                    "--min-score", "0.99")  # fmt: skip
    assert result.exit_code == 1  # the broken file
    records = [json.loads(line) for line in result.stdout.splitlines()]
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert html.count('<div class="card">') + html.count('<div class="card err">') == len(records) == 5
    assert sheet_cards(html) == [card_of(r) for r in records]  # one card per record, in order, each its record
    assert sum("error" in r for r in records) == 1 and sum(r.get("label", "") is None for r in records) >= 1
    assert HOSTILE not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;.png" in html
    assert len(data_images(html)) == 4  # every readable input has its thumbnail
    nulls = sum(r.get("label", "") is None for r in records)
    stats = re.findall(r'<div class="stat"><b>([^<]*)</b><span>([^<]*)</span></div>', html)
    assert stats == [("5", "inputs"), ("1", "errors"), (str(nulls), "none of these")]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_reports_render_in_headless_chromium(eval_report, tmp_path):
    out, record = eval_report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]  # fmt: skip
    url = out.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser parsed the whole page: the matrix rows, the cards and their images are in its DOM.
    assert dom.stdout.count('<th class="row"') == 10
    wrong = record["images"] - round(record["top1"] * record["images"])
    assert dom.stdout.count('<div class="card">') == min(36, wrong)
    shot = tmp_path / "eval.png"
    run = subprocess.run([CHROMIUM, *flags, "--window-size=1280,1600", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    # Rendered, not blank: the matrix's greens and reds and the greyscale thumbnails are on screen.
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 200
    greens = sum(n for n, (r, g, b) in colours if g > r + 40 and g > b + 20)
    assert greens > 500  # the confusion matrix's diagonal and the recall bars
