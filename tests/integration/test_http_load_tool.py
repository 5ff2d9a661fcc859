"""The load clients (benchmarks/http_load.py) against the real `serve`, and against a stand-in for API Gateway
that throttles, fails and checks the API key, so every kind of answer is counted as what it is."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from benchmarks import http_load
from tests.support.images import encoded
from tests.support.serve import free_port, running_serve

API_KEY = "k3y-for-the-usage-plan"


def test_every_request_to_serve_is_screened_and_timed(tiny_model_dir: Path) -> None:
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("MODEL_S3_URI", None)
    photo = encoded(Image.new("RGB", (64, 48), (120, 90, 80)), "JPEG")
    with running_serve(env) as port:
        result = http_load.run_load(f"http://127.0.0.1:{port}/", photo, clients=3, total=12)

    assert (result.requests, result.ok, result.throttled, result.errors) == (12, 12, 0, 0)
    assert len(result.latencies_ms) == 12 and min(result.latencies_ms) > 0
    assert all(len(result.server_timing_ms[key]) == 12 for key in http_load.TIMING_KEYS)
    assert "12 screened, 0 throttled (429), 0 errors" in http_load.report(result, 3)


class _FakeGateway(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/predict in turn: 200 result, 429, 200 result, 500, 200 without a result; 403 without key."""

    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway
    answers: ClassVar[tuple[tuple[int, dict], ...]] = (
        (200, {"label": "normal", "timing_ms": {"decode": 1.0, "inference": 7.0, "postprocess": 0.5, "total": 8.5}}),
        (429, {"message": "Too Many Requests"}),
        (200, {"label": "cataract", "timing_ms": {"decode": 2.0, "inference": 7.5, "postprocess": 0.5, "total": 10.0}}),
        (500, {"message": "Internal server error"}),
        (200, {"message": "an HTML error page, say"}),
    )
    count: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()
    seen: ClassVar[list[tuple[str, str | None, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.path, self.headers.get("x-api-key"), body))
            index = type(self).count
            type(self).count += 1
        status, payload = self.answers[index % len(self.answers)]
        if self.headers.get("x-api-key") != API_KEY or self.path != "/v1/predict":
            status, payload = 403, {"message": "Forbidden"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[int]:
    _FakeGateway.count = 0
    _FakeGateway.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_throttling_errors_and_results_are_told_apart(gateway: int) -> None:
    result = http_load.run_load(f"http://127.0.0.1:{gateway}/v1/", b"photo bytes", clients=1, total=10, api_key=API_KEY)

    assert result.requests == 10
    assert result.statuses == {"200": 4, "429": 2, "500": 2, "200 without a screening result": 2}
    assert (result.ok, result.throttled, result.errors) == (4, 2, 4)
    assert sorted(result.server_timing_ms["total"]) == [8.5, 8.5, 10.0, 10.0]
    assert result.first_errors[0].startswith("500: ")
    path, key, body = _FakeGateway.seen[0]
    assert (path, key) == ("/v1/predict", API_KEY)
    assert json.loads(body) == {"image": "cGhvdG8gYnl0ZXM="}


def test_the_cli_exits_1_on_errors_and_prints_the_counts(gateway: int, capsys: pytest.CaptureFixture) -> None:
    code = http_load.main(
        [f"http://127.0.0.1:{gateway}/v1", "--api-key", API_KEY, "--clients", "2", "--requests", "5", "--json"]
    )

    assert code == 1
    printed = json.loads(capsys.readouterr().out)
    # Five requests meet each of the five answers once, whichever client sends which.
    assert (printed["requests"], printed["ok"], printed["throttled"], printed["errors"]) == (5, 2, 1, 2)


def test_a_missing_api_key_is_an_error_not_a_result(gateway: int) -> None:
    result = http_load.run_load(f"http://127.0.0.1:{gateway}/v1/", b"x", clients=1, total=3)
    assert result.statuses == {"403": 3} and result.errors == 3


def test_nothing_listening_is_counted_as_transport_errors_without_hanging() -> None:
    result = http_load.run_load(f"http://127.0.0.1:{free_port()}/", b"x", clients=2, total=4, timeout=5)
    assert result.statuses == {"transport error": 4}
    assert result.errors == 4 and "ConnectionRefusedError" in result.first_errors[0]


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://example.com/", "https://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        http_load.run_load(url, b"x", total=1)
