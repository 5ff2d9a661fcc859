"""The CodeDeploy pre-traffic hook (functions/deploy_check): it passes a working version and stops a broken one.

Its two events go through the real Lambda handler in-process, as the new version would answer them on AWS; the
boto3 calls are checked against botocore's service models with its Stubber.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO, FakeLambdaContext, load_handler
from tests.support.clock import FakeClock

VERSION = "arn:aws:lambda:us-east-1:123456789012:function:cataract-inference:7"
HOOK_EVENT = {"DeploymentId": "d-ABCDEF123", "LifecycleEventHookExecutionId": "eyJleGVjdXRpb24iOiAiMSJ9"}


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "deploy_check", REPO / "functions" / "deploy_check" / "deploy_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_check = _load_module()


class FakeLambda:
    """``lambda.invoke`` answered by ``answer(event)``: what Lambda returns for a synchronous invocation."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]], state: str = "Active") -> None:
        self.answer, self.state = answer, state
        self.calls: list[dict[str, Any]] = []
        self.polled: list[str] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.answer(json.loads(kwargs["Payload"]))

    def get_function_configuration(self, FunctionName: str) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        self.polled.append(FunctionName)
        reason = {"StateReasonCode": "ImageAccessDenied", "StateReason": "no access"} if self.state == "Failed" else {}
        return {"State": self.state, **reason}


class FakeCodeDeploy:
    def __init__(self) -> None:
        self.reports: list[dict[str, str]] = []

    def put_lifecycle_event_hook_execution_status(self, **kwargs: str) -> dict[str, str]:
        self.reports.append(kwargs)
        return {"lifecycleEventHookExecutionId": kwargs["lifecycleEventHookExecutionId"]}


def _through(module: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Invoke as Lambda would: the handler's return value as the payload."""

    def answer(event: dict[str, Any]) -> dict[str, Any]:
        response = module.lambda_handler(event, FakeLambdaContext())
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(response).encode())}

    return answer


def _init_failure(exc: Exception) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What Lambda returns when the version's init raised: an Unhandled function error with the message."""
    payload = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
    return lambda _event: {
        "StatusCode": 200,
        "FunctionError": "Unhandled",
        "Payload": io.BytesIO(json.dumps(payload).encode()),
    }


def test_a_working_version_passes_and_is_reported(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_handler(tiny_model_dir, monkeypatch)
    client, codedeploy = FakeLambda(_through(module)), FakeCodeDeploy()
    result = deploy_check.run(HOOK_EVENT, client, codedeploy, VERSION)
    assert result == {"status": "Succeeded", "problem": None}
    assert [json.loads(c["Payload"])["path"] for c in client.calls] == ["/health", "/predict"]
    assert all(c["FunctionName"] == VERSION and c["InvocationType"] == "RequestResponse" for c in client.calls)
    assert client.polled == [VERSION], "first waits for the version to be Active"
    assert codedeploy.reports == [
        {
            "deploymentId": HOOK_EVENT["DeploymentId"],
            "lifecycleEventHookExecutionId": HOOK_EVENT["LifecycleEventHookExecutionId"],
            "status": "Succeeded",
        }
    ]


def test_the_bundled_model_passes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_handler(REPO / "functions" / "inference" / "model", monkeypatch)
    assert deploy_check.problem_with(FakeLambda(_through(module)), VERSION) is None


def test_a_version_whose_model_fails_its_checksum_is_stopped(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real init error (a wrong MODEL_SHA256), as Lambda reports it to the caller."""
    with pytest.raises(Exception) as raised:
        load_handler(tiny_model_dir, monkeypatch, MODEL_SHA256="0" * 64)
    codedeploy = FakeCodeDeploy()
    result = deploy_check.run(HOOK_EVENT, FakeLambda(_init_failure(raised.value)), codedeploy, VERSION)
    assert result["status"] == "Failed" and codedeploy.reports[0]["status"] == "Failed"
    assert result["problem"].startswith("GET /health: the function failed (Unhandled)")
    assert "sha256" in result["problem"].lower(), "the model error's own words reach the deploy log"


GOOD_HEALTH: dict[str, Any] = {"status": "ok", "model": {"sha256": "ab" * 32, "version": "1"}}


def test_the_good_health_answer_passes_so_each_broken_one_fails_for_its_own_flaw() -> None:
    assert deploy_check._health_problem(GOOD_HEALTH) is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"statusCode": 502, "body": json.dumps({"message": "Internal server error"})}, "answered 502"),
        ({"statusCode": 200, "body": json.dumps({**GOOD_HEALTH, "status": "starting"})}, "did not report a loaded"),
        ({"statusCode": 200, "body": json.dumps({**GOOD_HEALTH, "model": None})}, "did not report a loaded model"),
        ({"statusCode": 200, "body": json.dumps({**GOOD_HEALTH, "model": {"sha256": ""}})}, "did not report a loaded"),
        ({"statusCode": 200, "body": "not json"}, "not an API Gateway proxy response"),
        ({"body": "{}"}, "not an API Gateway proxy response"),
        ({"statusCode": 200, "body": "[1, 2]"}, "the body is not a JSON object"),
    ],
)
def test_a_wrong_health_answer_is_stopped(response: dict[str, Any], expected: str) -> None:
    client = FakeLambda(lambda _e: {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(response).encode())})
    problem = deploy_check.problem_with(client, VERSION)
    assert problem is not None and expected in problem and len(client.calls) == 1


GOOD_ANSWER: dict[str, Any] = {
    "label": "normal",
    "probabilities": {"cataract": 0.1, "normal": 0.9},
    "referral": False,
    "quality": {"gradable": True, "reasons": []},
    "disclaimer": "x",
}


def test_the_good_answer_below_passes_so_each_broken_one_fails_for_its_own_flaw() -> None:
    assert deploy_check._predict_problem(GOOD_ANSWER) is None


@pytest.mark.parametrize(
    "answer",
    [
        # Each is the good answer with one flaw, so each flaw's own check is what stops it.
        {**GOOD_ANSWER, "label": "maybe"},
        {**GOOD_ANSWER, "probabilities": {"normal": 1.0}},
        {**GOOD_ANSWER, "probabilities": {"cataract": 1.5, "normal": -0.5}},  # sums to 1: only the range is wrong
        {k: v for k, v in GOOD_ANSWER.items() if k != "disclaimer"},
        {**GOOD_ANSWER, "disclaimer": ""},
        {**GOOD_ANSWER, "quality": {"gradable": "yes", "reasons": []}},
        {**GOOD_ANSWER, "quality": {"gradable": False, "reasons": ["too dark"]}},
        {"error": {"code": "internal_error", "message": "the service failed"}},
        {**GOOD_ANSWER, "probabilities": {}},
        {**GOOD_ANSWER, "probabilities": {"cataract": 0.7, "normal": 0.7}},
        {**GOOD_ANSWER, "probabilities": {"cataract": True, "normal": 0.0}},
        {**GOOD_ANSWER, "referral": "yes"},
        {**GOOD_ANSWER, "quality": None},
        {**GOOD_ANSWER, "label": "other"},
    ],
)
def test_a_wrong_screening_answer_is_stopped(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]
) -> None:
    module = load_handler(tiny_model_dir, monkeypatch)
    real = _through(module)

    def predict_broken(event: dict[str, Any]) -> dict[str, Any]:
        if event["path"] == "/predict":
            body = json.dumps({"statusCode": 200, "body": json.dumps(answer)})
            return {"StatusCode": 200, "Payload": io.BytesIO(body.encode())}
        return real(event)

    problem = deploy_check.problem_with(FakeLambda(predict_broken), VERSION)
    assert problem is not None and problem.startswith("POST /predict")


def test_a_version_that_never_becomes_active_is_stopped_without_being_called() -> None:
    client, codedeploy = FakeLambda(lambda _e: {}, state="Failed"), FakeCodeDeploy()
    result = deploy_check.run(HOOK_EVENT, client, codedeploy, VERSION)
    assert result["status"] == "Failed" and client.calls == []
    assert result["problem"] == "the version is Failed, not Active (ImageAccessDenied: no access)"
    assert [r["status"] for r in codedeploy.reports] == ["Failed"]


@pytest.mark.parametrize("poll_s", [0.0, 1.0, 20.0])
def test_a_version_pending_too_long_is_reported_before_the_deadline_however_slow_each_poll(
    monkeypatch: pytest.MonkeyPatch, poll_s: float
) -> None:
    """botocore's waiter counted polls, not time: with 1 s polls, the report went out 107 s after the deadline."""
    clock = FakeClock().install(monkeypatch, deploy_check.time)
    client, codedeploy = FakeLambda(lambda _e: {}, state="Pending"), FakeCodeDeploy()
    real_poll = client.get_function_configuration

    def slow_poll(FunctionName: str) -> dict[str, Any]:  # noqa: N803
        clock.now += poll_s
        return real_poll(FunctionName)

    client.get_function_configuration = slow_poll  # type: ignore[method-assign]
    deadline = clock.now + 885
    result = deploy_check.run(HOOK_EVENT, client, codedeploy, VERSION, deadline)
    assert result["status"] == "Failed" and client.calls == []
    assert result["problem"].startswith("the version is still Pending after ")
    # Each call's budget was still there for the checks when the wait gave up: it waited as long as it could.
    assert deadline - 3 * deploy_check.CALL_BUDGET_S - deploy_check.WAIT_DELAY_S - poll_s <= clock.now <= deadline
    assert [r["status"] for r in codedeploy.reports] == ["Failed"]


@pytest.mark.parametrize("state", ["Inactive", None])
def test_a_state_no_wait_ends_fails_at_once(state: str | None) -> None:
    """Only Pending is waited on: an Inactive version clears only when invoked, and a missing state never does."""
    client = FakeLambda(lambda _e: {}, state=state)  # type: ignore[arg-type]
    problem = deploy_check.problem_with(client, VERSION, deadline=None)
    assert problem is not None and problem.startswith(f"the version is {state}, not Active")
    assert client.polled == [VERSION] and client.calls == []


def test_a_throttled_poll_is_polled_again(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a throttled invoke is retried: live traffic on the Lambda API must not roll a good version back."""
    from botocore.exceptions import ClientError

    monkeypatch.setattr(deploy_check.time, "sleep", lambda _s: None)
    module = load_handler(tiny_model_dir, monkeypatch)
    client = FakeLambda(_through(module))
    real_poll = client.get_function_configuration

    def throttled_once(FunctionName: str) -> dict[str, Any]:  # noqa: N803
        if not client.polled:
            client.polled.append(FunctionName)
            error = {"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}
            raise ClientError(error, "GetFunctionConfiguration")
        return real_poll(FunctionName)

    client.get_function_configuration = throttled_once  # type: ignore[method-assign]
    assert deploy_check.problem_with(client, VERSION, deadline=None) is None
    assert client.polled == [VERSION, VERSION] and len(client.calls) == 2


def test_a_version_that_becomes_active_while_polled_is_checked(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_check.time, "sleep", lambda _s: None)
    module = load_handler(tiny_model_dir, monkeypatch)
    client = FakeLambda(_through(module), state="Pending")
    real_poll = client.get_function_configuration

    def becoming_active(FunctionName: str) -> dict[str, Any]:  # noqa: N803
        if len(client.polled) == 3:
            client.state = "Active"
        return real_poll(FunctionName)

    client.get_function_configuration = becoming_active  # type: ignore[method-assign]
    assert deploy_check.problem_with(client, VERSION, deadline=None) is None
    assert len(client.polled) == 4 and len(client.calls) == 2


def test_a_failure_log_names_the_version_the_rollback_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    """CloudFormation's rollback keeps the failed version (SAM retains versions), and Lambda publishes no new one
    for the same image and configuration: the log says which version to delete before deploying the same again."""
    deploy_check.run(HOOK_EVENT, FakeLambda(lambda _e: {}, state="Failed"), FakeCodeDeploy(), VERSION)
    line = json.loads(capsys.readouterr().out)
    assert line["status"] == "Failed" and line["retained_version"] == "7"
    assert (
        line["delete_before_redeploying"]
        == "aws lambda delete-function --function-name cataract-inference --qualifier 7 --region us-east-1"
    )


def test_a_passing_check_logs_no_version_to_delete(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_handler(tiny_model_dir, monkeypatch)
    capsys.readouterr()
    deploy_check.run(HOOK_EVENT, FakeLambda(_through(module)), FakeCodeDeploy(), VERSION)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "Succeeded" and "retained_version" not in line


@pytest.mark.parametrize("arn", ["arn:aws:lambda:us-east-1:123456789012:function:cataract-inference", "not-an-arn"])
def test_no_version_is_named_when_the_arn_has_none(arn: str) -> None:
    assert deploy_check.retained_version(arn) == {}


def test_a_check_that_cannot_call_the_version_still_reports_failure() -> None:
    """Without a report CodeDeploy would wait an hour for the hook to time out."""
    from botocore.exceptions import ClientError

    def denied(_event: dict[str, Any]) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "Invoke")

    codedeploy = FakeCodeDeploy()
    result = deploy_check.run(HOOK_EVENT, FakeLambda(denied), codedeploy, VERSION)
    assert result["status"] == "Failed" and "AccessDeniedException" in result["problem"]
    assert [r["status"] for r in codedeploy.reports] == ["Failed"]


def test_the_handler_calls_lambda_and_codedeploy_as_their_apis_define(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's Stubber checks every parameter name and type against the service models."""
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    module = load_handler(tiny_model_dir, monkeypatch)
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    codedeploy = boto3.client("codedeploy", region_name="us-east-1")
    with Stubber(lambda_client) as lambdas, Stubber(codedeploy) as deployments:
        lambdas.add_response("get_function_configuration", {"State": "Active"}, {"FunctionName": VERSION})
        for event, _ in deploy_check.CHECKS:
            payload = json.dumps(module.lambda_handler(event, FakeLambdaContext())).encode()
            lambdas.add_response(
                "invoke",
                {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(payload), len(payload))},
                {"FunctionName": VERSION, "InvocationType": "RequestResponse", "Payload": json.dumps(event).encode()},
            )
        deployments.add_response(
            "put_lifecycle_event_hook_execution_status",
            {"lifecycleEventHookExecutionId": HOOK_EVENT["LifecycleEventHookExecutionId"]},
            {
                "deploymentId": HOOK_EVENT["DeploymentId"],
                "lifecycleEventHookExecutionId": HOOK_EVENT["LifecycleEventHookExecutionId"],
                "status": "Succeeded",
            },
        )
        clients = {"lambda": lambda_client, "codedeploy": codedeploy}
        configs: dict[str, Any] = {}

        def client(name: str, **kwargs: Any) -> Any:
            configs[name] = kwargs.get("config")
            return clients[name]

        monkeypatch.setattr(boto3, "client", client)
        monkeypatch.setenv("TARGET_VERSION_ARN", VERSION)
        context = FakeLambdaContext()
        context.get_remaining_time_in_millis = lambda: 900_000  # type: ignore[method-assign]  # the Timeout
        assert deploy_check.handler(HOOK_EVENT, context) == {"status": "Succeeded", "problem": None}
        lambdas.assert_no_pending_responses()
        deployments.assert_no_pending_responses()
    # Every call bounded: each invoke's worst case is what the deadline keeps back for it, and the report's fits
    # the margin left after the deadline (botocore's default would be 60 s connect and 60 s read, tried 3 times).
    lambda_config, report_config = configs["lambda"], configs["codedeploy"]
    assert lambda_config.read_timeout >= 10 + 28 and _worst_case_s(lambda_config) <= deploy_check.CALL_BUDGET_S
    assert report_config is not None and _worst_case_s(report_config) <= deploy_check.REPORT_MARGIN_S


def _worst_case_s(config: Any) -> float:
    """The longest one call can take under ``config``: every try timing out, with standard mode's backoff between
    tries (under 1 s before the second). ``max_attempts`` would count retries, not tries: it must not be used."""
    retries = config.retries
    assert retries["mode"] == "standard" and "max_attempts" not in retries, retries
    tries = retries["total_max_attempts"]
    assert 1 <= tries <= 2, "more tries would back off for longer than the second's 1 s"
    return tries * (config.connect_timeout + config.read_timeout) + (tries - 1) * 1.0


def _throttled(times: int, then: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], Any]:
    from botocore.exceptions import ClientError

    left = [times]

    def answer(event: dict[str, Any]) -> dict[str, Any]:
        if left[0]:
            left[0] -= 1
            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "Invoke")
        return then(event)

    return answer


def test_a_throttled_call_is_retried_while_time_remains(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    slept: list[float] = []
    monkeypatch.setattr(deploy_check.time, "sleep", slept.append)
    module = load_handler(tiny_model_dir, monkeypatch)
    client = FakeLambda(_throttled(3, _through(module)))
    deadline = time.monotonic() + 885
    assert deploy_check.problem_with(client, VERSION, deadline) is None
    assert slept == [1.0, 2.0, 4.0]  # backed off, then answered
    # Out of time, a throttled call fails the check (and is reported), rather than outliving the hook.
    result = deploy_check.run(HOOK_EVENT, FakeLambda(_throttled(99, _through(module))), FakeCodeDeploy(), VERSION,
                              time.monotonic() + deploy_check.CALL_BUDGET_S)  # fmt: skip
    assert result["status"] == "Failed" and "TooManyRequestsException" in result["problem"]
    # The first call's retries once kept back its own budget only: the second call could then start with seconds to
    # go and outlive the hook. With under two calls' budget left, a throttled first call is not retried.
    result = deploy_check.run(HOOK_EVENT, FakeLambda(_throttled(1, _through(module))), FakeCodeDeploy(), VERSION,
                              time.monotonic() + 1.5 * deploy_check.CALL_BUDGET_S)  # fmt: skip
    assert result["status"] == "Failed" and "TooManyRequestsException" in result["problem"]


def test_the_probe_is_a_drawn_eye_that_the_bundled_gate_screens(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(deploy_check.PROBE_BASE64))) as img:
        img.load()
        assert img.format == "JPEG" and img.size == (480, 320)
    module = load_handler(REPO / "functions" / "inference" / "model", monkeypatch)
    event = deploy_check.CHECKS[1][0]
    body = json.loads(module.lambda_handler(event, FakeLambdaContext())["body"])
    assert body["quality"]["gradable"] and body["label"] in ("cataract", "normal")


def test_a_version_whose_gate_refuses_the_probe_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad gate refit (here, a mid-layer distance cap no eye passes) refuses every photo: it must not go live."""
    import shutil

    model = shutil.copytree(REPO / "functions" / "inference" / "model", tmp_path / "model")
    manifest = json.loads((model / "model.json").read_text())
    manifest["gate"]["max_mid_distance"] = 0.5
    (model / "model.json").write_text(json.dumps(manifest))
    problem = deploy_check.problem_with(FakeLambda(_through(load_handler(model, monkeypatch))), VERSION)
    assert problem is not None and problem.startswith("POST /predict refused the probe")
    assert "not_an_eye" in problem and "docs/gate.md" in problem
