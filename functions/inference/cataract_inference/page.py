"""The one-page web client served at ``GET /``: no build step, no external CDN."""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

_TEMPLATE = Path(__file__).with_name("static") / "index.html"


@lru_cache(maxsize=1)
def _template() -> str:
    return _TEMPLATE.read_text(encoding="utf-8")


def render(root_path: str, disclaimer: str) -> str:
    """The page, with the stage prefix baked into its API URLs so it works under API Gateway."""
    return (
        _template()
        .replace("{{ROOT_PATH}}", html.escape(root_path, quote=True))
        .replace("{{DISCLAIMER}}", html.escape(disclaimer))
    )
