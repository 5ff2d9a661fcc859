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
    # The result stays out of the log: joined to the access log by request id it would name a client's diagnosis.
    assert not {"label", "p_positive", "probabilities", "gradable"} & set(screened[0]), screened[0]
    assert screened[0]["timing_ms"]["total"] > 0 and screened[0]["image_bytes"] == len(image)
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


def test_our_own_fault_logs_where_not_what_and_counts_a_server_error(
    handler: Any,
    log_stream: io.StringIO,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "SECRET-" + base64.b64encode(b"pixels of an eye").decode()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"failed on {secret}")  # an exception that quotes request data

    monkeypatch.setattr(handler.classifier, "predict_bytes", broken)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        response = handler.lambda_handler(events.predict_event(encode(draw_eye("normal"))), FakeLambdaContext())
    assert response["statusCode"] == 500
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (error,) = [r for r in records if r["message"] == "unhandled error"]
    assert error["error_type"] == "RuntimeError"
    assert any("in broken" in frame for frame in error["stack"]), error["stack"]
    assert secret not in log_stream.getvalue()
    # Mangum logs the exception Starlette re-raises: its line stays, its traceback (with the message) goes.
    assert any(r.name == "mangum.http" for r in caplog.records)
    assert secret not in caplog.text
    out = capsys.readouterr().out
    assert secret not in out
    blobs = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    names = {m["Name"] for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert "ServerError" in names
