"""Throughput of `cataract-screen serve` under 4 concurrent clients from a second process, on loopback.

The client process is `benchmarks.http_load` (the same clients measure a deployed API), posting the small
photo over keep-alive connections until the requests are done or the time is up.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.common import QUIET_ENV, json_from_child
from tests.support.serve import running_serve

CLIENTS = 4


def measure(model_dir: Path, total: int = 400, seconds: float = 60.0) -> dict:
    """Start `serve` on the model, run the client process against it, stop the server."""
    env = {**os.environ, **QUIET_ENV, "MODEL_DIR": str(model_dir), "ORT_INTRA_OP_THREADS": "1"}
    env.pop("MODEL_S3_URI", None)
    with running_serve(env) as port:
        # The client exits 1 when a request failed: its counts say which.
        return json_from_child(
            "benchmarks.http_load", f"http://127.0.0.1:{port}/", "--clients", str(CLIENTS),
            "--requests", str(total), "--seconds", str(seconds), "--json",
            env=env, ok=(0, 1), timeout=seconds + 60,
        )  # fmt: skip
