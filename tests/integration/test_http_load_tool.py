"""The load clients (benchmarks/http_load.py) against the real `serve`, and against a stand-in for API Gateway
that throttles, fails and checks the API key, so every kind of answer is counted as what it is."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from benchmarks import http_load
from tests.support.images import encoded
from tests.support.serve import free_port, running_serve

API_KEY = "k3y-for-the-usage-plan"
REPO = Path(__file__).resolve().parents[2]


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
    """Answers POST /v1/predict in turn: 200 result, 429, 200 result, 500, 200 without a result; 403 without key.

    With ``hold_after`` set, every request from that index on waits for ``release`` before it is answered.
    """

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
    hold_after: ClassVar[int | None] = None
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.path, self.headers.get("x-api-key"), body))
            index = type(self).count
            type(self).count += 1
        if self.hold_after is not None and index >= self.hold_after:
            self.release.wait()
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
    _FakeGateway.hold_after = None
    _FakeGateway.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    _FakeGateway.release.set()
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


def test_round_trips_of_screened_throttled_and_failed_answers_are_separate_rows(gateway: int) -> None:
    result = http_load.run_load(f"http://127.0.0.1:{gateway}/v1/", b"photo bytes", clients=1, total=10, api_key=API_KEY)
    table = http_load.report(result, 1)

    assert "| client round trip |" not in table  # no row mixing them any more
    assert "| client round trip, screened (200) | 4 |" in table
    assert "| client round trip, throttled (429) | 2 |" in table
    assert "| client round trip, errors | 4 |" in table
    assert (len(result.screened_latencies_ms), len(result.throttled_latencies_ms)) == (4, 2)
    assert len(result.error_latencies_ms) == 4 and len(result.latencies_ms) == 10


def test_the_screened_percentiles_ignore_fast_429s() -> None:
    result = http_load.LoadResult(wall_s=1.0)
    timing = {"decode": 1.0, "inference": 90.0, "postprocess": 1.0, "total": 92.0}
    for ms in (100.0, 110.0, 120.0):
        result.record("200", ms, timing, b"")
    for ms in (1.0, 2.0, 3.0, 4.0):
        result.record("429", ms, None, b"")
    table = http_load.report(result, 2)

    # Mixed, the p50 would be 4 ms: no request took that long and was screened.
    # (Under 20 answers a p95 is only the largest: n/a.)
    assert "| client round trip, screened (200) | 3 | 110.00 | n/a | 100.00–120.00 |" in table
    assert "| client round trip, throttled (429) | 4 | 2.50 | n/a | 1.00–4.00 |" in table
    assert "errors |" not in table
    assert http_load.LoadResult().as_json()["latencies_ms_by_kind"] == {}
    assert result.as_json()["latencies_ms_by_kind"] == {"200": [100.0, 110.0, 120.0], "429": [1.0, 2.0, 3.0, 4.0]}


@pytest.mark.parametrize(
    "flags",
    [
        ["--seconds", "0"],
        ["--seconds", "-5"],
        ["--seconds", "nan"],
        ["--clients", "0"],
        ["--clients", "-1"],
        ["--requests", "0"],
    ],
)
def test_non_positive_counts_are_refused_before_any_request(
    flags: list[str], gateway: int, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        http_load.main([f"http://127.0.0.1:{gateway}/v1/", "--api-key", API_KEY, *flags])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flags[0]}: must be above 0" in err
    assert _FakeGateway.seen == []


def test_run_load_refuses_non_positive_counts_too() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        http_load.run_load("http://127.0.0.1:1/", b"x", total=1, seconds=0)


def test_a_run_where_nothing_was_screened_exits_1_with_the_reason(
    gateway: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(_FakeGateway, "answers", ((429, {"message": "Too Many Requests"}),))
    code = http_load.main(
        [f"http://127.0.0.1:{gateway}/v1/", "--api-key", API_KEY, "--clients", "2", "--requests", "6"]
    )

    assert code == 1
    out, err = capsys.readouterr()
    assert "0 screened, 6 throttled (429), 0 errors" in out
    assert err == "http_load: no request was screened (6 sent: 6 throttled (429), 0 errors)\n"


def test_the_api_key_can_come_from_the_environment_and_is_never_printed(
    gateway: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CATARACT_API_KEY", API_KEY)
    code = http_load.main([f"http://127.0.0.1:{gateway}/v1/", "--clients", "1", "--requests", "5"])

    assert code == 1  # the stand-in's 500 and its 200 without a result, not a 403
    assert [key for _, key, _ in _FakeGateway.seen] == [API_KEY] * 5
    with pytest.raises(SystemExit):
        http_load.main(["--help"])
    out, err = capsys.readouterr()
    assert "CATARACT_API_KEY" in out and API_KEY not in out + err


def test_ctrl_c_stops_the_clients_and_prints_the_partial_table(gateway: int) -> None:
    # The stand-in answers four requests, then holds every later one: both clients are mid-request at the SIGINT.
    _FakeGateway.hold_after = 4
    url = f"http://127.0.0.1:{gateway}/v1/"
    # Python turns SIGINT into KeyboardInterrupt only if SIGINT was not ignored at its start (a background job's is),
    # so the child sets that up itself; the rest is `python -m benchmarks.http_load`.
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from benchmarks.http_load import main; sys.exit(main())"
    )
    command = [sys.executable, "-c", script, url, "--api-key", API_KEY, "--clients", "2", "--requests", "100"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
        while len(_FakeGateway.seen) < 6:
            if process.poll() is not None:
                pytest.fail(f"exited {process.returncode} before the SIGINT: {process.communicate()}")
            assert time.monotonic() < deadline, f"only {len(_FakeGateway.seen)} requests within 60 s"
            time.sleep(0.05)
        sent_before = len(_FakeGateway.seen)
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _FakeGateway.release.set()  # let the clients go on, to count what they send after the SIGINT
            time.sleep(1)
            pytest.fail(f"still running 30 s after SIGINT; {len(_FakeGateway.seen) - sent_before} requests since")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 130, err
    assert len(_FakeGateway.seen) == sent_before == 6  # nothing sent after the SIGINT
    assert "Interrupted (Ctrl-C)" in out and "partial results" in out
    # The two held requests were never answered, so only the first four count.
    assert "4 requests from 2 clients" in out and "2 screened, 1 throttled (429), 1 errors" in out
    assert "| client round trip, screened (200) | 2 |" in out
