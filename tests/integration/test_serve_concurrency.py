"""`cataract-screen serve` under concurrent load returns exactly one correct response for each request.

Each request carries its own image (a distinct grey level, so the tiny model's probabilities differ
from image to image and the label is known: bright -> cataract, dark -> normal) and its own
X-Request-Id. A response that went to the wrong request, was lost or was duplicated fails the test.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from cataract_inference.classifier import load_classifier
from tests.support.images import encoded
from tests.support.serve import running_serve

CLIENTS = 8
PER_CLIENT = 25


@pytest.fixture
def server(tiny_model_dir: Path) -> Iterator[int]:
    """`cataract-screen serve` in a subprocess on a free loopback port; yields the port."""
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("MODEL_S3_URI", None)
    with running_serve(env) as port:
        yield port


def _image(level: int) -> bytes:
    return encoded(Image.new("RGB", (40, 40), (level, level, level)), "PNG")


def test_each_concurrent_request_gets_exactly_its_own_answer(server: int, tiny_model_dir: Path) -> None:
    levels = list(range(66, 166))  # 100 grey levels around the tiny model's boundary: distinct answers, both labels
    images = {level: _image(level) for level in levels}
    clf = load_classifier(tiny_model_dir)
    expected = {level: clf.predict_bytes(data) for level, data in images.items()}
    assert {p.label for p in expected.values()} == {"cataract", "normal"}
    assert len({p.probabilities["cataract"] for p in expected.values()}) == len(levels), "answers are distinct"
    # Client i starts i * stride levels along: the 8 images in flight at each step all differ (with a stride of
    # 25, clients i and i + 4 sent the same image side by side, and a mix-up between them went unseen).
    stride = len(levels) // CLIENTS
    schedule = [[levels[(i * stride + j) % len(levels)] for j in range(PER_CLIENT)] for i in range(CLIENTS)]
    senders: dict[int, list[tuple[int, int]]] = {}
    for i, row in enumerate(schedule):
        for j, level in enumerate(row):
            senders.setdefault(level, []).append((i, j))
    for level, uses in senders.items():
        for (i, j), (k, m) in itertools.combinations(uses, 2):
            assert i != k and abs(j - m) >= stride, f"level {level}: client {i} step {j}, client {k} step {m}"

    results: dict[str, tuple[int, int, str, dict]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
        barrier.wait()  # all clients start together
        for j in range(PER_CLIENT):
            level = schedule[index][j]
            rid = f"c{index}-r{j}-l{level}"
            body = json.dumps({"image": base64.b64encode(images[level]).decode()})
            try:
                conn.request(
                    "POST", "/predict", body=body, headers={"Content-Type": "application/json", "X-Request-Id": rid}
                )
                response = conn.getresponse()
                payload = json.loads(response.read())
                with lock:
                    assert rid not in results, f"two responses for {rid}"
                    results[rid] = (level, response.status, response.getheader("X-Request-Id") or "", payload)
            except Exception as exc:  # collected, so one failure does not hide the others
                with lock:
                    errors.append(f"{rid}: {exc!r}")
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]
    assert len(results) == CLIENTS * PER_CLIENT, "exactly one response per request"
    for rid, (level, status, header_id, payload) in results.items():
        assert status == 200, (rid, payload)
        assert header_id == rid and payload["request_id"] == rid, (rid, header_id, payload.get("request_id"))
        want = expected[level]
        assert payload["label"] == want.label, (rid, payload["label"], want.label)
        assert payload["probabilities"] == pytest.approx(want.probabilities, abs=1e-6), (rid, level)


def test_a_serve_that_cannot_start_is_reported_with_its_error(tmp_path: Path) -> None:
    """The helper the tests and the benchmark share fails fast, with serve's own message, when init fails."""
    from tests.support.serve import ServeFailedError

    env = {**os.environ, "MODEL_DIR": str(tmp_path / "no-model-here"), "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("MODEL_S3_URI", None)
    started = time.monotonic()
    with pytest.raises(ServeFailedError, match="no-model-here"), running_serve(env, timeout_s=60):
        pass
    assert time.monotonic() - started < 30, "a dead serve is noticed at once, not at the deadline"


@pytest.mark.parametrize(
    ("host", "status"),
    [("localhost:{port}", 200), ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200), ("LOCALHOST", 200),
     ("127.0.0.2:{port}", 200),
     ("rebound.attacker.example:{port}", 400), ("127.0.0.1.nip.io", 400), ("", 400)],
)  # fmt: skip
def test_serve_on_loopback_answers_only_a_loopback_host(server: int, host: str, status: int) -> None:
    """DNS rebinding: a page whose own hostname resolves to 127.0.0.1 sends that hostname; it is refused, in JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.putrequest("GET", "/model", skip_host=True)
    conn.putheader("Host", host.format(port=server))
    conn.endheaders()
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == status, body
    if status == 400:
        assert body["error"]["code"] == "invalid_host" and response.getheader("content-type") == "application/json"
    else:
        assert body["name"] == "tiny-test-model"


def _verbose_serve(tiny_model_dir: Path, tmp_path: Path, talk: Callable[[int], None]) -> tuple[str, str]:
    """`cataract-screen -v serve` in a fresh process; ``talk(port)`` once it answers; its (stdout, stderr)."""
    import subprocess
    import sys

    from tests.support.serve import free_port

    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("MODEL_S3_URI", None)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "cataract_inference.cli",
        "-v",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    break
                except ConnectionRefusedError:
                    assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
                    time.sleep(0.1)
            talk(port)
        finally:
            process.terminate()
            process.wait(timeout=10)
    return (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


def test_serve_verbose_writes_its_log_lines_to_stderr_not_stdout(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`-v serve` logs each request on stderr, as `predict -v` does: a fresh process, so the logger is built by
    whatever `serve` imports first (an import of the app before the handler bound it to the real stdout)."""

    def predict(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/predict", body=_image(120), headers={"Content-Type": "image/png"})
        assert conn.getresponse().status == 200

    stdout, stderr = _verbose_serve(tiny_model_dir, tmp_path, predict)
    assert '"message":"screened"' in stderr and '"message":"model loaded"' in stderr
    assert '"message"' not in stdout


def test_a_refusal_before_the_app_logs_nothing_of_the_request_before_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Keep-alive: a bad Host refused by the guard, after a request on the same connection, is logged with neither
    that request's id nor its start time (uvicorn runs the next request in a copy of the last one's context)."""

    def pipelined(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"GET /nosuch HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: pipe-one\r\n\r\n"
                b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n"
            )
            answers = b""
            while answers.count(b"HTTP/1.1 ") < 2:
                chunk = sock.recv(65536)
                assert chunk, answers
                answers += chunk

    _, stderr = _verbose_serve(tiny_model_dir, tmp_path, pipelined)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]  # not uvicorn's own lines
    refused = {r["code"]: r for r in lines if r.get("message") == "request refused"}
    assert refused["not_found"]["request_id"] == "pipe-one"
    assert refused["not_found"]["model_version"]  # keys added at init survive the fresh context
    assert "latency_ms" not in refused["invalid_host"] and refused["invalid_host"].get("request_id") != "pipe-one"


def test_every_line_serve_logs_is_json_uvicorns_own_included(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Started, a request that is not HTTP, stopped: uvicorn's lines came out as plain text between our JSON ones."""

    def garbage_then_health(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")  # a TLS hello to a plain-HTTP port, say
            sock.recv(65536)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sock.recv(65536)

    _, stderr = _verbose_serve(tiny_model_dir, tmp_path, garbage_then_health)
    ours = [line for line in stderr.splitlines() if not line.startswith("cataract-screen: ")]
    records = [json.loads(line) for line in ours]  # every one: a plain-text line fails here
    messages = [r["message"] for r in records]
    assert any(m.startswith("Started server process") for m in messages), messages
    assert any("Invalid HTTP request" in m for m in messages), messages
    assert not any("color_message" in r for r in records)  # uvicorn's copy with terminal colour codes
