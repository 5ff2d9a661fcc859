"""Soak: 2,000 invocations, good and bad mixed, through the real runtime client (awslambdaric).

Zero 5xx and zero invocation errors, one process throughout (warm), and no leak: after warm-up the
runtime's resident memory grows by at most 1.5 MB, at a fitted slope of at most 0.8 KB per invocation.
The real code measures ~0.45 MB and ~0.25 KB/invocation (allocator warm-up: flat after ~2,000 invocations
in a longer run); a leak of 1 KB per invocation, or keeping every request body (~2 KB), fails both bounds.
"""

from __future__ import annotations

import base64
import json
import random
import statistics
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
SAMPLE_EVERY = 100  # RSS samples after warm-up: 19 points to fit a slope to, so one noisy reading cannot decide
MAX_GROWTH_MB = 1.5  # 3x the real code's growth; keeping every body grows ~3.8 MB, 4 KB/invocation ~8 MB
MAX_SLOPE_KB = 0.8  # per invocation; the real code fits ~0.25, keeping every body ~2.1, 1 KB/invocation ~1.4


def slope_kb_per_invocation(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (invocations, MB) samples, in KB per invocation."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return covariance / sum((x - mean_x) ** 2 for x, _ in points) * 1024


def test_the_slope_fit_measures_a_leak() -> None:
    """The memory bound is only as good as its arithmetic: 1 KB per invocation, with noise, reads as ~1."""
    points = [(x, 90.0 + x / 1024 + (0.05 if x % 200 else -0.05)) for x in range(200, 2001, 100)]
    assert slope_kb_per_invocation(points) == pytest.approx(1.0, abs=0.1)
    assert slope_kb_per_invocation([(x, 90.0) for x in range(200, 2001, 100)]) == 0.0


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
    # Anonymous memory only (RSS less file-backed pages): a busy host may drop and re-read the libraries' clean
    # pages (about half the RSS here), moving the total by megabytes that are not the process's doing.
    info = psutil.Process(pid).memory_info()
    return (info.rss - info.shared) / 2**20


def test_soak_2000_mixed_invocations(stub: RuntimeApiStub, tiny_model_dir: Path) -> None:
    process = start_runtime(
        HANDLER,
        stub,
        {"MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"},
    )
    kinds = _mix()
    rng = random.Random(2026)
    statuses: Counter[tuple[str, int]] = Counter()
    rss: list[tuple[int, float]] = []  # (invocations served, MB) every SAMPLE_EVERY after warm-up
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
            if i + 1 >= WARM_UP and (i + 1 - WARM_UP) % SAMPLE_EVERY == 0:
                rss.append((i + 1, _rss_mb(process.pid)))
        assert process.poll() is None, "one warm process served every invocation"
    finally:
        stderr = stop_runtime(process)
    assert sum(statuses.values()) == INVOCATIONS
    assert {name for name, _ in statuses} == {name for name, _, _ in kinds}, "every kind of request was sent"
    # Medians of the first and last three samples: no single reading decides.
    rss_after_warm_up = statistics.median(mb for _, mb in rss[:3])
    rss_end = statistics.median(mb for _, mb in rss[-3:])
    growth = rss_end - rss_after_warm_up
    slope = slope_kb_per_invocation(rss)
    series = [round(mb, 2) for _, mb in rss]
    print(f"soak: {INVOCATIONS} invocations, RSS {series} MB, slope {slope:.2f} KB/inv, {dict(statuses)}")
    assert len(rss) == (INVOCATIONS - WARM_UP) // SAMPLE_EVERY + 1, "samples span warm-up to the last invocation"
    assert growth <= MAX_GROWTH_MB, f"RSS grew {growth:.2f} MB after warm-up: {series}\n{stderr[-2000:]}"
    assert slope <= MAX_SLOPE_KB, f"RSS grows {slope:.2f} KB per invocation after warm-up: {series}\n{stderr[-2000:]}"
