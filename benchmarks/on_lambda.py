"""Measure the deployed function on AWS Lambda itself: memory size × ORT threads, cold and warm, with cost.

    .venv/bin/python -m benchmarks.on_lambda --function FUNCTION_NAME [--memory 1769,2048,3538] [--threads 1,2]
        [--invocations 25] [--photo small|phone|PATH] [--region REGION] [--output FILE]

Everything else in `benchmarks/` runs on this machine; Lambda's CPU share (memory ÷ 1769 vCPU) is only emulated
there (`benchmarks/quota.py`). This is the same sweep on the real service, as AWS Lambda Power Tuning does it:
for each configuration it sets the function's `$LATEST` memory size and `ORT_INTRA_OP_THREADS`, invokes once
(the first call after a configuration change is a cold start), then invokes back to back and reads Lambda's own
REPORT line of each call (duration, billed duration, init duration, max memory used).

What it touches: only `$LATEST` (a version or alias given as --function is refused). API Gateway calls the `live`
alias, a published version, so traffic is not affected, unless a deploy runs during the sweep: it would publish a
version from `$LATEST` as the sweep left it. Its invocations publish metrics under the function's namespace +
"Benchmark", not the one the alarms watch. The original memory size and environment are restored at the end, also
after an error or Ctrl-C (ignored while restoring), waiting out an update in progress; a configuration someone else
changed during the sweep is left as they set it, and the message says what the sweep found.
Permissions: lambda:GetFunction, lambda:GetFunctionConfiguration, lambda:UpdateFunctionConfiguration,
lambda:InvokeFunction.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Stats, fmt, photo_for

# us-east-1 list prices (2026), first pricing tier; other regions differ by a few percent.
PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_REQUEST = 0.20 / 1_000_000

# How long an update waits out another one in progress (Lambda answers 409 ResourceConflictException meanwhile),
# and how long a wait for an update to be applied may take (botocore's waiter would poll for 10 minutes).
CONFLICT_WAIT_S = 120.0
WAIT_S, WAIT_DELAY_S = 120.0, 2

THREADS_VARIABLE = "ORT_INTRA_OP_THREADS"
NAMESPACE_VARIABLE = "POWERTOOLS_METRICS_NAMESPACE"

_TEXT_FIELDS = {
    "duration_ms": re.compile(r"\tDuration: ([\d.]+) ms"),
    "billed_ms": re.compile(r"Billed Duration: ([\d.]+) ms"),
    "memory_size_mb": re.compile(r"Memory Size: (\d+) MB"),
    "max_memory_mb": re.compile(r"Max Memory Used: (\d+) MB"),
    "init_ms": re.compile(r"Init Duration: ([\d.]+) ms"),
}
# The same figures when the function logs in JSON (LoggingConfig.LogFormat: JSON): a "platform.report" record.
_JSON_FIELDS = {
    "duration_ms": "durationMs",
    "billed_ms": "billedDurationMs",
    "memory_size_mb": "memorySizeMB",
    "max_memory_mb": "maxMemoryUsedMB",
    "init_ms": "initDurationMs",
}


class SweepError(RuntimeError):
    """The sweep cannot go on (the function is missing, an update failed); the message says what to do."""


class RestoreError(SweepError):
    """The sweep finished, but its configuration could not be put back: the results, and what to do."""

    def __init__(self, message: str, architecture: str, results: list[ConfigResult]) -> None:
        super().__init__(message)
        self.architecture, self.results = architecture, results


@dataclass(frozen=True)
class Report:
    """Lambda's REPORT line of one invocation."""

    duration_ms: float
    billed_ms: float
    memory_size_mb: int
    max_memory_mb: int
    init_ms: float | None = None


def _json_report(line: str) -> Report | None:
    if not line.startswith("{") or '"platform.report"' not in line:
        return None
    metrics = json.loads(line).get("record", {}).get("metrics", {})
    values = {key: metrics.get(name) for key, name in _JSON_FIELDS.items()}
    if None in (values["duration_ms"], values["billed_ms"], values["memory_size_mb"], values["max_memory_mb"]):
        raise ValueError(f"the platform.report record lacks figures: {line[:300]}")
    return Report(
        duration_ms=float(values["duration_ms"]),
        billed_ms=float(values["billed_ms"]),
        memory_size_mb=int(values["memory_size_mb"]),
        max_memory_mb=int(values["max_memory_mb"]),
        init_ms=float(values["init_ms"]) if values["init_ms"] is not None else None,
    )


def _text_report(line: str) -> Report | None:
    if not line.startswith("REPORT RequestId:"):
        return None
    found = {key: pattern.search(line) for key, pattern in _TEXT_FIELDS.items()}
    missing = [k for k in ("duration_ms", "billed_ms", "memory_size_mb", "max_memory_mb") if found[k] is None]
    if missing:
        raise ValueError(f"the REPORT line lacks {missing}: {line[:300]}")
    figures = {key: m.group(1) for key, m in found.items() if m is not None}
    return Report(
        duration_ms=float(figures["duration_ms"]),
        billed_ms=float(figures["billed_ms"]),
        memory_size_mb=int(figures["memory_size_mb"]),
        max_memory_mb=int(figures["max_memory_mb"]),
        init_ms=float(figures["init_ms"]) if "init_ms" in figures else None,
    )


def parse_report(log_tail: str) -> Report:
    """The last REPORT in the tail of an invocation's log, in the text or the JSON log format."""
    for raw in reversed(log_tail.splitlines()):
        line = raw.strip()
        report = _json_report(line) or _text_report(line)
        if report is not None:
            return report
    raise ValueError("no REPORT line in the invocation's log tail")


@dataclass
class ConfigResult:
    """What one memory size and thread count measured."""

    memory_mb: int
    threads: int
    cold: Report | None = None
    warm: list[Report] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def cost_per_million(self, architecture: str) -> float:
        """Dollars per million warm requests at the mean billed duration (compute + request charge): the bill is the
        sum of the calls' durations, so a slow tail counts in full, as the median would not count it."""
        billed = sum(r.billed_ms for r in self.warm) / len(self.warm)
        gb_seconds = billed / 1000.0 * self.memory_mb / 1024.0
        return 1_000_000 * (gb_seconds * PRICE_PER_GB_SECOND[architecture] + PRICE_PER_REQUEST)


def _invoke(client: Any, function: str, payload: bytes, memory_mb: int) -> tuple[Report, str | None]:
    """One synchronous invocation of ``$LATEST``; the REPORT and, if the call failed (or ran on something other than
    the configuration just set), why."""
    try:
        response = client.invoke(FunctionName=function, Payload=payload, LogType="Tail")
    except Exception as exc:  # throttling, a payload over the limit, missing permission: the sweep cannot go on.
        raise SweepError(f"invoking {function} failed: {exc}") from exc
    log_tail = base64.b64decode(response.get("LogResult", "")).decode("utf-8", errors="replace")
    body = response["Payload"].read()
    try:
        report = parse_report(log_tail)
    except ValueError as exc:
        raise SweepError(f"cannot read Lambda's REPORT for {function}: {exc}") from exc
    executed = response.get("ExecutedVersion", "$LATEST")
    if executed != "$LATEST" or report.memory_size_mb != memory_mb:
        return report, f"ran on version {executed} with {report.memory_size_mb} MB, not $LATEST with {memory_mb} MB"
    if response.get("FunctionError"):
        return report, f"function error ({response['FunctionError']}): {body[:300]!r}"
    try:
        status = json.loads(body).get("statusCode")
    except (ValueError, AttributeError):
        return report, f"not an API Gateway response: {body[:300]!r}"
    if status != 200:
        return report, f"HTTP {status}: {body[:300]!r}"
    return report, None


def _error_code(exc: Exception) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return str(code) if code else None


def _wait_for_update(client: Any, function: str) -> None:
    """Until no update of the function is in progress (a deploy's, or the sweep's own): WAIT_S at most. A last
    update that Failed is over too: Lambda takes the next one."""
    from botocore.exceptions import WaiterError

    try:
        client.get_waiter("function_updated_v2").wait(
            FunctionName=function, WaiterConfig={"Delay": WAIT_DELAY_S, "MaxAttempts": int(WAIT_S // WAIT_DELAY_S)}
        )
    except WaiterError as exc:
        last = (exc.last_response or {}).get("Configuration", {})
        if last.get("LastUpdateStatus") != "Failed":
            raise


def _settled(client: Any, function: str) -> dict[str, Any]:
    """The function's configuration once no update of it is in progress."""
    _wait_for_update(client, function)
    configuration: dict[str, Any] = client.get_function_configuration(FunctionName=function)
    return configuration


def _configure(
    client: Any, function: str, memory_mb: int, variables: dict[str, str], revision: str | None = None
) -> None:
    """Set ``$LATEST``'s memory and environment and wait until Lambda has applied them. An update already in progress
    is waited out; ``revision``: only if the function is still at that RevisionId (Lambda refuses otherwise)."""
    extra = {"RevisionId": revision} if revision else {}
    deadline, delay = time.monotonic() + CONFLICT_WAIT_S, 2.0
    try:
        while True:
            try:
                client.update_function_configuration(
                    FunctionName=function, MemorySize=memory_mb, Environment={"Variables": variables}, **extra
                )
                break
            except Exception as exc:
                if _error_code(exc) != "ResourceConflictException" or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 20.0)
        _wait_for_update(client, function)
    except Exception as exc:  # botocore's ClientError and WaiterError: both end the sweep with their message.
        raise SweepError(
            f"could not set {function} to {memory_mb} MB, {variables.get(THREADS_VARIABLE)} thread(s): {exc}"
        ) from exc


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C ignored: a second one during the restore would leave the benchmark's configuration on the function."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        # None: a handler installed outside Python, which signal.signal cannot put back.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _restore(
    client: Any, function: str, original: tuple[int, dict[str, str]], ours: list[tuple[int, dict[str, str]]]
) -> None:
    """Put the original memory and environment back, unless the function is already so, or someone else changed it
    during the sweep (a deploy, a colleague): their change is kept, and the error says what the sweep found."""
    memory, variables = original
    by_hand = f"MemorySize {memory}, environment {variables}"
    try:
        current = _settled(client, function)
    except Exception as exc:
        raise SweepError(
            f"cannot read {function}'s configuration to restore it: {exc}. Restore it by hand: {by_hand}"
        ) from exc
    found = (int(current["MemorySize"]), dict(current.get("Environment", {}).get("Variables", {})))
    if found == original:
        return  # nothing of ours was applied
    if found not in ours:
        raise SweepError(
            f"{function} was changed during the sweep by someone else ({found[0]} MB, environment {found[1]}); "
            f"left as it is. Before the sweep it had {by_hand}"
        )
    try:
        _configure(client, function, memory, variables, revision=current.get("RevisionId"))
    except SweepError as exc:
        raise SweepError(f"{exc}. Restore it by hand: {by_hand}") from exc


def sweep(
    client: Any,
    function: str,
    memories: Sequence[int],
    threads: Sequence[int],
    payload: bytes,
    *,
    invocations: int,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[str, list[ConfigResult]]:
    """Measure each memory size × thread count on ``$LATEST``; restore its configuration afterwards.

    Returns the function's architecture and one result per configuration, in the order measured.
    """
    try:
        original = _settled(client, function)
    except Exception as exc:
        raise SweepError(f"cannot read the configuration of {function!r}: {exc}") from exc
    architecture = (original.get("Architectures") or ["x86_64"])[0]
    original_memory = int(original["MemorySize"])
    original_variables = dict(original.get("Environment", {}).get("Variables", {}))
    namespace = original_variables.get(NAMESPACE_VARIABLE, "CataractScreening")
    results: list[ConfigResult] = []
    ours: list[tuple[int, dict[str, str]]] = []  # every configuration the sweep asked for, applied or not

    def restored() -> str | None:
        """Put the original back, Ctrl-C ignored meanwhile; what went wrong, or None."""
        with _uninterrupted():
            progress(f"restoring {original_memory} MB and the original environment")
            try:
                _restore(client, function, (original_memory, original_variables), ours)
            except SweepError as exc:
                return str(exc)
        return None

    try:
        for memory_mb in memories:
            for count in threads:
                progress(f"{memory_mb} MB, {count} thread(s): configuring")
                variables = {
                    **original_variables,
                    THREADS_VARIABLE: str(count),
                    NAMESPACE_VARIABLE: f"{namespace}Benchmark",
                }
                ours.append((memory_mb, variables))
                _configure(client, function, memory_mb, variables)
                result = ConfigResult(memory_mb, count)
                # A configuration change retires every execution environment: the first call is a cold start.
                report, error = _invoke(client, function, payload, memory_mb)
                if error:  # an init failure, or a call that ran elsewhere: no cold start of this configuration
                    result.errors.append(error)
                else:
                    result.cold = report
                for _ in range(invocations):
                    report, error = _invoke(client, function, payload, memory_mb)
                    if error:  # counted, and kept out of the latency and the cost: an error answer is no screening
                        result.errors.append(error)
                    else:
                        result.warm.append(report)
                progress(
                    f"{memory_mb} MB, {count} thread(s): {len(result.warm)} warm calls, {len(result.errors)} errors"
                )
                results.append(result)
    except BaseException as exc:
        problem = restored()
        if problem:  # both: what stopped the sweep, and what the restore found
            stopped = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc)
            raise SweepError(f"{stopped}. Then the restore: {problem}") from exc
        raise
    problem = restored()
    if problem:
        raise RestoreError(problem, architecture, results)
    return architecture, results


def table(architecture: str, results: Sequence[ConfigResult]) -> str:
    """Markdown: cold start, warm duration and cost per configuration, ratios against the first one."""
    lines = [
        "| memory MB | ORT threads | cold: init ms | cold: duration ms | warm n (answered) | warm p50 ms | p95 ms "
        "| min–max ms "
        "| p50 ÷ first row | max memory used MB | errors | $ per 1M requests |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = Stats.of([r.duration_ms for r in results[0].warm]).p50 if results else float("nan")
    for result in results:
        s = Stats.of([r.duration_ms for r in result.warm])
        cold = result.cold
        init = fmt(cold.init_ms) if cold and cold.init_ms is not None else "n/a"
        cold_duration = fmt(cold.duration_ms) if cold else "n/a"
        peak = max((r.max_memory_mb for r in [*result.warm, *([cold] if cold else [])]), default=0)
        cost = fmt(result.cost_per_million(architecture)) if result.warm else "n/a"
        lines.append(
            f"| {result.memory_mb} | {result.threads} | {init} | {cold_duration} | {s.n} | {fmt(s.p50)} | {fmt(s.p95)} "
            f"| {fmt(s.lo)}–{fmt(s.hi)} | {fmt(s.p50 / base)}× | {peak} | {len(result.errors)} | {cost} |"
        )
    return "\n".join(lines)


def _report(args: argparse.Namespace, payload: bytes, architecture: str, results: list[ConfigResult]) -> str:
    return (
        f"_{args.function} ({architecture}), {args.invocations} warm invocations per configuration, photo: "
        f"{args.photo} ({len(payload) // 1024} KB event). Durations are Lambda's REPORT figures._\n\n"
        + table(architecture, results)
    )


def _qualified(function: str) -> bool:
    """True when ``function`` carries a version or alias: name:qualifier, or a (partial) ARN ending in one."""
    parts = function.split(":")
    if parts[0] == "arn":
        return len(parts) >= 8
    return len(parts) in (2, 4)


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def main(argv: list[str] | None = None, client: Any | None = None) -> int:
    """Run the sweep against a deployed function and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", required=True, help="function name or ARN (the stack's FunctionName output)")
    parser.add_argument("--memory", type=_ints, default=[1769, 2048, 3538], help="memory sizes in MB, comma-separated")
    parser.add_argument("--threads", type=_ints, default=[1, 2], help="ORT_INTRA_OP_THREADS values, comma-separated")
    parser.add_argument("--invocations", type=int, default=25, help="warm invocations per configuration")
    parser.add_argument("--photo", default="small", help="small, phone, or the path of a photo of your own")
    parser.add_argument("--region", help="AWS region (default: your profile's)")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.invocations < 1:
        parser.error("--invocations must be at least 1")
    if _qualified(args.function):
        parser.error(
            f"--function {args.function} names a version or alias: give the function's name (the stack's "
            "FunctionName output); the sweep sets and measures $LATEST, never what the live alias serves"
        )

    from cataract_inference.events import predict_event

    payload = json.dumps(predict_event(photo_for(args.photo))).encode()
    if len(payload) > 6 * 1024 * 1024:
        parser.error(f"the event is {len(payload) / 1e6:.1f} MB; Lambda takes at most 6 MB synchronously")
    if client is None:
        import boto3

        client = boto3.client("lambda", region_name=args.region)
    try:
        architecture, results = sweep(
            client,
            args.function,
            args.memory,
            args.threads,
            payload,
            invocations=args.invocations,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except RestoreError as exc:  # the results stand; the function's configuration needs a look
        print(_report(args, payload, exc.architecture, exc.results))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.function} is configured as it was before the sweep", file=sys.stderr)
        return 130
    text = _report(args, payload, architecture, results)
    print(text)
    for result in results:
        for error in result.errors[:3]:
            print(f"{result.memory_mb} MB, {result.threads} thread(s): {error}", file=sys.stderr)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
