"""`cataract-screen serve` in a subprocess on a free loopback port, for the tests and the benchmarks."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServeFailedError(RuntimeError):
    """`serve` exited or never answered /health; the message carries its stderr."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


@contextmanager
def running_serve(env: dict[str, str], *, timeout_s: float = 60.0) -> Iterator[int]:
    """Start `serve` with ``env``, wait until /health answers 200, yield the port; stop it afterwards."""
    port = free_port()
    # stderr goes to a file, not a pipe: uvicorn logs every request, and a full pipe would stall the server.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "cataract_inference.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _healthy(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    tail = stderr.read().decode(errors="replace")[-2000:]
                    raise ServeFailedError(f"serve did not answer /health within {timeout_s:.0f} s:\n{tail}")
                time.sleep(0.1)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
