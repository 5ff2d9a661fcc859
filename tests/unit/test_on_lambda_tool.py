"""The on-Lambda sweep (benchmarks/on_lambda.py) against botocore's Stubber: every call is checked against the
Lambda API model, in order, with the parameters the sweep must send; REPORT lines in both log formats."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from benchmarks import on_lambda
from tests.support.clock import FakeClock

FUNCTION = "cataract-screening-InferenceFunction-abc"
ORIGINAL_VARIABLES = {
    "POWERTOOLS_SERVICE_NAME": "cataract-screening",
    "POWERTOOLS_METRICS_NAMESPACE": "CataractScreening",
    "ORT_INTRA_OP_THREADS": "1",
    "MODEL_CACHE_DIR": "/tmp/cataract-model",
}
PAYLOAD = b'{"httpMethod": "POST", "path": "/predict"}'


def text_report(duration: float, billed: int, memory: int, used: int, init: float | None = None) -> str:
    """A REPORT line as Lambda writes it in the text log format (with X-Ray on, as the template sets)."""
    line = (
        f"REPORT RequestId: 8f5c0c1e-1d2b-4a4e-9d1e-3a3c7f0b9e11\tDuration: {duration} ms\tBilled Duration: {billed} ms"
        f"\tMemory Size: {memory} MB\tMax Memory Used: {used} MB\t"
    )
    if init is not None:
        line += f"Init Duration: {init} ms\t"
    return line + "\nXRAY TraceId: 1-5e1b4151-5ac6c58f5b0fb0a9b1e8e1ae\tSegmentId: 6b1ad0d2e2d3f3a1\tSampled: true\t"


def json_report(duration: float, billed: int, memory: int, used: int, init: float | None = None) -> str:
    """The same figures as a platform.report record (LoggingConfig.LogFormat: JSON)."""
    metrics: dict[str, Any] = {
        "durationMs": duration,
        "billedDurationMs": billed,
        "memorySizeMB": memory,
        "maxMemoryUsedMB": used,
    }
    if init is not None:
        metrics["initDurationMs"] = init
    record = {"requestId": "8f5c0c1e", "metrics": metrics, "status": "success"}
    return json.dumps({"time": "2026-11-27T12:00:00.000Z", "type": "platform.report", "record": record})


def invoke_response(report: str, body: dict[str, Any] | None = None, function_error: str | None = None) -> dict:
    data = json.dumps(body if body is not None else {"statusCode": 200, "body": "{}"}).encode()
    tail = '{"level":"INFO","message":"screened"}\nEND RequestId: 8f5c0c1e\n' + report
    response: dict[str, Any] = {
        "StatusCode": 200,
        "LogResult": base64.b64encode(tail.encode()).decode(),
        "Payload": StreamingBody(io.BytesIO(data), len(data)),
        "ExecutedVersion": "$LATEST",
    }
    if function_error:
        response["FunctionError"] = function_error
    return response


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def expect_settled(
    stubber: Stubber, memory: int, variables: dict[str, str], architecture: str = "x86_64", revision: str = "rev-0"
) -> None:
    """The wait for no update in progress (function_updated_v2 reads GetFunction), then the configuration read."""
    stubber.add_response(
        "get_function", {"Configuration": {"LastUpdateStatus": "Successful"}}, {"FunctionName": FUNCTION}
    )
    stubber.add_response(
        "get_function_configuration",
        {
            "MemorySize": memory,
            "Architectures": [architecture],
            "Environment": {"Variables": dict(variables)},
            "RevisionId": revision,
        },
        {"FunctionName": FUNCTION},
    )


def expect_configuration(stubber: Stubber, architecture: str = "x86_64", memory: int = 2048) -> None:
    expect_settled(stubber, memory, ORIGINAL_VARIABLES, architecture)


def expect_update(stubber: Stubber, memory: int, variables: dict[str, str], revision: str | None = None) -> None:
    expected: dict[str, Any] = {"FunctionName": FUNCTION, "MemorySize": memory, "Environment": {"Variables": variables}}
    if revision:
        expected["RevisionId"] = revision
    stubber.add_response(
        "update_function_configuration", {"MemorySize": memory, "LastUpdateStatus": "InProgress"}, expected
    )
    stubber.add_response(
        "get_function", {"Configuration": {"LastUpdateStatus": "Successful"}}, {"FunctionName": FUNCTION}
    )


def expect_restore(stubber: Stubber, left_at: int, left_variables: dict[str, str], memory: int = 2048) -> None:
    """The restore: the function read as the sweep left it, then the original put back if still at that revision."""
    expect_settled(stubber, left_at, left_variables, revision="rev-sweep")
    expect_update(stubber, memory, ORIGINAL_VARIABLES, revision="rev-sweep")


def expect_invoke(stubber: Stubber, response: dict) -> None:
    stubber.add_response("invoke", response, {"FunctionName": FUNCTION, "Payload": ANY, "LogType": "Tail"})


def swept_variables(threads: int) -> dict[str, str]:
    return {
        **ORIGINAL_VARIABLES,
        "ORT_INTRA_OP_THREADS": str(threads),
        "POWERTOOLS_METRICS_NAMESPACE": "CataractScreeningBenchmark",
    }


def expect_one_answered_call(stubber: Stubber, memory: int, threads: int = 1) -> None:
    """The sweep sets ``memory`` and ``threads``, then a cold call and one warm call, both answered."""
    expect_update(stubber, memory, swept_variables(threads))
    expect_invoke(stubber, invoke_response(text_report(40.0, 41, memory, 170, init=400.0)))
    expect_invoke(stubber, invoke_response(text_report(9.0, 9, memory, 171)))


def test_sweep_sets_each_configuration_measures_cold_and_warm_and_restores(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber, architecture="arm64")
    plan = {
        (1769, 1): (480.5, (11.0, 12.0, 30.0)),
        (1769, 2): (470.0, (10.0, 10.5, 11.0)),
        (3538, 1): (460.0, (9.0, 9.5, 9.0)),
        (3538, 2): (455.0, (7.0, 6.5, 8.0)),
    }
    for (memory, threads), (cold, warm) in plan.items():  # memory outer, threads inner, as the sweep goes
        expect_update(stubber, memory, swept_variables(threads))
        expect_invoke(stubber, invoke_response(text_report(40.0, 521, memory, 170, init=cold)))
        for duration in warm:
            expect_invoke(stubber, invoke_response(text_report(duration, round(duration + 0.5), memory, 171)))
    expect_restore(stubber, 3538, swept_variables(2))  # the original, exactly: no benchmark namespace left behind

    progress: list[str] = []
    architecture, results = on_lambda.sweep(
        client, FUNCTION, [1769, 3538], [1, 2], PAYLOAD, invocations=3, progress=progress.append
    )

    assert architecture == "arm64"
    assert [(r.memory_mb, r.threads) for r in results] == list(plan)
    first, last = results[0], results[-1]
    assert first.cold is not None and first.cold.init_ms == pytest.approx(480.5)
    assert [r.duration_ms for r in first.warm] == [11.0, 12.0, 30.0]
    assert all(r.init_ms is None for r in first.warm)
    assert not any(r.errors for r in results)
    assert progress[-1] == "restoring 2048 MB and the original environment"
    # arm64 price: the mean billed duration (12, 12 and 30 ms: 18, where the median is 12) at 1769 MB, plus the
    # request charge.
    expected = 1e6 * (18 / 1000 * 1769 / 1024 * on_lambda.PRICE_PER_GB_SECOND["arm64"] + 0.20 / 1e6)
    assert first.cost_per_million("arm64") == pytest.approx(expected)
    assert last.cost_per_million("arm64") > 0

    rows = [line for line in on_lambda.table(architecture, results).splitlines() if line[2:3].isdigit()]
    assert len(rows) == 4
    # Three warm calls: a p95 would be only their largest.
    assert rows[0].startswith("| 1769 | 1 | 480.50 | 40.00 | 3 | 12.00 | n/a | 11.00–30.00 | 1.00× | 171 | 0 |")
    assert rows[3].startswith("| 3538 | 2 | 455.00 | 40.00 | 3 | 7.00 | n/a | 6.50–8.00 | 0.58× | 171 | 0 |")


def test_failed_invocations_are_counted_not_hidden(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 2048, swept_variables(1))
    expect_invoke(
        stubber,
        invoke_response(
            text_report(900.0, 901, 2048, 120, init=300.0), {"errorType": "InitError"}, function_error="Unhandled"
        ),
    )
    expect_invoke(stubber, invoke_response(text_report(5.0, 5, 2048, 121), {"statusCode": 413, "body": "{}"}))
    expect_invoke(stubber, invoke_response(text_report(9.0, 9, 2048, 121)))
    expect_invoke(stubber, invoke_response(text_report(9.0, 9, 2048, 121), body=["not", "a", "response"]))  # type: ignore[arg-type]
    expect_restore(stubber, 2048, swept_variables(1))

    _, (result,) = on_lambda.sweep(client, FUNCTION, [2048], [1], PAYLOAD, invocations=3)

    # The errors are counted, and kept out of the latency and the cost: only the one answered call is in them.
    assert [r.duration_ms for r in result.warm] == [9.0]
    assert len(result.errors) == 3
    assert result.errors[0].startswith("function error (Unhandled)")
    assert result.errors[1].startswith("HTTP 413")
    assert result.errors[2].startswith("not an API Gateway response")
    assert "| 1 | 9.00 | n/a | 9.00–9.00 | 1.00× | 121 | 3 |" in on_lambda.table("x86_64", [result])


def test_an_invocation_that_raises_ends_the_sweep_and_still_restores(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 3538, swept_variables(2))
    stubber.add_client_error("invoke", "TooManyRequestsException", "Rate exceeded", 429)
    expect_restore(stubber, 3538, swept_variables(2))

    with pytest.raises(on_lambda.SweepError, match="Rate exceeded"):
        on_lambda.sweep(client, FUNCTION, [3538], [2], PAYLOAD, invocations=2)


def test_a_failed_restore_says_what_to_restore_by_hand(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 1769, swept_variables(1))
    stubber.add_client_error("invoke", "ServiceException", "Lambda is down", 500)
    expect_settled(stubber, 1769, swept_variables(1), revision="rev-sweep")
    stubber.add_client_error("update_function_configuration", "AccessDeniedException", "not allowed", 403)

    with pytest.raises(on_lambda.SweepError) as raised:
        on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    message = str(raised.value)
    assert "Lambda is down" in message, "what stopped the sweep is said too, not only what the restore found"
    assert "Restore it by hand: MemorySize 2048" in message
    assert "'ORT_INTRA_OP_THREADS': '1'" in message


def test_an_update_in_progress_is_waited_out_and_a_failed_first_change_leaves_nothing_to_restore(
    stubbed: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lambda answers 409 while an update is in progress (a deploy's, or one the sweep just made): waited out for a
    while, then the sweep ends; the function is still as it was, so nothing is restored, nor asked of the user."""
    clock = FakeClock(0.0).install(monkeypatch, on_lambda.time)
    client, stubber = stubbed
    expect_configuration(stubber)
    stubber.add_client_error("update_function_configuration", "ResourceConflictException", "update in progress", 409)
    expect_update(stubber, 1769, swept_variables(1))  # the second try goes through
    expect_invoke(stubber, invoke_response(text_report(40.0, 41, 1769, 170, init=400.0)))
    expect_invoke(stubber, invoke_response(text_report(9.0, 9, 1769, 171)))
    expect_restore(stubber, 1769, swept_variables(1))
    expect_configuration(stubber)  # the second sweep
    for _ in range(9):  # 2 + 4 + 8 + 16 + 20 + 20 + 20 + 20 s: a ninth refusal, and 20 s more would pass 120
        stubber.add_client_error("update_function_configuration", "ResourceConflictException", "in progress", 409)
    expect_settled(stubber, 2048, ORIGINAL_VARIABLES)  # the restore finds the original: nothing to put back

    _, (result,) = on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    assert not result.errors and clock.now == 2.0
    with pytest.raises(on_lambda.SweepError) as raised:
        on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    assert "ResourceConflictException" in str(raised.value) and "by hand" not in str(raised.value)


def test_a_change_someone_made_during_the_sweep_is_not_overwritten(stubbed: tuple[Any, Stubber]) -> None:
    """A deploy during the sweep set a new MODEL_SHA256: writing back the environment read at the start undid it."""
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_one_answered_call(stubber, 1769)
    expect_settled(stubber, 1769, {**swept_variables(1), "MODEL_SHA256": "new"})

    with pytest.raises(on_lambda.RestoreError) as raised:
        on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    message = str(raised.value)
    assert "was changed during the sweep by someone else" in message and "'MODEL_SHA256': 'new'" in message
    assert "left as it is" in message
    # The sweep itself finished: its measurements are not lost to the restore.
    assert [(r.memory_mb, [w.duration_ms for w in r.warm]) for r in raised.value.results] == [(1769, [9.0])]


def test_main_prints_the_table_of_a_finished_sweep_whose_restore_failed(
    stubbed: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_one_answered_call(stubber, 2048)
    expect_settled(stubber, 2048, swept_variables(1), revision="rev-sweep")
    stubber.add_client_error("update_function_configuration", "AccessDeniedException", "not allowed", 403)

    argv = ["--function", FUNCTION, "--memory", "2048", "--threads", "1", "--invocations", "1"]
    assert on_lambda.main(argv, client=client) == 2
    captured = capsys.readouterr()
    assert "| 2048 | 1 | 400.00 | 40.00 | 1 | 9.00 |" in captured.out
    assert "Restore it by hand: MemorySize 2048" in captured.err


def test_a_function_whose_last_update_failed_is_swept_and_restored(stubbed: tuple[Any, Stubber]) -> None:
    """Lambda keeps LastUpdateStatus Failed until the next update, and takes one: botocore's waiter calls it final."""
    client, stubber = stubbed
    stubber.add_response("get_function", {"Configuration": {"LastUpdateStatus": "Failed"}}, {"FunctionName": FUNCTION})
    stubber.add_response(
        "get_function_configuration",
        {"MemorySize": 2048, "Environment": {"Variables": dict(ORIGINAL_VARIABLES)}, "RevisionId": "rev-0"},
        {"FunctionName": FUNCTION},
    )
    expect_one_answered_call(stubber, 2048)
    expect_restore(stubber, 2048, swept_variables(1))

    _, (result,) = on_lambda.sweep(client, FUNCTION, [2048], [1], PAYLOAD, invocations=1)
    assert not result.errors


def test_ctrl_c_while_restoring_is_ignored(stubbed: tuple[Any, Stubber], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT in the middle of the restore: without the guard, the restore stopped half-way."""
    import os
    import signal

    client, stubber = stubbed
    expect_configuration(stubber)
    expect_one_answered_call(stubber, 2048)
    expect_restore(stubber, 2048, swept_variables(1))
    real_update = client.update_function_configuration

    def update(**kwargs: Any) -> Any:
        if "RevisionId" in kwargs:  # the restore's update
            os.kill(os.getpid(), signal.SIGINT)
        return real_update(**kwargs)

    client.update_function_configuration = update
    # As at a terminal, whatever this test runner inherited (a background job ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _, (result,) = on_lambda.sweep(client, FUNCTION, [2048], [1], PAYLOAD, invocations=1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not result.errors


def test_a_cold_call_that_ran_elsewhere_fills_no_cold_column(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 1769, swept_variables(1))
    elsewhere = invoke_response(text_report(40.0, 41, 2048, 900, init=9999.0))
    elsewhere["ExecutedVersion"] = "7"
    expect_invoke(stubber, elsewhere)
    expect_invoke(stubber, invoke_response(text_report(9.0, 9, 1769, 171)))
    expect_restore(stubber, 1769, swept_variables(1))

    _, (result,) = on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    assert result.cold is None and len(result.errors) == 1
    assert "| 1769 | 1 | n/a | n/a | 1 | 9.00 | n/a | 9.00–9.00 | 1.00× | 171 | 1 |" in on_lambda.table(
        "x86_64", [result]
    )


def test_ctrl_c_during_the_sweep_restores_and_exits_130(
    stubbed: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 2048, swept_variables(1))
    expect_restore(stubber, 2048, swept_variables(1))
    real_invoke = client.invoke

    def interrupted(**kwargs: Any) -> Any:
        raise KeyboardInterrupt

    client.invoke = interrupted
    argv = ["--function", FUNCTION, "--memory", "2048", "--threads", "1", "--invocations", "1"]
    assert on_lambda.main(argv, client=client) == 130
    assert "interrupted: " in capsys.readouterr().err
    client.invoke = real_invoke


@pytest.mark.parametrize(
    "function",
    [
        f"{FUNCTION}:live",
        f"{FUNCTION}:7",
        f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}:live",
        f"123456789012:function:{FUNCTION}:live",
    ],
)
def test_a_version_or_alias_is_refused_before_any_call(function: str, capsys: pytest.CaptureFixture[str]) -> None:
    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the tool called {name} on what the live alias serves")

    with pytest.raises(SystemExit) as raised:
        on_lambda.main(["--function", function], client=NoCalls())
    assert raised.value.code == 2 and "names a version or alias" in capsys.readouterr().err


@pytest.mark.parametrize(
    "function", [FUNCTION, f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}", f"1:function:{FUNCTION}"]
)
def test_a_function_name_or_arn_is_taken(function: str) -> None:
    assert not on_lambda._qualified(function)


def test_a_call_that_ran_elsewhere_than_the_configuration_just_set_is_an_error(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expect_configuration(stubber)
    expect_update(stubber, 1769, swept_variables(1))
    expect_invoke(stubber, invoke_response(text_report(40.0, 41, 1769, 170, init=400.0)))
    elsewhere = invoke_response(text_report(9.0, 9, 2048, 171))
    elsewhere["ExecutedVersion"] = "7"
    expect_invoke(stubber, elsewhere)
    expect_restore(stubber, 1769, swept_variables(1))

    _, (result,) = on_lambda.sweep(client, FUNCTION, [1769], [1], PAYLOAD, invocations=1)
    assert result.errors == ["ran on version 7 with 2048 MB, not $LATEST with 1769 MB"] and result.warm == []


def test_a_missing_function_is_a_clear_error(stubbed: tuple[Any, Stubber], capsys: pytest.CaptureFixture) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_function", "ResourceNotFoundException", "Function not found", 404)

    assert on_lambda.main(["--function", FUNCTION, "--invocations", "1"], client=client) == 2
    assert "cannot read the configuration" in capsys.readouterr().err


def test_main_prints_and_writes_the_table_for_a_photo_of_your_own(
    stubbed: tuple[Any, Stubber], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client, stubber = stubbed
    photo = tmp_path / "eye.jpg"
    photo.write_bytes(b"\xff\xd8 not decoded by the tool, only carried")
    expect_configuration(stubber)
    expect_update(stubber, 2048, swept_variables(1))
    expect_invoke(stubber, invoke_response(json_report(35.0, 35, 2048, 150, init=410.0)))
    expect_invoke(stubber, invoke_response(json_report(8.0, 8, 2048, 151)))
    expect_restore(stubber, 2048, swept_variables(1))
    output = tmp_path / "lambda.md"

    code = on_lambda.main(
        [
            "--function",
            FUNCTION,
            "--memory",
            "2048",
            "--threads",
            "1",
            "--invocations",
            "1",
            "--photo",
            str(photo),
            "--output",
            str(output),
        ],
        client=client,
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "| 2048 | 1 | 410.00 | 35.00 | 1 | 8.00 |" in printed
    assert output.read_text(encoding="utf-8").strip() == printed.strip()


def test_an_event_over_lambdas_limit_is_refused_before_any_call(tmp_path: Path) -> None:
    photo = tmp_path / "huge.jpg"
    photo.write_bytes(b"\0" * (5 * 1024 * 1024))  # 6.7 MB once base64-encoded in the event

    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the tool called {name} for an event Lambda would refuse")

    with pytest.raises(SystemExit) as raised:
        on_lambda.main(["--function", FUNCTION, "--photo", str(photo)], client=NoCalls())
    assert raised.value.code == 2


@pytest.mark.parametrize("formatter", [text_report, json_report])
def test_reports_parse_in_both_log_formats(formatter: Any) -> None:
    cold = on_lambda.parse_report("START RequestId: x\n" + formatter(12.5, 13, 2048, 160, init=455.25))
    assert cold == on_lambda.Report(12.5, 13.0, 2048, 160, 455.25)
    warm = on_lambda.parse_report(formatter(7.25, 8, 1769, 161))
    assert warm == on_lambda.Report(7.25, 8.0, 1769, 161, None)


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "START RequestId: x\nEND RequestId: x\n",
        "REPORT RequestId: x\tDuration: 5.0 ms\tMemory Size: 2048 MB\tMax Memory Used: 100 MB",  # no billed duration
        '{"type": "platform.report", "record": {"metrics": {"durationMs": 5.0}}}',
    ],
)
def test_a_tail_without_a_complete_report_is_an_error(tail: str) -> None:
    with pytest.raises(ValueError):
        on_lambda.parse_report(tail)
