"""Cold start: a new process to the first response, through the runtime-client harness (awslambdaric).

Timed from ``Popen`` of ``python -m awslambdaric <handler>`` to the stub receiving the response to
an event queued before the start: interpreter, imports, model load and warm-up, first request.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import REPO, TorchTarget
from tests.support import s3 as s3_support
from tests.support.runtime_api import RuntimeApiStub, start_runtime, stop_runtime

OUR_HANDLER = "cataract_inference.handler.lambda_handler"
TORCH_HANDLER = "benchmarks.torch_handler.lambda_handler"
S3_CANDIDATE = "our handler, model from S3 (moto on loopback)"


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


@contextlib.contextmanager
def model_in_s3(model_dir: Path) -> Iterator[dict[str, str]]:
    """The model folder published to a moto S3 server on loopback; yields the handler's S3 settings."""
    with s3_support.moto_server() as endpoint:
        client = s3_support.client_for(endpoint)
        client.create_bucket(Bucket="models")
        digest = s3_support.publish_model_folder(client, "models", "bench/", model_dir)
        yield {
            **s3_support.FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": endpoint,
            "MODEL_S3_URI": "s3://models/bench/",
            "MODEL_SHA256": digest,
        }


def compare(model_dir: Path, torch: TorchTarget | None, photo: bytes, repeats: int) -> dict[str, list[float]]:
    """Cold starts of our handler (tracing off, on as with Tracing: Active, and loading the model from S3) and a
    PyTorch handler of ``torch``'s network (left out when ``None``), interleaved."""
    from cataract_inference import events

    event = events.predict_event(photo)
    quiet = {"MODEL_DIR": str(model_dir), "POWERTOOLS_LOG_LEVEL": "WARNING", "ORT_INTRA_OP_THREADS": "1"}
    # Tracing on: what the deployed function does (LAMBDA_TASK_ROOT set, no disable flag). The X-Ray
    # SDK loads and sends UDP to a daemon that is not there, which costs nothing.
    traced = {**quiet, "POWERTOOLS_TRACE_DISABLED": "false", "LAMBDA_TASK_ROOT": str(REPO)}
    torch_env = {
        "BENCH_TORCH_RUN": str(torch.run) if torch and torch.run else "",
        "BENCH_TORCH_BACKBONE": (torch and torch.backbone) or "",
        "BENCH_TORCH_SIZE": str(torch.size) if torch else "",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "training")]),
    }
    with model_in_s3(model_dir) as s3_env, tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        # No baked model, and an empty /tmp cache before every start, as in a new Lambda environment.
        from_s3 = {**quiet, **s3_env, "MODEL_DIR": str(Path(scratch) / "no-baked-model"), "MODEL_CACHE_DIR": str(cache)}
        candidates = {
            "our handler (tracing off)": (OUR_HANDLER, quiet),
            "our handler (tracing on, X-Ray SDK)": (OUR_HANDLER, traced),
            S3_CANDIDATE: (OUR_HANDLER, from_s3),
        }
        if torch is not None:
            candidates["PyTorch handler"] = (TORCH_HANDLER, torch_env)
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for round_ in range(repeats + 1):  # the first, untimed round fills the page cache
            for name, (handler, env) in candidates.items():
                shutil.rmtree(cache, ignore_errors=True)
                elapsed = cold_start_ms(handler, env, event)
                if round_:
                    samples[name].append(elapsed)
    return samples
