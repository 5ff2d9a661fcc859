"""A local stand-in for the Lambda Runtime API, to drive the real runtime client (awslambdaric).

The image's entrypoint runs ``python -m awslambdaric <handler>``, which polls
``/2018-06-01/runtime/invocation/next`` and posts results back. This server speaks that protocol
on 127.0.0.1, so tests (and the cold-start benchmark) exercise the handler exactly as Lambda does:
cold and warm invokes, the error envelope, and init errors.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"


@dataclass(frozen=True)
class Outcome:
    """What the runtime posted back for one invocation (or for init)."""

    kind: str  # "response", "error" or "init_error"
    payload: Any
    request_id: str | None = None


class RuntimeApiStub:
    """The Runtime API on an ephemeral loopback port."""

    def __init__(self) -> None:
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self.send_error(404)
                    return
                request_id, body = stub._events.get()  # blocks, like the real API, until there is work
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30_000))
                self.send_header(
                    "Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:cataract"
                )
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload: Any = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    payload = raw.decode(errors="replace")
                parts = self.path[len(PREFIX) :].strip("/").split("/")
                if parts == ["init", "error"]:
                    stub._outcomes.put(Outcome("init_error", payload))
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    stub._outcomes.put(Outcome(parts[2], payload, parts[1]))
                else:
                    self.send_error(404)
                    return
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def submit(self, event: Any) -> str:
        """Queue one event; return its request id."""
        request_id = str(uuid.uuid4())
        self._events.put((request_id, json.dumps(event).encode()))
        return request_id

    def pending(self) -> int:
        """Events queued and not yet fetched by the runtime."""
        return self._events.qsize()

    def next_outcome(self, timeout: float = 60.0) -> Outcome:
        """The next thing the runtime posted, or ``TimeoutError``."""
        try:
            return self._outcomes.get(timeout=timeout)
        except queue.Empty as exc:
            raise TimeoutError(f"the runtime posted nothing within {timeout} s") from exc

    def invoke(self, event: Any, timeout: float = 60.0) -> Outcome:
        """Queue an event and wait for its outcome."""
        request_id = self.submit(event)
        outcome = self.next_outcome(timeout)
        if outcome.request_id not in (None, request_id):
            raise AssertionError(f"outcome for {outcome.request_id}, expected {request_id}")
        return outcome

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def start_runtime(
    handler: str, stub: RuntimeApiStub, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m awslambdaric <handler>`` against ``stub``, as the image's entrypoint does."""
    full_env = {
        **os.environ,
        "AWS_LAMBDA_RUNTIME_API": stub.address,
        "AWS_LAMBDA_FUNCTION_NAME": "cataract-screening",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/cataract-screening",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", handler],
        env=full_env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_runtime(process: subprocess.Popen[bytes]) -> str:
    """Stop the runtime process; return what it wrote to stderr."""
    if process.poll() is None:
        process.kill()
    try:
        _, err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return (err or b"").decode(errors="replace")
