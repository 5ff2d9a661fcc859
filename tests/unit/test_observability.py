"""Powertools: JSON logs correlated by the API Gateway request id, EMF metrics, no image bytes in logs."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode
from tests.conftest import FakeLambdaContext


@pytest.fixture
def log_stream(handler: Any) -> Iterator[io.StringIO]:
    """What the handler logs (Powertools binds stdout at import, so its handler's stream is swapped)."""
    from cataract_inference.observability import logger

    stream = io.StringIO()
    powertools_handler = logger.registered_handler
    assert isinstance(powertools_handler, logging.StreamHandler)
    old = powertools_handler.setStream(stream)
    try:
        yield stream
    finally:
        powertools_handler.setStream(old)


def test_logs_are_json_correlated_and_free_of_image_bytes(handler: Any, log_stream: io.StringIO) -> None:
    image = encode(draw_eye("cataract"))
    event = events.predict_event(image)
    response = handler.lambda_handler(event, FakeLambdaContext())
    assert response["statusCode"] == 200
    handler.lambda_handler(
        events.rest_event("/predict", "POST", body="{", content_type="application/json"), FakeLambdaContext()
    )
    text = log_stream.getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    screened = [r for r in records if r["message"] == "screened"]
    assert len(screened) == 1
    assert screened[0]["correlation_id"] == event["requestContext"]["requestId"]
    assert screened[0]["label"] in ("cataract", "normal", "ungradable")
    assert any(r["message"] == "request refused" and r["code"] == "malformed_json" for r in records)
    encoded_image = base64.b64encode(image).decode()
    assert encoded_image[:200] not in text and '"body"' not in text, "never log image bytes or whole events"


def test_metrics_are_emf(handler: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    handler.lambda_handler(events.predict_event(encode(draw_eye("normal"))), FakeLambdaContext())
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = {m["Name"] for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert "PredictLatency" in names
    assert any(n.startswith("Prediction_") for n in names)
    assert all(blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CataractScreeningTest" for blob in blobs)
