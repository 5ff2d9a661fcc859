"""The real Lambda runtime client (awslambdaric) runs the Dockerfile's CMD against a local Runtime API.

Cold invoke, warm invoke, the error envelope, init errors, and the S3 model path against moto's
server: the handler is driven exactly as the image's entrypoint drives it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode
from tests.conftest import REPO
from tests.support import s3 as s3_support
from tests.support.runtime_api import RuntimeApiStub, start_runtime, stop_runtime
from tests.support.s3 import FAKE_CREDENTIALS


def dockerfile_handler() -> str:
    """The handler string from the Dockerfile's CMD: the tests drive what the image runs."""
    text = (REPO / "functions" / "inference" / "Dockerfile").read_text()
    match = re.search(r'^CMD\s+\[\s*"([^"]+)"\s*\]', text, re.MULTILINE)
    assert match, 'the Dockerfile must end with CMD ["<module>.<function>"]'
    return match.group(1)


HANDLER = dockerfile_handler()


@pytest.fixture
def stub() -> Iterator[RuntimeApiStub]:
    server = RuntimeApiStub()
    yield server
    server.close()


def _body(outcome: Any) -> tuple[int, dict[str, Any]]:
    assert outcome.kind == "response", outcome
    return outcome.payload["statusCode"], json.loads(outcome.payload["body"])


def test_cold_and_warm_invokes(stub: RuntimeApiStub, tiny_model_dir: Path) -> None:
    process = start_runtime(HANDLER, stub, {"MODEL_DIR": str(tiny_model_dir)})
    try:
        status, cold = _body(stub.invoke(events.predict_event(encode(draw_eye("cataract")))))
        assert status == 200 and cold["label"] in ("cataract", "normal", "ungradable")
        status, warm = _body(stub.invoke(events.predict_event(encode(draw_eye("normal")))))
        assert status == 200
        assert warm["model"] == cold["model"]
        status, health = _body(stub.invoke(events.rest_event("/health")))
        assert status == 200 and health["status"] == "ok"
        status, error = _body(
            stub.invoke(events.rest_event("/predict", "POST", body="{", content_type="application/json"))
        )
        assert status == 400 and error["error"]["code"] == "malformed_json"
        assert process.poll() is None, "one process served every invocation (warm)"
    finally:
        stop_runtime(process)


def test_error_envelope_for_a_non_http_event(stub: RuntimeApiStub, tiny_model_dir: Path) -> None:
    process = start_runtime(HANDLER, stub, {"MODEL_DIR": str(tiny_model_dir)})
    try:
        outcome = stub.invoke({"not": "an api gateway event"})
        assert outcome.kind == "error"
        assert outcome.payload["errorType"] == "TypeError"
        assert "API Gateway" in outcome.payload["errorMessage"]
        status, _ = _body(stub.invoke(events.rest_event("/health")))
        assert status == 200, "the runtime keeps serving after a failed invocation"
    finally:
        stop_runtime(process)


def expect_init_error(
    stub: RuntimeApiStub, env: dict[str, str], error_type: str, phrase: str, timeout: float = 60
) -> None:
    """Init fails with ``error_type`` and ``phrase``; the runtime exits and never answers the queued request."""
    process = start_runtime(HANDLER, stub, env)
    try:
        stub.submit(events.rest_event("/health"))
        outcome = stub.next_outcome(timeout=timeout)
        assert outcome.kind == "init_error", outcome
        assert outcome.payload["errorType"] == error_type, outcome.payload
        assert phrase in outcome.payload["errorMessage"], outcome.payload["errorMessage"]
        assert process.wait(timeout=30) != 0, "the runtime exits after an init error"
        assert stub.pending() == 1, "the runtime fetched the queued request after its init error"
        with pytest.raises(TimeoutError):
            stub.next_outcome(timeout=0.1)  # nor answered anything
    finally:
        stop_runtime(process)


def test_init_error_when_the_model_is_missing(stub: RuntimeApiStub, tmp_path: Path) -> None:
    expect_init_error(stub, {"MODEL_DIR": str(tmp_path / "no-model")}, "ModelLoadError", "no model at")


def test_init_error_on_a_checksum_mismatch(stub: RuntimeApiStub, tiny_model_dir: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "MODEL_SHA256": "0" * 64}
    expect_init_error(stub, env, "ModelLoadError", "checksum mismatch")


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with s3_support.moto_server() as endpoint:
        yield endpoint


def test_model_from_s3_through_the_runtime(
    stub: RuntimeApiStub, tiny_model_dir: Path, tmp_path: Path, moto_server: str
) -> None:
    s3 = s3_support.client_for(moto_server)
    s3.create_bucket(Bucket="models")
    digest = s3_support.publish_model_folder(s3, "models", "cataract/v7/", tiny_model_dir)
    env = {
        "MODEL_DIR": str(tmp_path / "no-baked-model"),
        "MODEL_S3_URI": "s3://models/cataract/v7/",
        "MODEL_SHA256": digest,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ENDPOINT_URL": moto_server,
    }
    process = start_runtime(HANDLER, stub, env)
    try:
        status, health = _body(stub.invoke(events.rest_event("/health")))
        assert status == 200 and health["model"]["sha256"] == digest
        assert (tmp_path / "cache" / "model.onnx").is_file()
    finally:
        stop_runtime(process)


def test_s3_down_at_init_fails_loudly(stub: RuntimeApiStub, tmp_path: Path) -> None:
    env = {
        "MODEL_S3_URI": "s3://models/cataract/v7/",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    expect_init_error(stub, env, "ModelLoadError", "cannot reach S3", timeout=90)
