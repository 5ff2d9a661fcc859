"""Fixtures of the browser tests: one headless chromium per module, and the real app on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.browser import CHROMIUM_ARGS, chromium_or_skip

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def app(tiny_model_dir: Path) -> Any:
    """The real FastAPI app on the tiny model (fast), with the default settings."""
    from cataract_inference.api import create_app
    from cataract_inference.classifier import load_classifier
    from cataract_inference.settings import Settings

    settings = replace(Settings.from_env({}), model_dir=tiny_model_dir)
    return create_app(load_classifier(tiny_model_dir), settings)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
