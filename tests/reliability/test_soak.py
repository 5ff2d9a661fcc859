"""Soak: 2,000 invocations, good and bad mixed, through the real runtime client (awslambdaric).

Zero 5xx and zero invocation errors, one process throughout (warm), and the runtime's resident
memory grows by at most 10 MB after warm-up.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode
from tests.integration.test_runtime_client import HANDLER
from tests.support.images import png_with_declared_size
from tests.support.runtime_api import RuntimeApiStub, start_runtime, stop_runtime

pytestmark = pytest.mark.slow

INVOCATIONS = 2_000
WARM_UP = 200
MAX_GROWTH_MB = 10.0


def _mix() -> list[tuple[str, Callable[[], dict[str, Any]], int | None]]:
    """(name, event factory, expected status or None for "any 200/4xx") for each kind of request."""
    jpeg = {
        kind: encode(draw_eye(kind, size=(120, 80), seed=i), "JPEG") for i, kind in enumerate(("normal", "cataract"))
    }
    png = encode(draw_eye("cataract", size=(96, 64), seed=5), "PNG")
    truncated = jpeg["cataract"][: len(jpeg["cataract"]) // 2]
    return [
        ("jpeg-normal", lambda: events.predict_event(jpeg["normal"]), 200),
        ("jpeg-cataract", lambda: events.predict_event(jpeg["cataract"], http_api=True), 200),
        ("png-raw", lambda: events.predict_event(png, raw=True, media_type="image/png"), 200),
        ("explain", lambda: events.predict_event(jpeg["normal"], explain=True), 200),
        ("health", lambda: events.rest_event("/health"), 200),
        (
            "malformed-json",
            lambda: events.rest_event("/predict", "POST", body="{", content_type="application/json"),
            400,
        ),
        (
            "bad-base64",
            lambda: events.rest_event("/predict", "POST", body='{"image": "***"}', content_type="application/json"),
            400,
        ),
        ("not-an-image", lambda: events.predict_event(b"hello, not an image" * 10), 415),
        ("truncated-jpeg", lambda: events.predict_event(truncated), None),
        (
            "bomb",
            lambda: events.predict_event(png_with_declared_size(50_000, 50_000), raw=True, media_type="image/png"),
            413,
        ),
        (
            "wrong-types",
            lambda: events.rest_event(
                "/predict", "POST", body='{"image": 5, "explain": []}', content_type="application/json"
            ),
            422,
        ),
        ("unknown-route", lambda: events.rest_event("/nope"), 404),
        (
            "flagged-not-base64",
            lambda: events.rest_event("/predict", "POST", body="é", content_type="image/jpeg", is_base64=True),
            400,
        ),
    ]


@pytest.fixture
def stub() -> Iterator[RuntimeApiStub]:
    server = RuntimeApiStub()
    yield server
    server.close()


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_soak_2000_mixed_invocations(stub: RuntimeApiStub, tiny_model_dir: Path) -> None:
    process = start_runtime(
        HANDLER,
        stub,
        {"MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"},
    )
    kinds = _mix()
    rng = random.Random(2026)
    statuses: Counter[tuple[str, int]] = Counter()
    rss_after_warm_up = 0.0
    try:
        for i in range(INVOCATIONS):
            name, make, expected = kinds[rng.randrange(len(kinds))]
            outcome = stub.invoke(make(), timeout=30)
            assert outcome.kind == "response", (i, name, outcome)
            status = outcome.payload["statusCode"]
            body = outcome.payload["body"]
            if outcome.payload.get("isBase64Encoded"):
                body = base64.b64decode(body).decode()
            json.loads(body)
            assert status < 500, (i, name, body[:300])
            assert expected is None or status == expected, (i, name, status, body[:300])
            statuses[(name, status)] += 1
            if i + 1 == WARM_UP:
                rss_after_warm_up = _rss_mb(process.pid)
        rss_end = _rss_mb(process.pid)
        assert process.poll() is None, "one warm process served every invocation"
    finally:
        stderr = stop_runtime(process)
    assert sum(statuses.values()) == INVOCATIONS
    assert {name for name, _ in statuses} == {name for name, _, _ in kinds}, "every kind of request was sent"
    growth = rss_end - rss_after_warm_up
    print(f"soak: {INVOCATIONS} invocations, RSS {rss_after_warm_up:.1f} -> {rss_end:.1f} MB, {dict(statuses)}")
    assert growth <= MAX_GROWTH_MB, (
        f"RSS grew {growth:.1f} MB after warm-up ({rss_after_warm_up:.1f} -> {rss_end:.1f})\n{stderr[-2000:]}"
    )
