"""Performance fixes keep their behaviour: lean cold start, one-pass base64, exact normalising, no thread hop."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cataract_inference import events
from cataract_inference.api import ClientError, decode_base64_image
from cataract_inference.drawing import draw_eye, encode
from cataract_inference.imaging import normalise
from cataract_inference.manifest import InputSpec
from cataract_inference.schemas import ErrorResponse as ErrorResponseModel
from tests.conftest import FakeLambdaContext

_PROBE = """
import json, sys
import cataract_inference.handler
from cataract_inference.observability import tracer
print(json.dumps({"xray": "aws_xray_sdk.core" in sys.modules, "botocore": "botocore.client" in sys.modules,
                  "provider": type(tracer.provider).__module__, "disabled": bool(tracer.disabled)}))
"""


def _run_probe(script: str, tiny_model_dir: Path, *args: str, **env: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter (a cold start) on the tiny model; its last line, as JSON."""
    base = {
        "PATH": "/usr/bin:/bin",
        "MODEL_DIR": str(tiny_model_dir),
        "POWERTOOLS_METRICS_NAMESPACE": "T",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe(tiny_model_dir: Path, **env: str) -> dict[str, Any]:
    return _run_probe(_PROBE, tiny_model_dir, **env)


def test_tracing_off_loads_no_xray_sdk_and_no_botocore(tiny_model_dir: Path) -> None:
    seen = _probe(tiny_model_dir, POWERTOOLS_TRACE_DISABLED="true", LAMBDA_TASK_ROOT="/var/task")
    assert seen == {"xray": False, "botocore": False, "provider": "cataract_inference.observability", "disabled": True}
    assert _probe(tiny_model_dir)["xray"] is False, "outside Lambda, tracing is off and costs nothing"


def test_tracing_on_in_lambda_still_uses_the_xray_recorder(tiny_model_dir: Path) -> None:
    seen = _probe(tiny_model_dir, LAMBDA_TASK_ROOT="/var/task")
    assert seen["xray"] is True and seen["provider"].startswith("aws_xray_sdk") and seen["disabled"] is False
    # No auto-patching: no request calls botocore, and patching it cost ~120 ms of cold start.
    assert seen["botocore"] is False


RAW = bytes(range(256)) * 7


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(RAW).decode(),
        base64.b64encode(RAW).decode().rstrip("="),
        "\n".join(base64.b64encode(RAW).decode()[i : i + 76] for i in range(0, 2000, 76)) + "\n",
        base64.urlsafe_b64encode(RAW).decode(),
        "data:image/png;base64," + base64.b64encode(RAW).decode(),
        "\u2003" + base64.b64encode(RAW).decode() + "\u3000",
        base64.b64encode(RAW).decode()[:40] + "\u2028" + base64.b64encode(RAW).decode()[40:],
    ],
)
def test_base64_variants_decode_to_the_same_bytes(text: str) -> None:
    if text.startswith("\n") or "\n" in text[:-1]:
        # the wrapped sample covers only the first 2000 characters
        assert decode_base64_image(text) == base64.b64decode("".join(text.split()))
    else:
        assert decode_base64_image(text) == RAW


@pytest.mark.parametrize("text", ["abc$", "ab=c", "é" * 8, "====", "a"])
def test_invalid_base64_is_still_a_400(text: str) -> None:
    with pytest.raises(ClientError) as caught:
        decode_base64_image(text)
    assert caught.value.status == 400


def test_normalise_is_exactly_the_reference_formula() -> None:
    spec = InputSpec(size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = normalise(Image.fromarray(rgb, "RGB"), spec)
    scale = np.asarray([1.0 / (255.0 * s) for s in spec.std], dtype=np.float32)
    bias = np.asarray([-m / s for m, s in zip(spec.mean, spec.std, strict=True)], dtype=np.float32)
    want = (rgb.astype(np.float32) * scale + bias).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, 64, 64)
    np.testing.assert_array_equal(got, want)


def test_lambda_invocations_predict_on_the_calling_thread(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    original = handler.classifier.predict_bytes

    def spy(data: bytes, *, explain: bool = False) -> Any:
        threads.append(threading.current_thread())
        return original(data, explain=explain)

    monkeypatch.setattr(handler.classifier, "predict_bytes", spy)
    response = handler.lambda_handler(events.predict_event(encode(draw_eye("normal"))), FakeLambdaContext())
    assert response["statusCode"] == 200
    assert threads == [threading.current_thread()], "no worker thread per invocation under Mangum"


_V1_PROBE = """
import json, sys
import cataract_inference.handler as h
from cataract_inference import events
from tests.conftest import FakeLambdaContext
for path in ("/health", "/model", "/openapi.json"):
    assert h.lambda_handler(events.rest_event(path), FakeLambdaContext())["statusCode"] == 200
print(json.dumps({"v1": "pydantic.v1" in sys.modules}))
"""


def test_cold_start_never_imports_pydantic_v1(tiny_model_dir: Path) -> None:
    assert _run_probe(_V1_PROBE, tiny_model_dir) == {"v1": False}


_OPENAPI_PROBE = """
import json, sys
if sys.argv[1] == "plain":
    import fastapi  # imported before the app: the ordinary, eager build
import cataract_inference.handler as h
from cataract_inference import events, lean_fastapi, schemas
from fastapi.openapi import models
from pydantic._internal._config import config_defaults
from tests.conftest import FakeLambdaContext
before = models.OpenAPI.__pydantic_complete__
response = h.lambda_handler(events.rest_event("/openapi.json"), FakeLambdaContext())
print(json.dumps({
    "deferred": lean_fastapi.DEFERRED, "built_before": before, "built_after": models.OpenAPI.__pydantic_complete__,
    "ours_built": schemas.PredictResponse.__pydantic_complete__,
    "default_restored": config_defaults["defer_build"] is False,
    "status": response["statusCode"], "document": json.loads(response["body"]),
}))
"""


def test_openapi_models_build_on_first_use_and_the_document_is_unchanged(tiny_model_dir: Path) -> None:
    """FastAPI's OpenAPI models are built when /openapi.json is first asked for, not at cold start."""
    lean = _run_probe(_OPENAPI_PROBE, tiny_model_dir, "lean")
    assert lean["deferred"] and not lean["built_before"] and lean["built_after"]
    assert lean["ours_built"] and lean["default_restored"], "only FastAPI's own models are deferred"
    plain = _run_probe(_OPENAPI_PROBE, tiny_model_dir, "plain")
    assert not plain["deferred"] and plain["built_before"]
    assert lean["status"] == plain["status"] == 200
    assert "/predict" in lean["document"]["paths"]
    assert lean["document"] == plain["document"]


def test_fastapi_still_recognises_pydantic_v1_models_once_loaded() -> None:
    import warnings

    from fastapi._compat import shared

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydantic import v1

    class Old(v1.BaseModel):
        x: int = 0

    assert shared.is_pydantic_v1_model_class(Old) and shared.is_pydantic_v1_model_instance(Old())
    assert not shared.is_pydantic_v1_model_class(ErrorResponseModel)


def test_pybase64_fast_path_matches_the_standard_library() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 3, 4, 5, 1000, 65_537):
        raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        text = base64.b64encode(raw).decode()
        if raw:
            assert decode_base64_image(text) == raw
    assert decode_base64_image("QQ==") == b"A" and decode_base64_image("AB\n==") == b"\x00"
    for bad in ("AB=A", "A===", "====", "abc$", "QQ=\u00e9"):
        with pytest.raises(ClientError):
            decode_base64_image(bad)
