"""Powertools: JSON logs correlated by the API Gateway request id, EMF metrics, no image bytes in logs."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
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


def _emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if '"_aws"' in line]


def _metric_names(blobs: list[dict[str, Any]]) -> set[str]:
    return {m["Name"] for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def test_metrics_are_emf_and_carry_no_result(
    handler: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMF blobs are log lines in the invocation's stream, beside its request id: no label, no probability."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    response = handler.lambda_handler(events.predict_event(encode(draw_eye("normal"))), FakeLambdaContext())
    result = json.loads(response["body"])
    out = capsys.readouterr().out
    # A first invocation in this process also writes Powertools' ColdStart blob: this test may run first.
    blobs = [b for b in _emf(out) if _metric_names([b]) != {"ColdStart"}]
    assert len(blobs) == 1
    assert _metric_names(blobs) == {"PredictLatency"}
    assert set(blobs[0]) == {"_aws", "service", "PredictLatency"}
    (latency,) = blobs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert latency["Unit"] == "Milliseconds"  # alarms and dashboards read it as such
    assert blobs[0]["PredictLatency"] == [pytest.approx(result["timing_ms"]["total"], abs=0.01)]
    assert blobs[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CataractScreeningTest"
    for value in result["probabilities"].values():
        assert json.dumps(value) not in out, "a probability reached the function's log stream"
    assert result["label"] not in {k.lower() for k in blobs[0]} | _metric_names(blobs)


def test_disabled_metrics_are_not_collected(
    handler: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `serve` nothing flushes them, and Powertools would print a full set of 100 even when disabled."""
    from cataract_inference import observability

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    observability.metrics.clear_metrics()
    capsys.readouterr()
    for _ in range(150):
        observability.record_screening(1.0)
        observability.record_client_error("invalid_base64")
    assert observability.metrics.metric_set == {}
    assert '"_aws"' not in capsys.readouterr().out


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

    from cataract_inference.observability import tracer

    annotations: list[tuple[str, Any]] = []
    monkeypatch.setattr(tracer, "put_annotation", lambda key, value: annotations.append((key, value)))
    subsegment = SimpleNamespace(fault=False)
    subsegment.add_fault_flag = lambda: setattr(subsegment, "fault", True)
    # What the X-Ray SDK's recorder is with tracing on: the handler's subsegment, current while the app answers.
    monkeypatch.setattr(tracer.provider, "current_subsegment", lambda: subsegment, raising=False)
    monkeypatch.setattr(handler.classifier, "predict_bytes", broken)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        response = handler.lambda_handler(events.predict_event(encode(draw_eye("normal"))), FakeLambdaContext())
    assert response["statusCode"] == 500
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (error,) = [r for r in records if r["message"] == "unhandled error"]
    assert error["error_type"] == "RuntimeError" and error["latency_ms"] >= 0
    assert any("in broken" in frame for frame in error["stack"]), error["stack"]
    assert secret not in log_stream.getvalue()
    # Mangum logs the exception Starlette re-raises: its line stays, as JSON with the request's keys (the runtime
    # wrote it as plain text), and its traceback (with the message) goes.
    (mangum,) = [r for r in records if r["message"] == "An error occurred running the application."]
    assert mangum["level"] == "ERROR" and mangum["correlation_id"] == error["correlation_id"]
    assert "exception" not in mangum
    assert secret not in caplog.text
    out = capsys.readouterr().out
    assert secret not in out
    assert "ServerError" in _metric_names(_emf(out))
    assert annotations == [("error_type", "RuntimeError")], "the trace shows the answered 500"
    assert subsegment.fault, "and marks it a fault, as X-Ray marks an escaped exception"


def test_refusals_of_every_kind_are_logged_and_counted(
    handler: Any, log_stream: io.StringIO, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    cases = {
        "not_found": events.rest_event("/nope", "GET"),
        "method_not_allowed": events.rest_event("/predict", "PUT"),
        "invalid_request": events.rest_event("/predict", "POST", body='{"image": 5}', content_type="application/json"),
        # Refused by the handler itself, before Mangum: its log line must carry the same keys.
        "invalid_base64": events.rest_event("/predict", "POST", body="abc", is_base64=True, content_type="image/png"),
        "invalid_encoding": events.rest_event("/predict", "POST", body="x", query={"q": "\ud800"}),
    }
    for event in cases.values():
        handler.lambda_handler(event, FakeLambdaContext())
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    refused = {r["code"]: r for r in records if r["message"] == "request refused"}
    assert set(refused) == set(cases)
    assert all(r["request_id"] == r["correlation_id"] and r["model_version"] for r in refused.values())
    assert {f"ClientError_{code}" for code in cases} <= _metric_names(_emf(capsys.readouterr().out))
    # How long each took, as "screened" says; the handler's own refusals come before the app's clock starts.
    before_the_app = {"invalid_base64", "invalid_encoding"}
    assert all(r["latency_ms"] >= 0 for code, r in refused.items() if code not in before_the_app)
    assert not any("latency_ms" in refused[code] for code in before_the_app)


@pytest.mark.parametrize("request_id", [123, ""])
def test_the_handlers_own_400_ignores_a_malformed_request_id(handler: Any, request_id: object) -> None:
    from tests.conftest import FakeLambdaContext

    event = {"requestContext": {"requestId": request_id}}
    answer = handler._refusal(event, FakeLambdaContext(), "invalid_base64", "not base64")
    assert answer["statusCode"] == 400
    body = json.loads(answer["body"])
    # Not the malformed one: the invocation's, as the app falls back to it.
    assert body["error"]["code"] == "invalid_base64" and body["request_id"] == "test-invocation-id"
    assert answer["headers"]["x-request-id"] == "test-invocation-id"


def test_concurrent_requests_keep_their_own_request_id_in_the_logs(handler: Any, log_stream: io.StringIO) -> None:
    """Under `serve` (no Lambda context) the id comes from X-Request-Id, per request, however they interleave."""
    import asyncio

    import httpx

    image = encode(draw_eye("normal"))

    async def send(client: httpx.AsyncClient, rid: str) -> str:
        response = await client.post(
            "/predict", content=image, headers={"content-type": "image/jpeg", "x-request-id": rid}
        )
        assert response.status_code == 200
        return response.headers["x-request-id"]

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=handler.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await asyncio.gather(*(send(client, f"req-{i}") for i in range(6)))

    assert asyncio.run(main()) == [f"req-{i}" for i in range(6)]
    screened = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"screened"' in line]
    assert sorted(r["request_id"] for r in screened) == [f"req-{i}" for i in range(6)]


def test_uvicorn_loses_the_traceback_of_a_500_but_keeps_other_tracebacks() -> None:
    """Under `serve`, uvicorn logs the re-raised exception (whose message could quote the request)."""
    import cataract_inference.observability  # noqa: F401  (installs the filter)

    def record(message: str) -> logging.LogRecord:
        try:
            raise RuntimeError("SECRET pixels")
        except RuntimeError:
            import sys

            return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, sys.exc_info())

    asgi, startup = record("Exception in ASGI application\n"), record("Traceback during startup")
    for r in (asgi, startup):
        for f in logging.getLogger("uvicorn.error").filters:
            assert isinstance(f, logging.Filter)
            f.filter(r)
    assert asgi.exc_info is None and "SECRET" not in logging.Formatter().format(asgi)
    assert startup.exc_info is not None


def test_cold_start_is_counted_on_the_first_invocation_even_when_it_raises(
    handler: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Powertools' own capture counted it only on return: a console test event first moved it to a warm call."""
    from cataract_inference import observability

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setattr(observability, "_cold", {"pending": True})  # as in a new execution environment
    capsys.readouterr()
    with pytest.raises(TypeError, match="expects an API Gateway proxy event"):
        handler.lambda_handler({"key1": "value1"}, FakeLambdaContext())
    first = _emf(capsys.readouterr().out)
    cold = [b for b in first if _metric_names([b]) == {"ColdStart"}]
    assert len(cold) == 1 and cold[0]["ColdStart"] == [1.0]
    assert set(cold[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == {"function_name", "service"}
    response = handler.lambda_handler(events.rest_event("/health", "GET"), FakeLambdaContext())
    assert response["statusCode"] == 200
    assert "ColdStart" not in _metric_names(_emf(capsys.readouterr().out))


def test_a_provisioned_concurrency_instance_is_not_a_cold_start(
    handler: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started before any request waited for it: Powertools says cold_start false for it, and so does the metric."""
    from cataract_inference import observability

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")
    monkeypatch.setattr(observability, "_cold", {"pending": True})
    capsys.readouterr()
    response = handler.lambda_handler(events.rest_event("/health", "GET"), FakeLambdaContext())
    assert response["statusCode"] == 200
    assert "ColdStart" not in _metric_names(_emf(capsys.readouterr().out))
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    monkeypatch.setattr(observability, "_cold", {"pending": True})
    handler.lambda_handler(events.rest_event("/health", "GET"), FakeLambdaContext())
    assert "ColdStart" in _metric_names(_emf(capsys.readouterr().out))
