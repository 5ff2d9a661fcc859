"""Shared by the browser tests: the chromium to drive, and the app served on loopback as API Gateway serves it."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import free_port

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
# No downloads, no background traffic: the page must work with nothing outside 127.0.0.1.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

TIMEOUT_MS = 15_000


def chromium_or_skip() -> str:
    """The chromium binary; a skip with the reason outside CI, a failure in CI, when it or playwright is missing."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"the playwright package is missing in CI: {exc}")
            pytest.skip(f"the playwright package is not installed: {exc}")
        return CHROMIUM
    message = f"Debian chromium not found at {CHROMIUM}; `make setup-browser` installs it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)  # CI installs it; a missing browser there is a broken pipeline, not a skip.
    pytest.skip(message)


class StagePrefix:
    """An ASGI wrapper that serves the app only under ``prefix``, as API Gateway serves a stage.

    Requests outside the prefix get 403, as the gateway answers them; requests inside it reach the app
    with ``root_path`` set, which is what the app's gateway middleware does on Lambda.
    """

    def __init__(self, app: Any, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                await send(
                    {"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": b"Forbidden"})
                return
            scope = {**scope, "root_path": self.prefix}
        await self.app(scope, receive, send)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
