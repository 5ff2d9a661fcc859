"""Every committed sample event replays through the real handler, on the bundled model, and matches its generator."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, FakeLambdaContext, load_handler

GENERATOR = REPO / "events" / "generate.py"
# What the README's demo promises for each sample: the label, or the error code.
EXPECTED = {
    "rest-predict-cataract.json": "cataract",
    "rest-predict-normal.json": "normal",
    "rest-predict-explain.json": "cataract",
    "rest-predict-raw-jpeg.json": "normal",
    "http-predict-cataract.json": "cataract",
    "rest-predict-invalid.json": "invalid_base64",
    "rest-health.json": "ok",
    "rest-model.json": "cataract-screen",
}
EVENTS = [REPO / "events" / name for name in EXPECTED]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("events_generate", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_events_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    """`make events` must reproduce them byte for byte: a stale event, or one nobody can regenerate, fails."""
    assert set(_generator().samples()) == set(EXPECTED)
    probe = tmp_path / "probe_eye.jpg"
    command = [sys.executable, str(GENERATOR), "--out", str(tmp_path), "--probe", str(probe)]
    subprocess.run(command, check=True, capture_output=True)
    for path in EVENTS:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name}: run `make events`"
    committed = REPO / "functions" / "deploy_check" / "probe_eye.jpg"
    assert probe.read_bytes() == committed.read_bytes(), "the deploy check's probe: run `make events`"


def test_every_json_in_events_is_a_sample() -> None:
    """A user's own event (their photo) does not belong in events/, and would not be a test case."""
    assert sorted(p.name for p in (REPO / "events").glob("*.json")) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def bundled_handler(bundled_model_dir: Path) -> Any:
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield load_handler(bundled_model_dir, monkeypatch)
    finally:
        monkeypatch.undo()


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
    assert "diagnosis" in payload["disclaimer"].lower()
    if "invalid" in path.name:
        assert response["statusCode"] == 400
        assert payload["error"]["code"] == EXPECTED[path.name]
        return
    assert response["statusCode"] == 200, payload
    assert EXPECTED[path.name] in (payload.get("label"), payload.get("status"), payload.get("name"))
    if "predict" in path.name:
        assert abs(sum(payload["probabilities"].values()) - 1.0) < 1e-5
        assert "diagnosis" in payload["disclaimer"].lower()
        assert ("heatmap_png" in payload) == ("explain" in path.name)
