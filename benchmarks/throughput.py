"""Throughput of `cataract-screen serve` under 4 concurrent clients from a second process, on loopback.

The client process is `benchmarks.http_load` (the same clients measure a deployed API), posting the small
photo over keep-alive connections until the requests are done or the time is up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import QUIET_ENV, REPO
from tests.support.serve import running_serve

CLIENTS = 4


def measure(model_dir: Path, total: int = 400, seconds: float = 60.0) -> dict:
    """Start `serve` on the model, run the client process against it, stop the server."""
    env = {**os.environ, **QUIET_ENV, "MODEL_DIR": str(model_dir), "ORT_INTRA_OP_THREADS": "1"}
    env.pop("MODEL_S3_URI", None)
    with running_serve(env) as port:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.http_load",
                f"http://127.0.0.1:{port}/",
                "--clients",
                str(CLIENTS),
                "--requests",
                str(total),
                "--seconds",
                str(seconds),
                "--json",
            ],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=False,  # it exits 1 when a request failed; the counts below say which
            timeout=seconds + 60,
        )
        if done.returncode not in (0, 1) or not done.stdout.strip():
            raise RuntimeError(f"the client process failed ({done.returncode}): {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
