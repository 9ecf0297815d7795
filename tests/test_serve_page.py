"""The web page at ``/`` of a real ``zeroshot serve``, in a real headless Chromium (Playwright,
Debian's ``chromium``): images uploaded, each one's ranked labels read back from the DOM and
compared with the server's records, no request leaving the origin, one pass by keyboard alone, a
refusal shown as its line, and a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from zeroshot.client import Client
from zeroshot.model.models import BUNDLED_NAME

from .serving import Server, server_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
LABELS = ["ankle boot", "bag", "coat", "dress", "sandal", "trouser"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it"
)

# Each result card as the page shows it: the path, and each bar's label, score and percent text.
READ_CARDS = """cards => cards.map(card => ({
    path: card.dataset.path,
    error: card.dataset.error ?? null,
    thumbnail: card.querySelector("img")?.src ?? null,
    loaded: card.querySelector("img")?.naturalWidth ?? 0,
    bars: Array.from(card.querySelectorAll("li.bar"), row => ({
        label: row.dataset.label, score: Number(row.dataset.score),
        text: row.querySelector(".text").textContent, pct: row.querySelector(".pct").textContent})),
}))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server("-m", BUNDLED_NAME, "--workers", "0", env=server_env(tmp_path_factory.mktemp("cache"))) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # chromium is here: the page must be tested, so this is a failure
        pytest.fail("Playwright is not installed (pip install -e '.[dev]')", pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server's ``/``, every request it makes recorded in ``page.requests``."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    tab = context.new_page()
    tab.requests = []
    tab.on("request", lambda request: tab.requests.append(request.url))
    # Intercept file choosers from the start: the interception expect_file_chooser turns on can
    # come too late for a chooser opened at once, which then opens natively and is never reported.
    tab.on("filechooser", lambda chooser: None)
    tab.set_default_timeout(15_000)
    tab.goto(server.url + "/")
    tab.wait_for_selector('#pack option[value="fashion-mnist"]', state="attached")
    yield tab
    context.close()


def pictures() -> list[str]:
    return [str(EXAMPLES / "ankle-boot-0000.png"), str(EXAMPLES / "bag-0018.png")]


def assert_cards_match(cards: list[dict], records: list[dict]) -> None:
    assert len(cards) == len(records)
    for card, record in zip(cards, records, strict=True):
        assert card["path"] == Path(record["path"]).name and card["error"] is None
        assert card["thumbnail"].startswith("blob:") and card["loaded"] == 28  # the local file, shown
        assert [b["label"] for b in card["bars"]] == [t["label"] for t in record["top_k"]]
        assert [b["text"] for b in card["bars"]] == [t["label"] for t in record["top_k"]]
        assert [b["score"] for b in card["bars"]] == pytest.approx([t["score"] for t in record["top_k"]], abs=1e-6)
        assert [b["pct"] for b in card["bars"]] == [f"{t['score'] * 100:.1f}%" for t in record["top_k"]]
        assert card["bars"][0]["label"] == record["label"]


def assert_stayed_home(requests: list[str], server_url: str) -> None:
    origin = urlsplit(server_url)
    for url in requests:
        parts = urlsplit(url)
        assert parts.scheme in ("blob", "data") or (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url


def test_page_classifies_uploads_with_a_pack(page, server, tmp_path):
    files = pictures()
    page.set_input_files("#files", files)
    page.select_option("#pack", "fashion-mnist")
    assert page.is_disabled("#labels")  # the pack wins: the labels are not sent
    page.fill("#topk", "3")
    page.click("#classify")
    page.wait_for_selector('#results[data-state="done"]')
    cards = page.eval_on_selector_all("#results > li.card", READ_CARDS)
    records = Client(server.url).classify(files, dataset="fashion-mnist", top_k=3)
    assert [r["label"] for r in records] == ["ankle boot", "bag"]
    assert_cards_match(cards, records)
    assert page.get_attribute("#results", "aria-live") == "polite"
    assert "2 images classified" in page.inner_text("#status")
    assert any(url.endswith("/v1/classify") for url in page.requests)
    assert_stayed_home(page.requests, server.url)

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 400
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, bars and thumbnails, not a blank page


def test_page_works_by_keyboard_alone(page, server):
    files = pictures()
    # Every control has a label; focus starts at the top and reaches "Choose images" by Tab.
    unlabelled = page.evaluate(
        """() => Array.from(document.querySelectorAll("input, select, textarea"))
              .filter(el => !el.labels.length && !el.getAttribute("aria-label")).map(el => el.id)"""
    )
    assert unlabelled == []
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "choose":
            break
    assert page.evaluate("document.activeElement.id") == "choose"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus visible
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "labels"
    page.keyboard.type("\n".join(LABELS))
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "classify":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector('#results[data-state="done"]')
    cards = page.eval_on_selector_all("#results > li.card", READ_CARDS)
    assert_cards_match(cards, Client(server.url).classify(files, labels=LABELS, top_k=5))
    assert_stayed_home(page.requests, server.url)


def test_a_refusal_and_a_bad_image_are_shown_as_their_lines(page, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels")
    page.click("#keybox summary")
    page.fill("#key", "s3cret")  # kept for the tab, sent as a Bearer token (this server needs none)
    page.reload()
    page.wait_for_selector('#pack option[value="fashion-mnist"]', state="attached")
    assert page.input_value("#key") == "s3cret" and page.is_visible("#key")  # shown: a key is set
    page.set_input_files("#files", [pictures()[0], str(bad)])
    page.fill("#labels", "bag, coat, dress")
    with page.expect_request("**/v1/classify") as sent:
        page.click("#classify")
    assert sent.value.headers.get("authorization") == "Bearer s3cret"
    page.wait_for_selector('#results[data-state="done"]')
    cards = page.eval_on_selector_all("#results > li.card", READ_CARDS)
    record = Client(server.url).classify([str(bad)], labels=["bag", "coat", "dress"])[0]
    assert [c["bars"][0]["label"] if c["bars"] else None for c in cards][1:] == [None]
    assert cards[1]["error"] == record["error"] and record["error"]
    assert cards[1]["thumbnail"] is None and cards[0]["thumbnail"].startswith("blob:")
    assert record["error"] in page.inner_text('#results > li.card[data-path="notes.png"]')
    assert [b["label"] for b in cards[0]["bars"]] and len(cards[0]["bars"]) == 3

    line = "busy: 256 images are waiting; try again in a second"
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=429, headers={"Retry-After": "1"}, content_type="application/json", body=f'{{"error": "{line}"}}'
        ),
    )
    page.click("#classify")
    page.wait_for_selector('#results[data-state="failed"]', state="attached")
    assert page.inner_text("#status") == line
    assert page.get_attribute("#status", "data-status") == "429"
