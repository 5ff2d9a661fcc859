"""Throughput of `cataract-screen serve` under 4 concurrent clients from a second process, on loopback.

`python -m benchmarks.throughput PORT REQUESTS SECONDS` is the client process: 4 threads, each
with a keep-alive connection, posting the small photo until REQUESTS are done or SECONDS pass.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import QUIET_ENV, REPO
from tests.support.serve import running_serve

CLIENTS = 4


def client_main(port: int, total: int, seconds: float) -> None:
    """Run the 4 clients; print one JSON line with counts, errors and latencies."""
    from benchmarks.common import small_photo

    body = json.dumps({"image": base64.b64encode(small_photo()).decode()})
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [total]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if remaining[0] <= 0 or time.monotonic() > deadline:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and b'"label"' in data
            except OSError as exc:
                ok, data = False, repr(exc).encode()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if not ok:
                    errors.append(data[:200].decode(errors="replace"))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": len(errors),
                "wall_s": wall,
                "latencies_ms": latencies,
                "first_errors": errors[:3],
            }
        )
    )


def measure(model_dir: Path, total: int = 400, seconds: float = 60.0) -> dict:
    """Start `serve` on the model, run the client process against it, stop the server."""
    env = {**os.environ, **QUIET_ENV, "MODEL_DIR": str(model_dir), "ORT_INTRA_OP_THREADS": "1"}
    env.pop("MODEL_S3_URI", None)
    with running_serve(env) as port:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.throughput", str(port), str(total), str(seconds)],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    client_main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
