"""Cold start: a new process to the first response, through the runtime-client harness (awslambdaric).

Timed from ``Popen`` of ``python -m awslambdaric <handler>`` to the stub receiving the response to
an event queued before the start: interpreter, imports, model load and warm-up, first request.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.common import REPO
from tests.support.runtime_api import RuntimeApiStub, start_runtime, stop_runtime

OUR_HANDLER = "cataract_inference.handler.lambda_handler"
TORCH_HANDLER = "benchmarks.torch_handler.lambda_handler"


def cold_start_ms(handler: str, env: dict[str, str], event: dict) -> float:
    """Milliseconds from starting the runtime process to its first response."""
    stub = RuntimeApiStub()
    try:
        stub.submit(event)
        started = time.perf_counter()
        process = start_runtime(handler, stub, env, cwd=REPO)
        try:
            outcome = stub.next_outcome(timeout=120)
            elapsed = (time.perf_counter() - started) * 1000.0
        finally:
            err = stop_runtime(process)
        if outcome.kind != "response" or outcome.payload.get("statusCode") != 200:
            raise RuntimeError(f"{handler} did not answer 200: {outcome}\n{err[-2000:]}")
        return elapsed
    finally:
        stub.close()


def compare(model_dir: Path, run: Path | None, photo: bytes, repeats: int) -> dict[str, list[float]]:
    """Cold starts of our handler (tracing off, and on as with Tracing: Active) and a PyTorch handler, interleaved."""
    from cataract_inference import events

    event = events.predict_event(photo)
    quiet = {"MODEL_DIR": str(model_dir), "POWERTOOLS_LOG_LEVEL": "WARNING", "ORT_INTRA_OP_THREADS": "1"}
    # Tracing on: what the deployed function does (LAMBDA_TASK_ROOT set, no disable flag). The X-Ray
    # SDK loads and sends UDP to a daemon that is not there, which costs nothing.
    traced = {**quiet, "POWERTOOLS_TRACE_DISABLED": "false", "LAMBDA_TASK_ROOT": str(REPO)}
    torch_env = {
        "BENCH_TORCH_RUN": str(run) if run else "",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "training")]),
    }
    candidates = {
        "our handler (tracing off)": (OUR_HANDLER, quiet),
        "our handler (tracing on, X-Ray SDK)": (OUR_HANDLER, traced),
        "PyTorch handler": (TORCH_HANDLER, torch_env),
    }
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for name, (handler, env) in candidates.items():  # one untimed start each fills the page cache
        cold_start_ms(handler, env, event)
        del name
    for _ in range(repeats):
        for name, (handler, env) in candidates.items():
            samples[name].append(cold_start_ms(handler, env, event))
    return samples
