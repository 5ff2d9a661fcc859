"""The web page at ``GET /``, end to end in a real headless browser (Debian's chromium, via playwright).

The app runs under uvicorn on 127.0.0.1 with the tiny test model, once at the root (as ``cataract-screen
serve`` runs it) and once under a stage prefix, the way API Gateway serves it at ``/Prod/``. The browser
uploads a drawn eye and must see the result render; a text file must show the service's error message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from cataract_inference.drawing import draw_eye
from tests.support.browser import TIMEOUT_MS, StagePrefix, serving
from tests.support.images import bmp_rle8, encoded, exif_with_orientation

if TYPE_CHECKING:
    from playwright.sync_api import Browser, FilePayload, Page, Route

pytestmark = pytest.mark.browser

STAGE = "/Prod"


@pytest.fixture(scope="module", params=["local", "stage"])
def page_url(request: pytest.FixtureRequest, app: Any) -> Iterator[str]:
    """The page's URL: at the root (``cataract-screen serve``) or under ``/Prod/`` (API Gateway)."""
    if request.param == "local":
        with serving(app) as base:
            yield f"{base}/"
    else:
        with serving(StagePrefix(app, STAGE)) as base:
            yield f"{base}{STAGE}/"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page that fails the test on any request leaving 127.0.0.1 (no CDN, no fonts)."""
    context = browser.new_context()
    outside: list[str] = []

    def _route(route: Route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", _route)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        yield page
    finally:
        context.close()
    assert not outside, f"the page fetched external resources: {outside}"
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not blocked, f"the page's own Content-Security-Policy blocked it: {blocked}"


def test_upload_a_drawn_eye_and_see_the_result(page: Page, page_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "eye.jpg"
    photo.write_bytes(encoded(draw_eye("cataract", size=(640, 420), seed=3), "JPEG", quality=92))
    predict_urls: list[str] = []
    page.on("request", lambda r: predict_urls.append(r.url) if r.url.endswith("/predict") else None)

    page.goto(page_url)
    disclaimer = page.locator("#disclaimer")
    assert "not a diagnosis" in disclaimer.inner_text()
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()

    result = page.locator("#result")
    result.wait_for(state="visible", timeout=TIMEOUT_MS)
    title = page.locator("#result-title").inner_text()
    assert title in {"Cataract suspected", "No signs of cataract in this photo", "Ungradable photo"}
    assert page.locator("#probability").inner_text().split(" %")[0].replace(".", "", 1).isdigit()
    assert "each half" not in page.locator("#probability").inner_text()  # 640x420: not split
    assert page.locator("#referral").inner_text().startswith(("Yes", "No"))
    assert "not a diagnosis" in page.locator("#result-disclaimer").inner_text()
    heatmap = page.locator("#heatmap")
    heatmap.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert (heatmap.get_attribute("src") or "").startswith("data:image/png;base64,")
    # The overlay must have decoded as an image in the browser, with the photo's shape (JPEG may be decoded
    # at a reduced scale, so only the aspect ratio is fixed).
    width, height = heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width >= 32 and abs(width / height - 640 / 420) < 0.05, (width, height)
    assert page.locator("#error").is_hidden()
    # The page called the API under its own prefix: the stage when there is one.
    expected = page_url.rstrip("/") + "/predict"
    assert predict_urls == [expected]


def test_an_ungradable_photo_shows_its_reasons(page: Page, page_url: str, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(encoded(draw_eye("normal", size=(6, 4)), "PNG"))  # below the tiny model's 8 px minimum
    page.goto(page_url)
    page.locator("#camera").set_input_files(str(tiny))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.locator("#result-title").inner_text() == "Ungradable photo"
    # The explanation, without the code before it that programs match.
    assert page.locator("#reasons li").first.inner_text().startswith("the shorter side is 4 px")
    assert page.locator("#referral").inner_text().startswith("Yes: retake")


def test_a_wide_photo_says_its_halves_were_screened_too(page: Page, page_url: str, tmp_path: Path) -> None:
    from PIL import Image

    wide = Image.new("RGB", (640, 200))
    wide.paste(draw_eye("cataract", size=(320, 200), seed=1), (0, 0))
    wide.paste(draw_eye("normal", size=(320, 200), seed=2), (320, 0))
    photo = tmp_path / "both-eyes.jpg"
    photo.write_bytes(encoded(wide, "JPEG", quality=92))
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    text = page.locator("#probability").inner_text()
    assert "each half" in text and "decided by the " in text, text


def test_a_text_file_shows_the_services_error(page: Page, page_url: str, tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("this is not a photo of an eye\n")
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(note))
    page.get_by_role("button", name="Screen this photo").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    text = error.inner_text()
    assert "415" in text and "not an image" in text and re.search(r" Request id: [\w.:-]+\.$", text), text
    assert page.locator("#result").is_hidden()


def test_the_api_key_is_sent_and_remembered(page: Page, page_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "eye.png"
    photo.write_bytes(encoded(draw_eye("normal", size=(300, 200)), "PNG"))
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("x-api-key")) if r.url.endswith("/predict") else None)
    page.goto(page_url)
    page.locator("#key-box summary").click()
    page.get_by_label("API key").fill("k-123")
    page.get_by_label("API key").dispatch_event("change")
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert sent == ["k-123"]
    page.reload()  # the same tab keeps it (session storage), nothing keeps it for good
    assert page.get_by_label("API key").input_value() == "k-123"
    assert page.evaluate("() => localStorage.length") == 0
    page.get_by_role("button", name="Forget the key").click()
    page.reload()
    assert page.get_by_label("API key").input_value() == ""


A_RESULT = {
    "label": "cataract",
    "probabilities": {"cataract": 0.9, "normal": 0.1},
    "referral": True,
    "threshold": 0.3,
    "quality": {"gradable": True, "reasons": [], "scores": {}},
    "model": {"name": "m", "version": "1", "sha256": "0" * 64},
    "request_id": "r",
    "timing_ms": {},
    "disclaimer": "Screening aid, not a diagnosis.",
}


def _choose_and_submit(page: Page, page_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "eye.png"
    photo.write_bytes(encoded(draw_eye("normal", size=(300, 200)), "PNG"))
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()


def _submit_and_hold(page: Page, page_url: str, tmp_path: Path) -> list[Route]:
    """Submit a photo and hold its request unanswered: the held route is returned for the test to answer."""
    held: list[Route] = []

    def hold(route: Route) -> None:  # a plain function: playwright cannot take a bound builtin as a handler
        held.append(route)

    page.route("**/predict", hold)
    _choose_and_submit(page, page_url, tmp_path)
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the page did not send the photo"
    return held


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        "[]",
        '{"message": "Endpoint request timed out"}',
        # A whole result but for its label: the label's own check, not a missing field, must refuse it.
        json.dumps({**A_RESULT, "label": "maybe"}),
        json.dumps({**A_RESULT, "referral": "yes"}),
    ],
    ids=["empty-object", "array", "gateway-message", "unknown-label", "referral-not-boolean"],
)
def test_an_answer_that_is_not_a_result_is_never_shown_as_one(
    page: Page, page_url: str, tmp_path: Path, body: str
) -> None:
    """A 200 without a known label used to read as a normal result."""
    page.route("**/predict", lambda route: route.fulfill(status=200, content_type="application/json", body=body))
    _choose_and_submit(page, page_url, tmp_path)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "cannot read" in error.inner_text()
    assert page.locator("#result").is_hidden()


def test_an_answer_for_an_earlier_photo_is_not_shown_against_a_new_one(
    page: Page, page_url: str, tmp_path: Path
) -> None:
    import json

    held = _submit_and_hold(page, page_url, tmp_path)  # answered later, after another photo is chosen
    other = tmp_path / "other.png"
    other.write_bytes(encoded(draw_eye("cataract", size=(300, 200), seed=9), "PNG"))
    page.locator("#photo").set_input_files(str(other))  # chosen while the first answer is on its way
    held[0].fulfill(status=200, content_type="application/json", body=json.dumps(A_RESULT))
    page.wait_for_timeout(500)
    assert page.locator("#result").is_hidden()
    assert page.locator("#filename").inner_text() == "other.png"
    assert page.get_by_role("button", name="Screen this photo").is_enabled()


@pytest.mark.parametrize(
    ("status", "words"),
    [(429, "busy (429)"), (504, "failed (504)"), (413, "too large (413)"), (403, "check the API key")],
)
def test_gateway_refusals_say_what_to_do(page: Page, page_url: str, tmp_path: Path, status: int, words: str) -> None:
    body = '{"error": {"code": "x", "message": "from the gateway"}, "disclaimer": "d"}'
    page.route("**/predict", lambda route: route.fulfill(status=status, content_type="application/json", body=body))
    _choose_and_submit(page, page_url, tmp_path)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert words in error.inner_text() and "from the gateway" in error.inner_text()


def test_the_result_takes_the_focus_so_screen_readers_announce_it(page: Page, page_url: str, tmp_path: Path) -> None:
    _choose_and_submit(page, page_url, tmp_path)
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.evaluate("() => document.activeElement && document.activeElement.id") == "result-title"


def test_an_error_takes_the_focus(page: Page, page_url: str, tmp_path: Path) -> None:
    """The submit button is disabled while waiting, which drops the focus; the error must pick it up."""
    note = tmp_path / "notes.txt"
    note.write_text("not a photo\n")
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(note))
    page.locator("#submit").focus()
    page.keyboard.press("Enter")
    page.locator("#error").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.evaluate("() => document.activeElement && document.activeElement.id") == "error"


def _answer(page: Page, page_url: str, tmp_path: Path, result: dict[str, Any]) -> None:
    import json

    body = json.dumps(result)
    page.route("**/predict", lambda route: route.fulfill(status=200, content_type="application/json", body=body))
    _choose_and_submit(page, page_url, tmp_path)
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)


def test_a_normal_result_says_it_does_not_rule_out_disease(page: Page, page_url: str, tmp_path: Path) -> None:
    _answer(page, page_url, tmp_path, {**A_RESULT, "label": "normal", "referral": False})
    assert page.locator("#result-title").inner_text() == "No signs of cataract in this photo"
    assert "does not rule out cataract" in page.locator("#caveat").inner_text()
    page.unroute("**/predict")
    _answer(page, page_url, tmp_path, A_RESULT)
    assert page.locator("#caveat").is_hidden()


def test_an_ungradable_result_shows_no_score_and_no_heat_map(page: Page, page_url: str, tmp_path: Path) -> None:
    overlay = base64.b64encode(encoded(draw_eye("normal", size=(40, 30)), "PNG")).decode()
    ungradable = {
        **A_RESULT,
        "label": "ungradable",
        "quality": {"gradable": False, "reasons": ["too_dark: the photo is too dark"], "scores": {}},
        "heatmap_png": overlay,
    }
    _answer(page, page_url, tmp_path, ungradable)
    assert "90" not in page.locator("#probability").inner_text()
    assert page.locator("#probability").inner_text().startswith("not given")
    assert page.locator("#heatmap-figure").is_hidden()
    assert page.locator("#caveat").is_hidden()  # the normal result's caveat: this photo was not judged at all
    assert page.locator("#reasons li").all_inner_texts() == ["the photo is too dark"]


def _luminance(css: str) -> float:
    channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(fg: str, bg: str) -> float:
    high, low = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_reaches_wcag_aa_in_both_colour_schemes(
    browser: Browser, page_url: str, tmp_path: Path, scheme: Literal["light", "dark"]
) -> None:
    context = browser.new_context(color_scheme=scheme)
    try:
        page = context.new_page()
        page.goto(page_url)
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert "rgba(0, 0, 0, 0)" not in background, "the page must paint its own background"
        colour = "(sel) => getComputedStyle(document.querySelector(sel)).color"
        texts = ("body", "#filename", "#status", ".disclaimer", "#error")
        measured = {sel: page.evaluate(colour, sel) for sel in texts}
        for label in ("cataract", "normal", "ungradable"):
            page.evaluate("(l) => { document.getElementById('result-title').className = 'label ' + l; }", label)
            measured[f"title ({label})"] = page.evaluate(colour, "#result-title")
        low = {what: round(_contrast(fg, background), 2) for what, fg in measured.items()}
        assert all(ratio >= 4.5 for ratio in low.values()), (scheme, background, low)
    finally:
        context.close()


def test_the_result_fits_a_320_px_phone(browser: Browser, page_url: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 320, "height": 640})
    try:
        page = context.new_page()
        _answer(page, page_url, tmp_path, A_RESULT)
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.querySelector('#result dl').scrollWidth,"
            " document.querySelector('#result dl').clientWidth]"
        )
        assert widths[0] <= 320 and widths[1] <= widths[2], widths
    finally:
        context.close()


def _error_for(page: Page, page_url: str, photo: Path) -> tuple[str, list[str]]:
    """Screen ``photo`` on a fresh page: the error shown, and the /predict requests sent (the list goes on growing)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/predict") else None)
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    return error.inner_text(), sent


def test_a_large_file_the_browser_cannot_read_is_named_not_sent(page: Page, page_url: str, tmp_path: Path) -> None:
    """A 5 MB HEIC used to be sent whole and refused as "too large" (413), which sent users the wrong way."""
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * (5 * 1024 * 1024))
    text, sent = _error_for(page, page_url, heic)
    assert "HEIC" in text and "Most Compatible" in text
    assert sent == []
    # A small HEIC is sent: the service answers it with the same advice.
    small = tmp_path / "IMG_0002.HEIC"
    small.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 2048)
    page.locator("#photo").set_input_files(str(small))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#error").filter(has_text="(415)").wait_for(timeout=TIMEOUT_MS)
    assert len(sent) == 1 and "Most Compatible" in page.locator("#error").inner_text()


def test_a_browser_without_newer_abortsignal_methods_still_screens(page: Page, page_url: str, tmp_path: Path) -> None:
    """AbortController exists since Chrome 66 and Safari 12.1; throwIfAborted only since Chrome 100, Safari 15.4."""
    page.add_init_script("delete AbortSignal.prototype.throwIfAborted; delete AbortSignal.timeout;")
    _choose_and_submit(page, page_url, tmp_path)
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.locator("#error").is_hidden()


def test_an_answer_that_never_comes_ends_in_an_error_not_a_spinner(page: Page, page_url: str, tmp_path: Path) -> None:
    page.clock.install()
    _submit_and_hold(page, page_url, tmp_path)  # never answered
    page.clock.run_for(60_000)  # a slow upload may still be under way: the service allows 60 s for the body
    assert page.locator("#error").is_hidden()
    page.clock.run_for(41_000)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "No answer from the service" in error.inner_text()
    assert page.get_by_role("button", name="Screen this photo").is_enabled()


def test_the_page_may_not_be_framed_and_runs_only_its_own_script(browser: Browser, page_url: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        response = page.goto(page_url)
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
        assert "base-uri 'none'" in policy and "form-action 'none'" in policy
        photo: FilePayload = {"name": "eye.png", "mimeType": "image/png", "buffer": encoded(draw_eye("normal"), "PNG")}
        page.locator("#photo").set_input_files(files=[photo])
        assert page.locator("#submit").is_enabled()  # the page's own (hashed) script ran
        assert not blocked
        ran = page.evaluate(  # an injected inline script is refused
            "() => new Promise((done) => { window.__ran = false; const s = document.createElement('script');"
            " s.textContent = 'window.__ran = true'; document.body.appendChild(s);"
            " setTimeout(() => done(window.__ran), 50); })"
        )
        assert ran is False and blocked
    finally:
        context.close()


def test_a_refused_connection_says_so_at_once(page: Page, page_url: str, tmp_path: Path) -> None:
    page.route("**/predict", lambda route: route.abort("connectionrefused"))
    _choose_and_submit(page, page_url, tmp_path)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert error.inner_text().startswith("Could not reach the service"), error.inner_text()


def _os2_bitmap() -> bytes:
    """A 2x2 24-bit OS/2 1.x BMP (12-byte header) whose first pixel row puts the bytes 1, 0 at offset 30."""
    import struct

    rows = bytes([9, 9, 9, 9, 1, 0, 0, 0]) + bytes([50, 60, 70, 80, 90, 100, 0, 0])  # each padded to 4 bytes
    header = struct.pack("<IHHHH", 12, 2, 2, 1, 24)
    return b"BM" + struct.pack("<IHHI", 14 + 12 + len(rows), 0, 0, 26) + header + rows


def _recording(sent: list[bytes]) -> Callable[[Route], None]:
    """A route handler that keeps the image each request sent (decoded) and answers A_RESULT."""

    def answer(route: Route) -> None:
        sent.append(base64.b64decode(json.loads(route.request.post_data or "{}")["image"]))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(A_RESULT))

    return answer


def test_a_small_photo_in_a_format_the_service_refuses_is_sent_as_jpeg(
    page: Page, page_url: str, tmp_path: Path
) -> None:
    # The browser draws AVIF; the service refuses it. Small photos were sent as they were, and refused (415),
    # while a large one, re-encoded as JPEG, was screened.
    sent: list[bytes] = []
    page.route("**/predict", _recording(sent))
    page.goto(page_url)
    for name, data in (
        ("eye.avif", encoded(draw_eye("normal", size=(300, 200)), "AVIF")),
        ("eye.bmp", bmp_rle8((64, 64))),  # run-length encoded: the service refuses it, the browser draws it
    ):
        photo = tmp_path / name
        photo.write_bytes(data)
        sent.clear()
        page.locator("#photo").set_input_files(str(photo))
        page.get_by_role("button", name="Screen this photo").click()
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert sent and sent[0][:3] == b"\xff\xd8\xff", f"{name} was sent as it is, and the service refuses it"
    # An OS/2 bitmap has no compression field: bytes 30-31 are its pixels (here 1, 0), not "RLE". Sent as it is.
    os2 = _os2_bitmap()
    photo = tmp_path / "os2.bmp"
    photo.write_bytes(os2)
    sent.clear()
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert sent == [os2]


_XMP_ORIENTATION_6 = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


@pytest.mark.parametrize(
    ("name", "save"),
    [
        ("eye.webp", {"format": "WEBP", "quality": 90, "exif": exif_with_orientation(6)}),  # EXIF inside a WebP
        ("eye.jpg", {"format": "JPEG", "quality": 90, "xmp": _XMP_ORIENTATION_6}),  # XMP's orientation, no EXIF
        ("eye.webp", {"format": "WEBP", "quality": 90, "xmp": _XMP_ORIENTATION_6}),  # its XMP after the image data
    ],
    ids=["webp-exif", "jpeg-xmp", "webp-xmp"],
)
def test_a_large_photo_whose_turn_the_browser_ignores_is_sent_as_it_is(
    page: Page, page_url: str, tmp_path: Path, name: str, save: dict[str, Any]
) -> None:
    """Over 2048 px the page shrinks a photo, drawn as chromium reads it; chromium ignores these orientations,
    which the service applies, so the shrunk copy went sideways (and a turned eye can get another answer)."""
    sent: list[bytes] = []
    page.route("**/predict", _recording(sent))
    page.goto(page_url)
    photo = tmp_path / name
    draw_eye("cataract", size=(3000, 2100)).save(photo, **save)
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    # Digests, not the bytes: pytest's diff of two megabytes of image takes minutes.
    got = [hashlib.sha256(s).hexdigest() for s in sent]
    assert got == [hashlib.sha256(photo.read_bytes()).hexdigest()], f"sent {[len(s) for s in sent]} bytes: a copy"


def _answering(body: str) -> Callable[[Route], None]:
    """A route handler that answers 200 with ``body`` (one argument: playwright passes the request to a second)."""

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=body)

    return answer


def test_a_probability_just_below_the_threshold_never_reads_as_at_it(page: Page, page_url: str, tmp_path: Path) -> None:
    # To one decimal, 0.2092 beside a threshold of 0.20926 read "20.9 % (refer at 20.9 % or more)" over
    # "No referral indicated by this photo".
    import json

    below = {
        **A_RESULT,
        "label": "normal",
        "probabilities": {"cataract": 0.2092, "normal": 0.7908},
        "referral": False,
        "threshold": 0.20926,
    }
    # And a threshold set by hand, with more decimals than the probability's 6 (13 once showed both as equal).
    closer = {**below, "probabilities": {"cataract": 0.209263, "normal": 0.790737}, "threshold": 0.2092630000001}
    for answer, starts in ((below, "20.92 %"), (closer, "20.92630000000 %")):
        page.unroute("**/predict")
        page.route("**/predict", _answering(json.dumps(answer)))
        _choose_and_submit(page, page_url, tmp_path)
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        text = page.locator("#probability").inner_text()
        shown = [float(x) for x in re.findall(r"([0-9.]+) %", text)]
        assert len(shown) == 2 and shown[0] < shown[1] and text.startswith(starts), text


def test_a_used_up_quota_says_so_not_try_again_in_a_minute(page: Page, page_url: str, tmp_path: Path) -> None:
    body = (
        '{"error": {"code": "quota_exceeded", "message": "The daily quota of this API key is used up."}, '
        '"disclaimer": "d"}'
    )
    page.route("**/predict", lambda route: route.fulfill(status=429, content_type="application/json", body=body))
    _choose_and_submit(page, page_url, tmp_path)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    text = error.inner_text()
    assert "quota is used up (429)" in text and "in a minute" not in text and ".." not in text


# Holds each decoding (the page's first step in preparing a photo) until the test releases it.
_HOLD_DECODING = """
window.__held = [];
const decode = window.createImageBitmap;
window.createImageBitmap = (...args) => new Promise((resolve, reject) => {
  window.__held.push(() => decode.apply(window, args).then(resolve, reject));
});
"""


def test_a_photo_replaced_while_it_is_prepared_is_never_sent(page: Page, page_url: str, tmp_path: Path) -> None:
    """Photo A, still being prepared when photo B was chosen, was sent all the same: maybe another patient's."""
    sent: list[bytes] = []
    page.route("**/predict", _recording(sent))
    page.add_init_script(_HOLD_DECODING)
    first, second = tmp_path / "patient-a.png", tmp_path / "patient-b.png"
    first.write_bytes(encoded(draw_eye("normal", size=(300, 200)), "PNG"))
    second.write_bytes(encoded(draw_eye("cataract", size=(300, 200), seed=9), "PNG"))
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(first))
    page.get_by_role("button", name="Screen this photo").click()
    page.wait_for_function("() => window.__held.length === 1", timeout=TIMEOUT_MS)
    page.locator("#photo").set_input_files(str(second))  # while the first is still being prepared
    page.evaluate("() => window.__held.shift()()")  # the first's preparation ends now
    page.wait_for_timeout(500)
    assert sent == [], "the replaced photo was sent"
    assert page.locator("#error").is_hidden() and page.locator("#result").is_hidden()
    page.get_by_role("button", name="Screen this photo").click()
    page.wait_for_function("() => window.__held.length === 1", timeout=TIMEOUT_MS)
    page.evaluate("() => window.__held.shift()()")
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert sent == [second.read_bytes()]


def test_choosing_another_photo_cancels_the_request_under_way(page: Page, page_url: str, tmp_path: Path) -> None:
    page.add_init_script(
        "window.__signals = []; const send = window.fetch;"
        " window.fetch = (url, init) => { window.__signals.push(init && init.signal);"
        " return send.call(window, url, init); };"
    )
    _submit_and_hold(page, page_url, tmp_path)
    assert page.evaluate("() => window.__signals.map((s) => !!s && s.aborted)") == [False]
    other = tmp_path / "other.png"
    other.write_bytes(encoded(draw_eye("cataract", size=(300, 200), seed=9), "PNG"))
    page.locator("#photo").set_input_files(str(other))
    assert page.evaluate("() => window.__signals.map((s) => !!s && s.aborted)") == [True]
    page.wait_for_timeout(300)
    assert page.locator("#error").is_hidden()  # cancelled by the user's own pick: not an error to show
    assert page.get_by_role("button", name="Screen this photo").is_enabled()


def test_an_empty_file_is_named_not_sent(page: Page, page_url: str, tmp_path: Path) -> None:
    """A 0-byte file got the service's 422, written for programmers ("at least 1 character")."""
    empty = tmp_path / "eye.jpg"
    empty.write_bytes(b"")
    text, sent = _error_for(page, page_url, empty)
    assert text.startswith("This file is empty"), text
    page.wait_for_timeout(300)
    assert sent == []
    assert page.get_by_role("button", name="Screen this photo").is_enabled()


def test_an_api_key_with_a_character_fetch_cannot_send(page: Page, page_url: str, tmp_path: Path) -> None:
    """Pasted keys carried a zero-width space or an en dash: fetch threw, shown as "Could not reach the service"."""
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("x-api-key")) if r.url.endswith("/predict") else None)
    page.goto(page_url)
    page.locator("#key-box summary").click()
    page.get_by_label("API key").fill("\u200bk-123 \u200b")  # invisible characters: dropped
    _choose_and_submit_here(page, tmp_path)
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert sent == ["k-123"]
    page.get_by_label("API key").fill("k\u2013123")  # an en dash, as a word processor turns "-"
    page.get_by_role("button", name="Screen this photo").click()
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    text = error.inner_text()
    assert text.startswith("The API key contains a character that cannot be sent: ") and "U+2013" in text, text
    page.wait_for_timeout(300)
    assert sent == ["k-123"]


def _choose_and_submit_here(page: Page, tmp_path: Path) -> None:
    photo = tmp_path / "eye.png"
    photo.write_bytes(encoded(draw_eye("normal", size=(300, 200)), "PNG"))
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ('{"error": {"code": "internal_error", "message": "Internal error."}, "request_id": "r-123"}', {}),
        ('{"message": "Internal server error"}', {"X-Request-Id": "r-123"}),  # only in the header
    ],
    ids=["body", "header"],
)
def test_an_error_names_its_request_id(
    page: Page, page_url: str, tmp_path: Path, body: str, headers: dict[str, str]
) -> None:
    """A 500 shown without its request id could not be found in the logs."""

    def fail(route: Route) -> None:
        route.fulfill(status=500, content_type="application/json", headers=headers, body=body)

    page.route("**/predict", fail)
    _choose_and_submit(page, page_url, tmp_path)
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "(500)" in error.inner_text() and error.inner_text().endswith(" Request id: r-123."), error.inner_text()


def test_a_large_photo_the_browser_cannot_shrink_gets_advice_with_its_413(
    page: Page, page_url: str, tmp_path: Path
) -> None:
    """Chromium cannot decode TIFF, so it cannot shrink one: a large TIFF got a bare 413. It is still sent (the service
    decodes TIFF, and `serve` may take more), and a 413 for it says what to do."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/predict") else None)
    page.goto(page_url)
    large = tmp_path / "scan.tif"
    draw_eye("cataract", size=(1400, 1300)).save(large, format="TIFF")  # uncompressed: 5.5 MB, over the default limit
    assert large.stat().st_size > 6 * 1024 * 1024 * 3 // 4
    page.locator("#photo").set_input_files(str(large))
    page.get_by_role("button", name="Screen this photo").click()
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert error.inner_text().startswith("The photo is too large to send as it is, and this browser cannot read its")
    assert "export the photo as a JPEG" in error.inner_text() and len(sent) == 1
    # A small one is screened: the service decodes TIFF.
    small = tmp_path / "small.tif"
    draw_eye("normal", size=(300, 200)).save(small, format="TIFF")
    page.locator("#photo").set_input_files(str(small))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert len(sent) == 2


def test_a_large_file_changed_after_it_was_chosen_says_choose_it_again(
    page: Page, page_url: str, tmp_path: Path
) -> None:
    """Over the size that can be sent, a changed file was taken for a format the browser cannot read."""
    photo = tmp_path / "big.tif"
    draw_eye("normal", size=(1400, 1300)).save(photo, format="TIFF")
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(photo))
    draw_eye("cataract", size=(1400, 1310)).save(photo, format="TIFF")  # edited after the pick
    page.get_by_role("button", name="Screen this photo").click()
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert error.inner_text() == "The file changed since you chose it: choose it again.", error.inner_text()


def test_a_file_changed_after_it_was_chosen_says_choose_it_again(page: Page, page_url: str, tmp_path: Path) -> None:
    """Chromium refuses to read a file edited since it was picked: its NotReadableError text told users nothing."""
    photo = tmp_path / "eye.png"
    photo.write_bytes(encoded(draw_eye("normal", size=(300, 200)), "PNG"))
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(photo))
    photo.write_bytes(encoded(draw_eye("cataract", size=(320, 200), seed=4), "PNG"))  # edited after the pick
    page.get_by_role("button", name="Screen this photo").click()
    error = page.get_by_role("alert")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert error.inner_text() == "The file changed since you chose it: choose it again.", error.inner_text()
    # Cleared after each pick, so choosing the same path again fires "change".
    assert page.locator("#photo").input_value() == ""
    page.locator("#photo").set_input_files(str(photo))
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)


def test_a_photo_of_both_eyes_names_the_view_that_decided(page: Page, page_url: str, tmp_path: Path) -> None:
    """The result said the highest view decided, never which: the text and the heat map now name it."""
    overlay = base64.b64encode(encoded(draw_eye("normal", size=(40, 20)), "PNG")).decode()
    both = {**A_RESULT, "views": {"whole": 0.3, "left": 0.46, "right": 0.93}, "heatmap_png": overlay}
    _answer(page, page_url, tmp_path, both)
    assert "decided by the right half of the photo" in page.locator("#probability").inner_text()
    assert "right half of the photo" in (page.locator("#heatmap").get_attribute("alt") or "")
    page.unroute("**/predict")
    # A tie as rounded: the service chose on values the page no longer has, so it names no view.
    _answer(page, page_url, tmp_path, {**both, "views": {"whole": 0.5, "top": 0.5, "bottom": 0.2}})
    text = page.locator("#probability").inner_text()
    assert "each half" in text and "decided by" not in text, text


def _os_drop(page: Page, paths: list[Path], on: str = "h1", *, then_drop: bool = True) -> None:
    """Drags ``paths`` (files or folders) from outside the browser onto the element ``on`` and drops them there,
    through Chromium's own input pipeline (DevTools' Input.dispatchDragEvent), as a file manager would."""
    box = page.locator(on).bounding_box()
    assert box is not None
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    point = {"x": box["x"] + 10, "y": box["y"] + box["height"] / 2, "data": data}
    for kind in ("dragEnter", "dragOver", *(["drop"] if then_drop else [])):
        cdp.send("Input.dispatchDragEvent", {"type": kind, **point})


def _state(page: Page) -> dict[str, Any]:
    return {
        "filename": page.locator("#filename").inner_text(),
        "status": page.locator("#status").inner_text(),
        "busy": page.locator("#result").get_attribute("aria-busy"),
        "submit": page.get_by_role("button", name="Screen this photo").is_enabled(),
        "error": page.locator("#error").inner_text() if page.locator("#error").is_visible() else None,
    }


def _photo(tmp_path: Path, name: str, seed: int) -> Path:
    path = tmp_path / name
    path.write_bytes(encoded(draw_eye("cataract" if seed % 2 else "normal", size=(300, 200), seed=seed), "PNG"))
    return path


def test_a_photo_dropped_anywhere_on_the_page_is_screened(page: Page, page_url: str, tmp_path: Path) -> None:
    sent: list[bytes] = []
    page.route("**/predict", _recording(sent))
    photo = _photo(tmp_path, "eye.png", 4)
    page.goto(page_url)
    assert page.get_by_role("button", name="Screen this photo").is_disabled()
    # Over the page the form is outlined; dropped on the heading, outside the form, the photo is chosen rather than
    # opened by the browser in place of the page.
    _os_drop(page, [photo], then_drop=False)
    assert "dropping" in (page.locator("#form").get_attribute("class") or "")
    _os_drop(page, [photo])
    page.wait_for_function("() => document.getElementById('filename').textContent === 'eye.png'", timeout=TIMEOUT_MS)
    assert "dropping" not in (page.locator("#form").get_attribute("class") or "")
    assert page.url == page_url and page.locator("#preview").is_visible()
    page.get_by_role("button", name="Screen this photo").click()
    page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert sent == [photo.read_bytes()]


@pytest.mark.parametrize("what", ["two photos", "a folder"])
def test_several_photos_or_a_folder_dropped_are_refused_and_none_is_sent(
    page: Page, page_url: str, tmp_path: Path, what: str
) -> None:
    """Which of several photos was screened would be a guess, and so would whose eye it shows. A folder passed
    as a photo, and failed only once sent ("a requested file or directory could not be found")."""
    held = _submit_and_hold(page, page_url, tmp_path)  # a photo chosen and under way when the drop comes
    if what == "two photos":
        dropped = [_photo(tmp_path, "a.png", 6), _photo(tmp_path, "b.png", 7)]
        expected = "Drop one photo at a time: 2 files came"
    else:
        folder = tmp_path / "Photos"
        folder.mkdir()
        _photo(folder, "a.png", 6)
        dropped, expected = [folder], "Drop a photo, not a folder"
    _os_drop(page, dropped)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    # The photo chosen before is let go, and the request under way with it: nothing says "Screening…" for ever.
    state = _state(page)
    assert state["error"] is not None and state["error"].startswith(expected), state
    assert state == {**state, "filename": "No photo chosen", "status": "", "busy": None, "submit": False}, state
    assert page.locator("#preview").is_hidden()
    page.wait_for_timeout(300)
    assert len(held) == 1  # the photo under way, and nothing after it


def test_a_link_text_or_the_preview_dragged_within_the_page_keeps_the_photo(
    page: Page, page_url: str, tmp_path: Path
) -> None:
    page.goto(page_url)
    page.locator("#photo").set_input_files(str(_photo(tmp_path, "eye.png", 5)))
    page.locator("#preview").wait_for(state="visible", timeout=TIMEOUT_MS)
    kept = {"filename": "eye.png", "status": "", "busy": None, "submit": True, "error": None}
    # The preview is not draggable (a drag of it once dropped as "not a file", and let the photo go).
    assert page.locator("#preview").get_attribute("draggable") == "false"
    # A word of the disclaimer, selected and dragged onto the heading with the mouse.
    box = page.locator("#disclaimer").bounding_box()
    heading = page.locator("h1").bounding_box()
    assert box is not None and heading is not None
    page.locator("#disclaimer").dblclick(position={"x": 10, "y": box["height"] / 2})
    assert page.evaluate("() => String(getSelection())").strip()
    page.mouse.move(box["x"] + 10, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(heading["x"] + 40, heading["y"] + 10, steps=10)
    page.mouse.up()
    page.wait_for_timeout(300)
    assert _state(page) == kept
    # A link dragged in from elsewhere is the browser's too: the page takes only files.
    prevented = page.evaluate(
        """() => { const data = new DataTransfer(); data.setData("text/uri-list", "https://example.org/eye.jpg");
           const over = new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: data });
           const drop = new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: data });
           const h1 = document.querySelector("h1");
           h1.dispatchEvent(over); h1.dispatchEvent(drop); return over.defaultPrevented || drop.defaultPrevented; }"""
    )
    assert prevented is False
    assert _state(page) == kept


_PASTE = """([target, text, b64]) => {
  const data = new DataTransfer();
  if (text !== null) data.setData("text/plain", text);
  if (b64 !== null) data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "image.png",
    { type: "image/png" }));
  const event = new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: data });
  document.querySelector(target).dispatchEvent(event);
  return event.defaultPrevented;
}"""


def test_a_pasted_photo_is_chosen_and_text_pasted_into_the_key_box_is_the_browsers(page: Page, page_url: str) -> None:
    photo = base64.b64encode(encoded(draw_eye("normal", size=(300, 200), seed=5), "PNG")).decode()
    page.goto(page_url)
    page.locator("#key-box summary").click()
    # A key copied from a document that put a picture beside the text: the text is pasted, no photo is chosen.
    assert page.evaluate(_PASTE, ["#api-key", "k-123", photo]) is False
    assert page.evaluate(_PASTE, ["#api-key", "k-123", None]) is False
    assert page.locator("#filename").inner_text() == "No photo chosen"
    # A photo pasted anywhere else (the clipboard of a screenshot, say) is chosen.
    assert page.evaluate(_PASTE, ["body", None, photo]) is True
    assert page.locator("#filename").inner_text() == "image.png"
    assert page.get_by_role("button", name="Screen this photo").is_enabled()
