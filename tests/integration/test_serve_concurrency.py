"""`cataract-screen serve` under concurrent load returns exactly one correct response for each request.

Each request carries its own image (a distinct grey level, so the tiny model's probabilities differ
from image to image and the label is known: bright -> cataract, dark -> normal) and its own
X-Request-Id. A response that went to the wrong request, was lost or was duplicated fails the test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from cataract_inference.classifier import load_classifier
from tests.support.images import encoded

CLIENTS = 8
PER_CLIENT = 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tiny_model_dir: Path) -> Iterator[int]:
    """`cataract-screen serve` in a subprocess on a free loopback port; yields the port."""
    port = _free_port()
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "POWERTOOLS_TRACE_DISABLED": "true"}
    env.pop("MODEL_S3_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cataract_inference.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else "serve exited"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not answer /health within 60 s"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _image(level: int) -> bytes:
    return encoded(Image.new("RGB", (40, 40), (level, level, level)), "PNG")


def test_each_concurrent_request_gets_exactly_its_own_answer(server: int, tiny_model_dir: Path) -> None:
    levels = list(range(66, 166))  # 100 grey levels around the tiny model's boundary: distinct answers, both labels
    images = {level: _image(level) for level in levels}
    clf = load_classifier(tiny_model_dir)
    expected = {level: clf.predict_bytes(data) for level, data in images.items()}
    assert {p.label for p in expected.values()} == {"cataract", "normal"}
    assert len({p.probabilities["cataract"] for p in expected.values()}) == len(levels), "answers are distinct"

    results: dict[str, tuple[int, int, str, dict]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
        barrier.wait()  # all clients start together
        for j in range(PER_CLIENT):
            level = levels[(index * PER_CLIENT + j) % len(levels)]
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
