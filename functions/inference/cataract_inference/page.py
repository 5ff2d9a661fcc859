"""The one-page web client served at ``GET /``: no build step, no external CDN."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import lru_cache
from pathlib import Path

_TEMPLATE = Path(__file__).with_name("static") / "index.html"


@lru_cache(maxsize=1)
def _template() -> str:
    return _TEMPLATE.read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii") + "'"
        for body in re.findall(rf"<{tag}>(.*?)</{tag}>", _template(), flags=re.S)
    )


@lru_cache(maxsize=1)
def csp() -> str:
    """The page's Content-Security-Policy: its own inline script and style, this API, and nothing else.

    The preview is a ``blob:`` URL and the heat map a ``data:`` one; no other site may frame the page,
    which holds an API key.
    """
    return (
        f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
        "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def render(root_path: str, disclaimer: str) -> str:
    """The page, with the stage prefix baked into its API URLs so it works under API Gateway."""
    return (
        _template()
        .replace("{{ROOT_PATH}}", html.escape(root_path, quote=True))
        .replace("{{DISCLAIMER}}", html.escape(disclaimer))
    )
