"""The API docs pages, ``/docs`` (Swagger UI) and ``/redoc``: pinned releases, each file checked by the browser.

FastAPI's own pages load the latest 5.x of Swagger UI and 2.x of ReDoc from jsDelivr with no integrity check,
a favicon from fastapi.tiangolo.com, and Google Fonts; whatever those hosts serve runs on this API's origin,
beside the page that holds the API key. Here each file is one release, named with its SRI hash (sha384 of the
file in the npm package, which jsDelivr serves unchanged), so a changed file is refused, not run. Nothing else
is fetched from outside, and the referrer stays home. Moving a pin: ``tests/browser/test_docs_pages.py``
checks every hash against the npm registry's tarball.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Asset:
    """One file of an npm package, served by jsDelivr, with its Subresource Integrity hash."""

    package: str
    version: str
    path: str
    integrity: str

    @property
    def url(self) -> str:
        """Where the browser fetches it."""
        return f"https://cdn.jsdelivr.net/npm/{self.package}@{self.version}/{self.path}"


SWAGGER_UI_JS = Asset(
    "swagger-ui-dist",
    "5.35.0",
    "swagger-ui-bundle.js",
    "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
)
SWAGGER_UI_CSS = Asset(
    "swagger-ui-dist",
    "5.35.0",
    "swagger-ui.css",
    "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
)
REDOC_JS = Asset(
    "redoc",
    "2.5.4",
    "bundles/redoc.standalone.js",
    "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
)
ASSETS = (SWAGGER_UI_JS, SWAGGER_UI_CSS, REDOC_JS)

_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{title}</title>
"""


def _tag(asset: Asset) -> str:
    attributes = f'integrity="{asset.integrity}" crossorigin="anonymous" referrerpolicy="no-referrer"'
    if asset.path.endswith(".css"):
        return f'<link rel="stylesheet" href="{asset.url}" {attributes}>'
    return f'<script src="{asset.url}" {attributes}></script>'


def _script_json(value: str) -> str:
    # JSON is valid JavaScript; escaping "<" keeps "</script>" in a value from closing the element.
    return json.dumps(value).replace("<", "\\u003c")


class DocsPage(NamedTuple):
    """A docs page and the Content-Security-Policy to serve it with."""

    html: str
    csp: str


def _policy(script_src: str, extra: str = "") -> str:
    # Only the pinned files may come from the CDN (their full URLs, not the whole host: any other script there
    # would run too, were markup ever injected); the page may talk to this API only. It also keeps the viewers'
    # own off-site fetches (ReDoc's logo) from leaving the browser.
    return (
        f"default-src 'none'; script-src {script_src}; style-src {SWAGGER_UI_CSS.url} 'unsafe-inline'; "
        f"img-src 'self' data:; connect-src 'self'; {extra}base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _unloaded(viewer: str, openapi_url: str) -> str:
    """What the page shows until the viewer replaces it, and goes on showing when its file never loads (offline,
    a network that blocks the CDN, a file that failed its hash): not a blank page."""
    link = html.escape(openapi_url, quote=True)
    return (
        f'<p style="font-family: sans-serif; margin: 2em;">This page needs {viewer} from cdn.jsdelivr.net. If this '
        f"stays, the browser could not load it (offline, or blocked); the OpenAPI document itself is at "
        f'<a href="{link}">{link}</a>.</p>'
    )


def swagger_ui(openapi_url: str, title: str) -> DocsPage:
    """The ``/docs`` page for the OpenAPI document at ``openapi_url``."""
    script = (
        # FastAPI's settings for its own page, less OAuth: this API has none.
        f"SwaggerUIBundle({{url: {_script_json(openapi_url)}, dom_id: '#swagger-ui', layout: 'BaseLayout', "
        "deepLinking: true, showExtensions: true, showCommonExtensions: true, "
        "presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]});"
    )
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    page = (
        _HEAD.format(title=html.escape(title))
        + _tag(SWAGGER_UI_CSS)
        + f'\n</head>\n<body>\n<div id="swagger-ui">{_unloaded("Swagger UI", openapi_url)}</div>\n'
        + _tag(SWAGGER_UI_JS)
        + f"\n<script>{script}</script>\n</body>\n</html>\n"
    )
    return DocsPage(page, _policy(f"{SWAGGER_UI_JS.url} 'sha256-{script_hash}'"))


def redoc(openapi_url: str, title: str) -> DocsPage:
    """The ``/redoc`` page for the OpenAPI document at ``openapi_url``."""
    page = (
        _HEAD.format(title=html.escape(title))
        + "<style>body { margin: 0; padding: 0; }</style>\n</head>\n<body>\n"
        + "<noscript>ReDoc needs JavaScript.</noscript>\n"
        + f'<redoc spec-url="{html.escape(openapi_url, quote=True)}">{_unloaded("ReDoc", openapi_url)}</redoc>\n'
        + _tag(REDOC_JS)
        + "\n</body>\n</html>\n"
    )
    # ReDoc searches in a web worker it builds from a blob.
    return DocsPage(page, _policy(REDOC_JS.url, "worker-src blob:; "))
