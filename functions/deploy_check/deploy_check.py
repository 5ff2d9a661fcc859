"""CodeDeploy's pre-traffic hook: call the new function version before the live alias moves to it.

A version whose init fails (a missing or corrupt model, a checksum mismatch, S3 unreachable), or that answers
``GET /health`` or ``POST /predict`` with anything but a well-formed 200, is reported as failed: CodeDeploy then
leaves the alias, and every client, on the version that worked, and CloudFormation rolls the stack back.

Plain Python with boto3 from the Lambda runtime: no build step and no dependency of the inference package.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from pathlib import Path
from typing import Any

# A drawn eye (the sample events' cataract drawing; `make events` writes it): the bundled gate takes it for an eye.
# The check wants it screened, not refused: a version whose gate refuses it would likely refuse real photos too.
# What the model says of a drawing is not checked; no real photo can ship with the project.
PROBE_BASE64 = base64.b64encode((Path(__file__).parent / "probe_eye.jpg").read_bytes()).decode("ascii")
USER_AGENT = "cataract-deploy-check"
SCREENED = {"cataract", "normal"}


def api_event(method: str, path: str, body: str | None = None) -> dict[str, Any]:
    """A REST API (v1) proxy event, as API Gateway would send it, marked as this check's by its user agent."""
    headers = {"Host": "deploy-check", "Accept": "application/json", "User-Agent": USER_AGENT}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "httpMethod": method,
            "path": path,
            "resourcePath": path,
            "stage": "deploy-check",
            "requestId": f"deploy-check-{method.lower()}-{path.strip('/')}",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": USER_AGENT},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _health_problem(body: dict[str, Any]) -> str | None:
    if body.get("status") != "ok" or not isinstance(body.get("model"), dict) or not body["model"].get("sha256"):
        return f"GET /health did not report a loaded model: {json.dumps(body)[:300]}"
    return None


def _predict_problem(body: dict[str, Any]) -> str | None:
    probabilities = body.get("probabilities")
    quality = body.get("quality")
    if (
        not isinstance(probabilities, dict)
        or len(probabilities) < 2
        or not all(type(p) in (int, float) and 0.0 <= p <= 1.0 for p in probabilities.values())
        or not math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3)
        or not isinstance(body.get("referral"), bool)
        or not isinstance(quality, dict)
        or not isinstance(quality.get("gradable"), bool)
        or not body.get("disclaimer")
    ):
        return f"POST /predict answered without a screening result: {json.dumps(body)[:300]}"
    if not quality["gradable"] or body.get("label") not in SCREENED:
        return (
            f"POST /predict refused the probe, a drawn eye the bundled model's gate accepts, as "
            f"{body.get('label')!r} ({'; '.join(map(str, quality.get('reasons') or []))}): a gate that refuses it "
            f"may refuse real photos too. Check the gate calibration (docs/gate.md). {json.dumps(body)[:300]}"
        )
    if body["label"] not in probabilities:
        return f"POST /predict labelled the probe {body['label']!r}, not one of its classes: {json.dumps(body)[:300]}"
    return None


CHECKS = (
    (api_event("GET", "/health"), _health_problem),
    (api_event("POST", "/predict", json.dumps({"image": PROBE_BASE64})), _predict_problem),
)


# Each call: connect (5 s) and read (50 s: init, 10 s at most, plus the function's 28 s timeout), tried twice, with
# botocore's standard backoff (under 1 s) before the second try.
CALL_BUDGET_S = 2 * 55 + 1
WAIT_DELAY_S = 5
# The report to CodeDeploy: connect (2 s) and read (4 s), tried twice, with the backoff: 13 s at most.
REPORT_MARGIN_S = 15


def _throttled(exc: Exception) -> bool:
    """Lambda's throttling (a botocore ClientError's code): worth another try while time remains."""
    return bool(getattr(exc, "response", {}).get("Error", {}).get("Code") == "TooManyRequestsException")


def _invoke(
    lambda_client: Any, version_arn: str, event: dict[str, Any], deadline: float | None, calls_left: int = 1
) -> Any:
    """``invoke``, retried while throttled and time remains: versions share the function's reserved concurrency,
    and live traffic may hold all of it for a moment; a good version must not be rolled back for that.

    ``calls_left`` counts this call and those after it: a retry must leave each its whole budget before ``deadline``.
    """
    backoff = 1.0
    while True:
        try:
            return lambda_client.invoke(
                FunctionName=version_arn, InvocationType="RequestResponse", Payload=json.dumps(event).encode()
            )
        except Exception as exc:
            if not _throttled(exc) or deadline is None:
                raise
            if time.monotonic() + backoff + calls_left * CALL_BUDGET_S > deadline:
                raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


# Without a deadline (a check run by hand), how many times a version still Pending is polled.
WAIT_POLLS = 12


def _wait_until_active(lambda_client: Any, version_arn: str, deadline: float | None) -> str | None:
    """Wait while a version just published is Pending (its image being optimised): calling it then would fail it.

    The problem when it failed, or is still Pending when only the two calls' budget (and one more poll's) is left
    before ``deadline``. Polled here rather than by botocore's waiter, whose count of polls ignores how long each
    took: a slow Lambda API could then hold the wait past the deadline, and the report with it.
    """
    polls = 0
    while True:
        try:
            configuration = lambda_client.get_function_configuration(FunctionName=version_arn)
        except Exception as exc:
            # Throttled, as _invoke is: poll again while time remains. Anything else fails the check (run reports it).
            if not _throttled(exc):
                raise
            configuration = {"State": "Pending"}
        state = configuration.get("State")
        if state == "Active":
            return None
        if state != "Pending":  # Failed, or a state no wait ends (Inactive clears only on an invocation)
            reason = f"{configuration.get('StateReasonCode', '')}: {configuration.get('StateReason', '')}"
            return f"the version is {state}, not Active ({reason})"
        polls += 1
        out_of_time = (
            polls >= WAIT_POLLS
            if deadline is None
            else time.monotonic() + WAIT_DELAY_S + (1 + len(CHECKS)) * CALL_BUDGET_S > deadline
        )
        if out_of_time:
            return f"the version is still {state} after {polls} polls {WAIT_DELAY_S} s apart: not checked in time"
        time.sleep(WAIT_DELAY_S)


def problem_with(lambda_client: Any, version_arn: str, deadline: float | None = None) -> str | None:
    """What is wrong with the function version ``version_arn``, or None when it answers both checks.

    ``deadline`` (``time.monotonic()``) is when the report must go out: the wait for the version and the retries
    of a throttled call use what is left after both calls' own budget.
    """
    not_active = _wait_until_active(lambda_client, version_arn, deadline)
    if not_active:
        return not_active
    for index, (event, problem_in) in enumerate(CHECKS):
        what = f"{event['httpMethod']} {event['path']}"
        answer = _invoke(lambda_client, version_arn, event, deadline, calls_left=len(CHECKS) - index)
        payload = answer["Payload"].read().decode("utf-8", "replace")
        if answer.get("FunctionError"):
            # An init failure lands here: the model error's message is in the payload.
            return f"{what}: the function failed ({answer['FunctionError']}): {payload[:800]}"
        try:
            response = json.loads(payload)
            status, body = response["statusCode"], json.loads(response["body"])
        except (ValueError, KeyError, TypeError):
            return f"{what}: not an API Gateway proxy response: {payload[:300]}"
        if status != 200:
            return f"{what}: answered {status}: {json.dumps(body)[:300]}"
        problem = problem_in(body) if isinstance(body, dict) else f"{what}: the body is not a JSON object"
        if problem:
            return problem
    return None


def retained_version(version_arn: str) -> dict[str, str]:
    """The failed version, which the rollback keeps (SAM retains its versions), and how to remove it.

    Lambda publishes no version when nothing changed since the last one: a deploy of the same image and parameters
    then fails with "A version for this Lambda function exists (N)" until version N is deleted.
    """
    # arn:<partition>:lambda:<region>:<account>:function:<name>:<version>
    parts = version_arn.split(":")
    if len(parts) != 8 or not parts[7].isdigit():
        return {}
    region, name, version = parts[3], parts[6], parts[7]
    command = f"aws lambda delete-function --function-name {name} --qualifier {version} --region {region}"
    return {"retained_version": version, "delete_before_redeploying": command}


def run(
    event: dict[str, Any],
    lambda_client: Any,
    codedeploy_client: Any,
    version_arn: str,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Check ``version_arn`` and report to CodeDeploy; a report is always sent, or the deployment would wait for
    the hook's timeout (an hour) before failing."""
    try:
        problem = problem_with(lambda_client, version_arn, deadline)
    except Exception as exc:  # permissions, throttling: the version was not shown to work, so it does not go live
        problem = f"the check could not call {version_arn}: {type(exc).__name__}: {exc}"
    status = "Failed" if problem else "Succeeded"
    line = {"message": "deploy check", "version": version_arn, "status": status, "problem": problem}
    if problem:
        line.update(retained_version(version_arn))
    print(json.dumps(line))
    codedeploy_client.put_lifecycle_event_hook_execution_status(
        deploymentId=event["DeploymentId"],
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status=status,
    )
    return {"status": status, "problem": problem}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The hook's entry point: CodeDeploy invokes it with the deployment's ids."""
    import boto3
    from botocore.config import Config

    # Bounded so that a report always goes out before this function's own timeout: the wait for the version and
    # the throttling retries take what the two calls (CALL_BUDGET_S each) leave, less a margin for the report,
    # whose own client is bounded to fit it (botocore's default is 60 s connect, 60 s read, 3 tries).
    # total_max_attempts counts the first try; botocore's max_attempts would count only the retries.
    calls = Config(connect_timeout=5, read_timeout=50, retries={"mode": "standard", "total_max_attempts": 2})
    report = Config(connect_timeout=2, read_timeout=4, retries={"mode": "standard", "total_max_attempts": 2})
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - REPORT_MARGIN_S
    return run(
        event,
        boto3.client("lambda", config=calls),
        boto3.client("codedeploy", config=report),
        os.environ["TARGET_VERSION_ARN"],
        deadline,
    )
