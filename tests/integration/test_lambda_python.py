"""The image's stack without Docker: Lambda's CPython 3.12, exactly the image's requirements.txt, and a task root laid
out as the Dockerfile lays out /var/task, answer every sample event exactly as the test environment does.

The suite itself runs on the development Python (3.11 here): this is what keeps the deployed interpreter and pins
honest. The dependencies are installed once per requirements.txt into .lambda-task/ (git-ignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAMBDA_PYTHON = "python3.12"  # public.ecr.aws/lambda/python:3.12, the Dockerfile's base
CONTEXT = REPO / "functions" / "inference"
CACHE = REPO / ".lambda-task"

# Replays each event through the handler, as Lambda would call it, and prints the answers without what changes
# from run to run (timings and the content length they move).
REPLAY = r"""
import json, sys
from pathlib import Path

class Context:
    function_name = "cataract-screening-parity"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:cataract-screening-parity"
    memory_limit_in_mb = 2048
    aws_request_id = "parity-invocation"
    log_group_name = log_stream_name = "parity"
    def get_remaining_time_in_millis(self): return 28000

from cataract_inference import handler
answers = {"python": "%d.%d" % sys.version_info[:2], "events": {}}
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    response = handler.lambda_handler(json.loads(path.read_text()), Context())
    is_json = response["headers"].get("content-type", "").startswith("application/json")
    body = json.loads(response["body"]) if is_json else response["body"]
    if isinstance(body, dict):
        body.pop("timing_ms", None)
    headers = {k: v for k, v in response["headers"].items() if k != "content-length"}
    answers["events"][path.name] = {"status": response["statusCode"], "headers": headers, "body": body}
print(json.dumps(answers, sort_keys=True))
"""


def _runs_312(python: str) -> bool:
    try:
        probe = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "(3, 12)"


def _lambda_python() -> str:
    """CPython 3.12: $LAMBDA_PYTHON, or python3.12 on PATH, or pyenv's (whose shim fails when 3.12 is not active)."""
    candidates = [os.environ.get("LAMBDA_PYTHON", ""), shutil.which(LAMBDA_PYTHON) or ""]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    for candidate in filter(None, candidates):
        if _runs_312(candidate):
            return candidate
    message = f"no working {LAMBDA_PYTHON} (Lambda's runtime; set LAMBDA_PYTHON to one) to check the image's stack"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def dependencies() -> Path:
    """requirements.txt installed for CPython 3.12 with the Dockerfile's own pip command, once per its content."""
    python = _lambda_python()
    requirements = CONTEXT / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes() + python.encode()).hexdigest()[:16]
    target = CACHE / key
    if not (target / ".complete").is_file():
        shutil.rmtree(CACHE, ignore_errors=True)  # older pins: keep one install only
        result = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                str(requirements),
                "--target",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (target / ".complete").write_text(requirements.read_text())
    return target


def _replay(python: str, task_root: Path, dependencies: Path | None, tmp_path: Path) -> dict[str, object]:
    """The events' answers from ``python``; with ``dependencies``, from those alone: ``-S`` leaves out the
    interpreter's own site-packages, so a package missing from requirements.txt fails here, not only in the image."""
    path = [str(task_root)] + ([str(dependencies)] if dependencies else [])
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONNOUSERSITE": "1",
        "POWERTOOLS_SERVICE_NAME": "cataract-screening",
        "POWERTOOLS_METRICS_NAMESPACE": "CataractScreening",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
        "ORT_INTRA_OP_THREADS": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = subprocess.run(
        [python, *(["-S"] if dependencies else []), "-c", REPLAY, str(REPO / "events")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _task_root(tmp_path: Path) -> Path:
    """/var/task as the Dockerfile fills it: the package and the baked model side by side."""
    root = tmp_path / "task"
    shutil.copytree(CONTEXT / "cataract_inference", root / "cataract_inference")
    (root / "model").mkdir(parents=True)
    for name in ("model.onnx", "model.json", "MODEL_CARD.md"):
        shutil.copy(CONTEXT / "model" / name, root / "model" / name)
    return root


@pytest.mark.slow
def test_lambdas_python_with_the_images_pins_answers_every_event_as_the_tests_do(
    dependencies: Path, tmp_path: Path
) -> None:
    root = _task_root(tmp_path)
    on_lambda = _replay(_lambda_python(), root, dependencies, tmp_path)
    here = _replay(sys.executable, root, None, tmp_path)  # the test venv's own packages
    assert on_lambda["python"] == "3.12"
    events = on_lambda["events"]
    assert isinstance(events, dict) and len(events) == len(list((REPO / "events").glob("*.json")))
    assert events["rest-predict-cataract.json"]["body"]["label"] == "cataract"
    # Bit for bit: same probabilities, gate scores, errors and headers.
    assert on_lambda["events"] == here["events"]
