"""The upload page (clients/web) in a real headless Chromium, served by the real server: a photo gets its top-5 with
bars, a corrupt file gets a plain-words error, a missing API key reveals the key field, and a phone-width screen
needs no sideways scrolling.

Needs Debian's ``chromium`` and the ``playwright`` Python package (never ``playwright install``: we drive the system
browser). Set CLIENTS_SCREENSHOT=path to save a screenshot of the page (how docs/upload-page.png was made).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from resnet.samples import DIGIT_LABELS
from tests.clients_server import shared_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium: apt-get install -y chromium (the browser test drives the system browser)",
)


@pytest.fixture(scope="module")
def server(digits_checkpoint, tmp_path_factory):
    return shared_server(digits_checkpoint, tmp_path_factory.mktemp("serve-log"))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def corrupt_jpeg(tmp_path: Path) -> Path:
    """A file that starts like a JPEG and is not one."""
    broken = tmp_path / "corrupt.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"this is not really a JPEG" * 20)
    return broken


def test_missing_key_shows_plain_message_and_reveals_the_key_field(page, photo_paths):
    assert page.locator("#api-key-row").is_hidden()
    page.set_input_files("#file-input", str(photo_paths[1]))
    card = page.locator("#results .result").first
    sync_api.expect(card.locator(".error")).to_contain_text("needs an API key", timeout=20_000)
    assert page.locator("#api-key-row").is_visible()
    assert page.evaluate("document.activeElement.id") == "api-key"


def test_photo_gets_top5_bars_and_corrupt_file_gets_plain_error(page, server, photo_paths, tmp_path):
    page.locator("#api-key-row").evaluate("el => el.hidden = false")
    page.fill("#api-key", server.api_key)
    photo, broken = photo_paths[1], corrupt_jpeg(tmp_path)
    page.set_input_files("#file-input", [str(photo), str(broken)])
    sync_api.expect(page.locator("#status")).to_contain_text(
        "Done: 1 classified, 1 could not be classified", timeout=30_000
    )

    cards = page.locator("#results .result")
    assert cards.count() == 2
    good = cards.filter(has_text=photo.name)
    rows = good.locator(".prediction")
    assert rows.count() == 5
    labels = rows.locator(".label").all_inner_texts()
    assert set(labels) <= set(DIGIT_LABELS) and len(set(labels)) == 5
    percents = [float(t.lstrip("<").rstrip("%")) for t in rows.locator(".probability").all_inner_texts()]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.5
    widths = [
        float(w) for w in rows.locator(".bar").evaluate_all("els => els.map(e => e.getAttribute('aria-valuenow'))")
    ]
    assert widths[0] == pytest.approx(percents[0], abs=0.1)
    fill_px = rows.locator(".fill").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert fill_px == sorted(fill_px, reverse=True) and fill_px[0] > 0  # the bars are drawn to scale
    assert "digits-resnet8" in good.locator(".state").inner_text()
    assert good.locator("img.preview").evaluate("img => img.complete && img.naturalWidth > 0")

    bad = cards.filter(has_text="corrupt.jpg")
    sync_api.expect(bad.locator(".error")).to_contain_text("could not be read as an image")
    assert bad.locator(".prediction").count() == 0
    assert page.locator("#results").get_attribute("aria-live") == "polite"

    shot = os.environ.get("CLIENTS_SCREENSHOT")
    if shot:
        page.set_viewport_size({"width": 860, "height": 600})
        page.screenshot(path=shot, full_page=True)
        Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)  # small enough for git


def test_dropping_an_image_on_the_zone_classifies_it(page, server, photo_paths):
    page.locator("#api-key-row").evaluate("el => el.hidden = false")
    page.fill("#api-key", server.api_key)
    photo = photo_paths[3]  # rocket.jpg
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        [photo.name, base64.b64encode(photo.read_bytes()).decode()],
    )
    card = page.locator("#results .result").filter(has_text=photo.name)
    sync_api.expect(card.locator(".prediction")).to_have_count(5, timeout=20_000)
    assert page.locator("#drop-zone.over").count() == 0  # the highlight went away after the drop


def test_centre_crop_toggle_is_sent_to_the_server(page, server, photo_paths):
    page.locator("#api-key-row").evaluate("el => el.hidden = false")
    page.fill("#api-key", server.api_key)
    page.uncheck("#ten-crop")
    page.set_input_files("#file-input", str(photo_paths[0]))
    sync_api.expect(page.locator("#results .result .state").first).to_contain_text("Centre crop", timeout=20_000)


def test_keyboard_reaches_the_file_chooser_and_options(page):
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "ten-crop"
    page.keyboard.press("Space")
    assert not page.is_checked("#ten-crop")
    # Every form control has a label a screen reader announces.
    unlabeled = page.evaluate(
        "[...document.querySelectorAll('input')].filter(i => !i.labels || i.labels.length === 0).map(i => i.id)"
    )
    assert unlabeled == []


def test_phone_width_needs_no_sideways_scrolling(browser, server, photo_paths):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.goto(server.url + "/")
    page.locator("#api-key-row").evaluate("el => el.hidden = false")
    page.fill("#api-key", server.api_key)
    page.set_input_files("#file-input", str(photo_paths[2]))
    sync_api.expect(page.locator(".prediction")).to_have_count(5, timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    button = page.locator(".button-like").bounding_box()
    assert button["height"] >= 44  # a thumb-sized target
    context.close()


def test_model_chooser_lists_the_repository_and_sends_the_choice(browser, digits_checkpoint, tmp_path, photo_paths):
    import httpx

    from tests.serve_support import Server, export_onnx, until

    graph = export_onnx(digits_checkpoint, tmp_path / "digits.onnx")
    for name in ("digits", "other"):
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        shutil.copyfile(graph, tmp_path / "models" / name / "1" / "model.onnx")
    srv = Server(["--model-repository", str(tmp_path / "models")], log_path=tmp_path / "server.log").start(180)
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = context.new_page()
        index = srv.url + "/v2/repository/index"
        until(lambda: len(httpx.post(index, json={"ready": True}, timeout=10).json()) == 2, 60)
        page.goto(srv.url + "/")
        sync_api.expect(page.locator("#model-row")).to_be_visible(timeout=20_000)
        assert page.locator("#model-select option").all_inner_texts() == ["digits (version 1)", "other (version 1)"]
        page.select_option("#model-select", "other")
        page.set_input_files("#file-input", str(photo_paths[1]))
        sync_api.expect(page.locator("#status")).to_contain_text("Done: 1 classified", timeout=30_000)
        assert "other v1" in page.locator("#results .result .state").first.inner_text()
    finally:
        context.close()
        srv.stop()
