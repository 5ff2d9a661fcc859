"""Shared fixtures: tiny models, a fake Lambda context, and the real handler loaded on a chosen model."""

from __future__ import annotations

import base64
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cataract_inference.cli import LocalContext
from tests.support.onnx_models import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL_DIR = REPO / "functions" / "inference" / "model"
SHARED_DATA = REPO.parent / "shared" / "data" / "cataract-eyes" / "train"

# Quiet, deterministic Powertools for tests; individual tests capture logs through the handler.
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "CataractScreeningTest")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

# Logger, metrics and tracer are built once, at first import, on whatever stdout and environment then are: here,
# the session's, not those of the first test to import them (a capsys stream closed after it, a runner's quiet
# settings), which failed later modules' log and metrics tests whenever that module ran first.
importlib.import_module("cataract_inference.observability")


@dataclass
class FakeLambdaContext(LocalContext):
    """The local runner's Lambda context, with a fixed invocation id for tests."""

    function_name: str = "cataract-screening-test"
    aws_request_id: str = "test-invocation-id"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with the full output interface (logits, embedding, ood_distance, cam)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def load_handler(model_dir: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """(Re)import the handler module with MODEL_DIR and ``env`` set, as a cold start would."""
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    monkeypatch.delenv("MODEL_S3_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from cataract_inference import settings

    settings.get_settings.cache_clear()
    sys.modules.pop("cataract_inference.handler", None)
    module = importlib.import_module("cataract_inference.handler")
    settings.get_settings.cache_clear()
    return module


@pytest.fixture
def handler(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real handler module, loaded on the tiny model."""
    return load_handler(tiny_model_dir, monkeypatch)


@pytest.fixture
def invoke(handler: Any) -> Callable[[dict[str, Any]], tuple[int, dict[str, str], Any]]:
    """Call the handler with an event; return status, headers and the decoded JSON body."""

    def _invoke(event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        response = handler.lambda_handler(event, FakeLambdaContext())
        body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        parsed = json.loads(body) if headers.get("content-type", "").startswith("application/json") else body
        return response["statusCode"], headers, parsed

    return _invoke


def require_shared_data() -> Path:
    """The training photos in ../shared: a skip with the reason in a user's clone, a failure in CI (which has them)."""
    if not (SHARED_DATA / "cataract").is_dir():
        message = f"../shared training photos not found at {SHARED_DATA} (present in CI, absent in a user's clone)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def shared_photos() -> Iterator[Path]:
    """The training photos in ../shared (see ``require_shared_data``)."""
    yield require_shared_data()


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The model committed in functions/inference/model (the training issue ships it)."""
    if not (BUNDLED_MODEL_DIR / "model.onnx").is_file():
        pytest.fail(f"the bundled model is missing from {BUNDLED_MODEL_DIR}; it is committed with the project")
    return BUNDLED_MODEL_DIR
