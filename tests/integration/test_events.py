"""Every committed sample event replays through the real handler, on the bundled model."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, FakeLambdaContext, load_handler

EVENTS = sorted((REPO / "events").glob("*.json"))


@pytest.fixture(scope="module")
def bundled_handler(bundled_model_dir: Path) -> Any:
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield load_handler(bundled_model_dir, monkeypatch)
    finally:
        monkeypatch.undo()


def test_there_are_sample_events_for_each_case() -> None:
    names = {p.name for p in EVENTS}
    assert {
        "rest-predict-cataract.json",
        "rest-predict-normal.json",
        "rest-predict-invalid.json",
        "rest-health.json",
        "http-predict-cataract.json",
    } <= names


@pytest.mark.parametrize("path", EVENTS, ids=[p.name for p in EVENTS])
def test_event_replays(bundled_handler: Any, path: Path) -> None:
    event = json.loads(path.read_text())
    method = event.get("httpMethod") or event["requestContext"]["http"]["method"]
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    if method == "POST":
        assert headers.get("content-type"), "sam local events carry no Content-Type unless we set one"
    response = bundled_handler.lambda_handler(event, FakeLambdaContext())
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    payload = json.loads(body)
    if "invalid" in path.name:
        assert response["statusCode"] == 400
        assert payload["error"]["code"] == "invalid_base64"
        assert "diagnosis" in payload["disclaimer"].lower()
        return
    assert response["statusCode"] == 200, payload
    if "predict" in path.name:
        assert payload["label"] in ("cataract", "normal", "ungradable")
        assert abs(sum(payload["probabilities"].values()) - 1.0) < 1e-5
        assert "diagnosis" in payload["disclaimer"].lower()
        assert ("heatmap_png" in payload) == ("explain" in path.name)
