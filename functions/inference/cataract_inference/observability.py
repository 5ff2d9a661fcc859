"""Logger, metrics and tracer: built once, here, and imported everywhere else.

Powertools reads its own environment variables (log level, tracing on or off, ...); the service name and the
metrics namespace are read here, through settings (a blank one is refused), with defaults for a laptop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sysconfig
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aws_lambda_powertools
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

from .settings import ConfigError, powertools_name

# Besides its POWERTOOLS_* variables, Powertools reads these for the log level.
POWERTOOLS_ALSO_READS = ("LOG_LEVEL", "AWS_LAMBDA_LOG_LEVEL")


def _raised_by_powertools(exc: BaseException) -> bool:
    """Whether the innermost frame outside the standard library (which Powertools calls, as logging for a level) is
    Powertools' own."""
    powertools = Path(aws_lambda_powertools.__file__).resolve().parent
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    frames = [Path(f.filename).resolve() for f in traceback.extract_tb(exc.__traceback__) if f.filename[:1] != "<"]
    # Without a venv, site-packages lies inside the standard library's folder: it is not the standard library.
    outside = [f for f in frames if not f.is_relative_to(stdlib) or "site-packages" in f.parts]
    return bool(outside) and outside[-1].is_relative_to(powertools)


@contextlib.contextmanager
def powertools_settings_read() -> Iterator[None]:
    """Around what makes Powertools read its variables: building the logger, metrics and tracer, and decorating the
    handler. It refuses a malformed one with an error that names no variable (``invalid truth value 'maybe'``);
    that becomes a ConfigError naming the variables set, on Lambda (an init error) as in the local runner."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ConfigError) or not _raised_by_powertools(exc):
            raise
        read = ", ".join(
            f"{k}={v!r}"
            for k, v in sorted(os.environ.items())
            if k.startswith("POWERTOOLS_") or k in POWERTOOLS_ALSO_READS
        )
        raise ConfigError(
            f"a Powertools setting was refused: {exc}. Powertools reads the POWERTOOLS_* variables, "
            f"{' and '.join(POWERTOOLS_ALSO_READS)} (set now: {read or 'none'}); a switch such as "
            "POWERTOOLS_METRICS_DISABLED takes true or false, a log level a name such as INFO or WARNING: fix or "
            "unset the one holding that value"
        ) from exc


SERVICE = powertools_name(os.environ, "POWERTOOLS_SERVICE_NAME", "cataract-screening")
NAMESPACE = powertools_name(os.environ, "POWERTOOLS_METRICS_NAMESPACE", "CataractScreening")

with powertools_settings_read():
    logger = Logger(service=SERVICE)
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    # single_metric prints even with metrics disabled (the local runner disables them).
    CAPTURE_COLD_START_METRIC = not is_metrics_disabled()
_cold: dict[str, bool] = {"pending": True}  # emptied by the first invocation


def _function_name(context: Any) -> str:
    return str(getattr(context, "function_name", None) or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "unknown")


def note_cold_start(context: Any) -> None:
    """Write the ColdStart metric on this environment's first invocation, whatever that invocation does next.

    Powertools' own capture counts it only when the handler returns, so a first invocation that raised (a
    console test event) moved it to the next, warm one.
    """
    # Not for provisioned concurrency, as Powertools counts it: that instance was started before any request
    # waited for it (and the same request's log line says cold_start false).
    provisioned = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "provisioned-concurrency"
    if _cold.pop("pending", False) and CAPTURE_COLD_START_METRIC and not provisioned:
        # The blob Powertools writes: its own line, dimensions function_name and service.
        with single_metric(name="ColdStart", unit=MetricUnit.Count, value=1, namespace=NAMESPACE) as metric:
            metric.add_dimension(name="function_name", value=_function_name(context))
            metric.add_dimension(name="service", value=SERVICE)


# A request that records no metric (/health, /model: every uptime probe) is normal, not worth a log line each.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


class _NoTraceSegment(BaseSegment):
    """A segment that records nothing."""

    def close(self, end_time: int | None = None) -> None:
        return None

    def add_subsegment(self, subsegment: Any) -> None:
        return None

    def remove_subsegment(self, subsegment: Any) -> None:
        return None

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        return None


class _NoTraceProvider(BaseProvider):
    """The tracer's provider when tracing is off. Powertools' default provider is the X-Ray SDK's recorder,
    whose import builds two botocore clients (~0.4-0.7 s of cold start) even when tracing is disabled."""

    @contextlib.contextmanager
    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Iterator[BaseSegment]:
        yield _NoTraceSegment()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> AsyncIterator[BaseSegment]:
        yield _NoTraceSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def patch(self, modules: Sequence[str]) -> None:
        return None

    def patch_all(self) -> None:
        return None


def tracing_disabled(env: Any = None) -> bool:
    """Powertools' own rule: off when POWERTOOLS_TRACE_DISABLED is true, outside Lambda, or under sam local."""
    env = os.environ if env is None else env
    if env.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on", "y", "t"):
        return True
    return not env.get("LAMBDA_TASK_ROOT") or bool(env.get("AWS_SAM_LOCAL") or env.get("AWS_CHALICE_CLI_MODE"))


# With tracing on (Lambda, Tracing: Active) the X-Ray SDK is loaded; with it off, nothing is. auto_patch is
# off: it patches botocore, requests and others for subsegments, but a request makes no such call (the only
# AWS call, the S3 model download, runs at init, outside any segment), and the patching cost ~120 ms of
# every traced cold start.
with powertools_settings_read():
    tracer = (
        Tracer(service=SERVICE, disabled=True, provider=_NoTraceProvider())
        if tracing_disabled()
        else Tracer(service=SERVICE, auto_patch=False)
    )

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def instrumented(handler: Handler) -> Handler:
    """The Lambda handler with Powertools around it: the invocation's context and API Gateway's request id in every log
    line, a trace segment, and the metrics flushed at the end. Decorating reads more Powertools variables (whether
    to trace errors), so it is done under the same check."""
    with powertools_settings_read():
        traced = tracer.capture_lambda_handler(capture_response=False)(metrics.log_metrics(handler))
        return logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)(
            traced
        )


def _count(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    # Disabled, metrics are not even collected: under `serve` nothing flushes them, and Powertools prints a
    # full set of 100 values whether or not metrics are disabled. Read per call, as Powertools reads it.
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=unit, value=value)


def record_screening(latency_ms: float) -> None:
    """EMF metric for one screened photo: its latency, and nothing of its result.

    EMF metrics are log lines, written in the invocation's own log stream beside its request id; a count
    per label there would put each client's result in the logs.
    """
    _count("PredictLatency", latency_ms, MetricUnit.Milliseconds)


def record_client_error(code: str) -> None:
    """Count a refused request by error code, so a spike of bad input shows in CloudWatch."""
    _count(f"ClientError_{code}")


def record_server_error() -> None:
    """Count an answer of 500: the invocation itself succeeds, so Lambda's Errors metric never sees it."""
    _count("ServerError")


def annotate_server_error(exc: BaseException) -> None:
    """Mark the trace of an answered 500 with the error's type (not its message, which could quote the request):
    Mangum answers it, so X-Ray would otherwise show a successful invocation."""
    tracer.put_annotation(key="error_type", value=type(exc).__name__)
    # And a fault, as X-Ray marks an exception that escapes: the service map and `fault = true` filters see it.
    # Only the X-Ray recorder has current_subsegment (tracing on); a trace that cannot be marked is no reason to fail.
    current = getattr(tracer.provider, "current_subsegment", None)
    if callable(current):
        with contextlib.suppress(Exception):
            entity = current()
            if entity is not None:
                entity.add_fault_flag()


def stack_summary(exc: BaseException, frames: int = 12) -> list[str]:
    """``file:line in function`` for the innermost frames of ``exc``: where it failed, without its message,
    which could quote request data."""
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)[-frames:]]


class _NoExceptionText(logging.Filter):
    """Mangum logs the exception Starlette re-raises after our 500 handler has answered and logged it: keep
    its one line, drop the traceback, whose message could quote the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


class _NoAsgiExceptionText(logging.Filter):
    """Under ``serve``, uvicorn logs the same re-raised exception with its traceback: keep the line only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Exception in ASGI application"):
            record.exc_info, record.exc_text = None, None
        return True


def _mangum_logs_as_ours() -> None:
    """Mangum's one error line goes out through our handler, as JSON with the request's keys: the runtime's root
    handler wrote it as plain text, which a query on JSON fields misses. Its per-request INFO lines (paths) stay off."""
    mangum = logging.getLogger("mangum.http")
    mangum.addFilter(_NoExceptionText())
    mangum.setLevel(logging.WARNING)
    mangum.handlers = [logger.registered_handler]
    mangum.propagate = False


_mangum_logs_as_ours()
logging.getLogger("uvicorn.error").addFilter(_NoAsgiExceptionText())


def uvicorn_logs_as_ours() -> None:
    """Under ``serve``, uvicorn's own lines (it started, a request that is not HTTP, an app error) go out through our
    handler as JSON, as every other line does: uvicorn's plain text sat between them. Call it after uvicorn's
    Config, which sets its logging up; ``uvicorn.error`` passes its lines up to ``uvicorn``."""
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.handlers = [logger.registered_handler]
    uvicorn.propagate = False
    for name in ("uvicorn", "uvicorn.error"):  # a logger's filters see only the lines logged on it
        logging.getLogger(name).addFilter(_NoColourCopy())


class _NoColourCopy(logging.Filter):
    """uvicorn passes each message again with terminal colour codes, which JSON would carry as a field."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True
