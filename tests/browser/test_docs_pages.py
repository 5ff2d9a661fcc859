"""``/docs`` and ``/redoc`` in a real headless chromium: pinned files, each checked by its SRI hash.

The pages name jsDelivr URLs; this machine cannot reach jsDelivr, so the browser is handed the same files
from the npm registry's tarballs (jsDelivr serves npm files unchanged), each tarball checked against the
registry's own sha512 first. The pins are right when the pages render from those bytes; a changed byte must
stop the script from running at all.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from cataract_inference import docs_pages
from tests.support.browser import TIMEOUT_MS, StagePrefix, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.browser

REGISTRY = "https://registry.npmjs.org"
STAGE = "/Prod"


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def _release_files(package: str, version: str, paths: set[str]) -> dict[str, bytes]:
    """The files ``paths`` of ``package@version``, out of the registry's tarball after checking its sha512."""
    meta = json.loads(_fetch(f"{REGISTRY}/{package}/{version}"))
    tarball = _fetch(meta["dist"]["tarball"])
    algorithm, digest = meta["dist"]["integrity"].split("-", 1)
    assert algorithm == "sha512" and base64.b64decode(digest) == hashlib.sha512(tarball).digest(), package
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        files = {}
        for path in paths:
            member = archive.extractfile(f"package/{path}")
            assert member is not None, f"{package}@{version} has no {path}"
            files[path] = member.read()
    return files


@pytest.fixture(scope="module")
def cdn_files() -> dict[str, bytes]:
    """Each pinned asset's bytes by its jsDelivr URL, from the npm registry."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for asset in docs_pages.ASSETS:
        wanted.setdefault((asset.package, asset.version), set()).add(asset.path)
    try:
        releases = {key: _release_files(*key, paths) for key, paths in wanted.items()}
    except OSError as exc:
        message = f"the npm registry is unreachable, so the pinned docs assets cannot be checked: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {asset.url: releases[asset.package, asset.version][asset.path] for asset in docs_pages.ASSETS}


def test_each_pin_is_the_hash_of_the_released_file(cdn_files: dict[str, bytes]) -> None:
    for asset in docs_pages.ASSETS:
        digest = base64.b64encode(hashlib.sha384(cdn_files[asset.url]).digest()).decode()
        assert asset.integrity == f"sha384-{digest}", f"{asset.url}: move the pin with this hash"


@pytest.fixture(scope="module", params=["local", "stage"])
def base_url(request: pytest.FixtureRequest, app: Any) -> Iterator[str]:
    """Where the app answers: the root (``serve``) or ``/Prod`` (API Gateway)."""
    if request.param == "local":
        with serving(app) as base:
            yield base
    else:
        with serving(StagePrefix(app, STAGE)) as base:
            yield base + STAGE


class Visit:
    """A fresh page whose CDN requests are answered with ``files``; any other request off loopback is refused."""

    def __init__(self, browser: Browser, files: dict[str, bytes]) -> None:
        self.context = browser.new_context()
        self.files = files
        self.outside: list[str] = []
        self.cdn: list[str] = []
        self.context.route("**/*", self._route)
        self.page: Page = self.context.new_page()
        self.console: list[str] = []
        self.documents: list[str] = []
        self.page.on("console", lambda message: self.console.append(message.text))

    @property
    def refused(self) -> list[str]:
        """What the page's Content-Security-Policy refused, as chromium reports it."""
        return [line for line in self.console if "Content Security Policy" in line]

    def _route(self, route: Route) -> None:
        url = route.request.url
        if url in self.files:
            self.cdn.append(url)
            kind = "text/css" if url.endswith(".css") else "application/javascript"
            # jsDelivr allows any origin; an integrity check on a cross-origin file needs that CORS answer.
            headers = {"content-type": kind, "access-control-allow-origin": "*"}
            route.fulfill(status=200, headers=headers, body=self.files[url])
        elif url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            if url.endswith("/openapi.json"):
                self.documents.append(url)
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


@pytest.fixture
def visit(browser: Browser, cdn_files: dict[str, bytes]) -> Iterator[Visit]:
    visit = Visit(browser, cdn_files)
    try:
        yield visit
    finally:
        visit.context.close()
    assert not visit.outside, f"the docs fetched from elsewhere: {visit.outside}"


def test_swagger_ui_renders_the_api_from_the_pinned_files(visit: Visit, base_url: str) -> None:
    visit.page.goto(f"{base_url}/docs")
    visit.page.locator(".opblock-summary-path", has_text="/predict").wait_for(timeout=TIMEOUT_MS)
    assert visit.page.title() == "Cataract screening"
    assert sorted(set(visit.cdn)) == sorted({docs_pages.SWAGGER_UI_JS.url, docs_pages.SWAGGER_UI_CSS.url})
    assert visit.documents == [f"{base_url}/openapi.json"]  # this stage's document, not the host root's
    # "Try it out" reaches this API (under its stage) through the page's policy.
    health = visit.page.locator(".opblock", has=visit.page.locator(".opblock-summary-path", has_text="/health"))
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    with visit.page.expect_response(f"{base_url}/health") as answer:
        health.get_by_role("button", name="Execute").click()
    assert answer.value.status == 200
    health.locator(".live-responses-table .response-col_status", has_text="200").wait_for(timeout=TIMEOUT_MS)
    assert not visit.refused, visit.refused
    assert visit.page.get_by_text("If this stays").count() == 0  # the stand-in went when the viewer drew


def test_redoc_renders_the_api_from_the_pinned_file(visit: Visit, base_url: str) -> None:
    visit.page.goto(f"{base_url}/redoc")
    visit.page.get_by_text("A screening aid, not a diagnostic device", exact=False).first.wait_for(timeout=TIMEOUT_MS)
    visit.page.get_by_text("/predict", exact=False).first.wait_for(timeout=TIMEOUT_MS)
    assert visit.cdn == [docs_pages.REDOC_JS.url]
    assert visit.documents == [f"{base_url}/openapi.json"]
    assert visit.page.get_by_text("If this stays").count() == 0  # the stand-in went when the viewer drew
    # Its off-site logo is stopped by the page's policy, in the browser; nothing else is refused.
    assert visit.refused and all("cdn.redoc.ly" in line for line in visit.refused), visit.refused


def test_a_changed_file_is_refused_not_run(browser: Browser, cdn_files: dict[str, bytes], base_url: str) -> None:
    tampered = {**cdn_files, docs_pages.SWAGGER_UI_JS.url: cdn_files[docs_pages.SWAGGER_UI_JS.url] + b"\n;"}
    visit = Visit(browser, tampered)
    errors: list[str] = []
    visit.page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        visit.page.goto(f"{base_url}/docs")
        visit.page.wait_for_load_state("load")
        assert visit.page.evaluate("typeof window.SwaggerUIBundle") == "undefined"
        assert visit.page.locator(".opblock").count() == 0
        assert any("integrity" in line for line in visit.console), visit.console
        assert any("SwaggerUIBundle" in error for error in errors), errors
    finally:
        visit.context.close()


@pytest.mark.parametrize(("path", "viewer"), [("/docs", "Swagger UI"), ("/redoc", "ReDoc")])
def test_without_the_cdn_the_page_says_so_and_links_the_document(
    browser: Browser, base_url: str, path: str, viewer: str
) -> None:
    """Offline, or on a network that blocks jsDelivr, the pages were blank."""
    visit = Visit(browser, {})  # every CDN request refused
    try:
        visit.page.goto(f"{base_url}{path}")
        visit.page.wait_for_load_state("load")
        note = visit.page.get_by_text(f"This page needs {viewer} from cdn.jsdelivr.net")
        assert note.is_visible()
        document = f"{STAGE}/openapi.json" if base_url.endswith(STAGE) else "/openapi.json"  # this stage's
        assert visit.page.get_by_role("link", name=document).get_attribute("href") == document
    finally:
        visit.context.close()
