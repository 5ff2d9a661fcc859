"""Logger, metrics and tracer: built once, here, and imported everywhere else.

Powertools reads its own environment variables (service name, namespace, log level, tracing on
or off); the defaults below apply when they are unset, e.g. on a laptop.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "cataract-screening")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "CataractScreening")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# Tracer disables itself outside Lambda (and under `sam local`), so local runs send nothing to X-Ray.
tracer = Tracer(service=SERVICE)


def record_prediction(label: str, latency_ms: float, gradable: bool) -> None:
    """EMF metrics for one screened photo: latency, and a count per label."""
    metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
    if not gradable:
        metrics.add_metric(name="Ungradable", unit=MetricUnit.Count, value=1)
    # One metric name per label: single_metric would print even when metrics are disabled.
    metrics.add_metric(name=f"Prediction_{label}", unit=MetricUnit.Count, value=1)


def record_client_error(code: str) -> None:
    """Count a refused request by error code, so a spike of bad input shows on a dashboard."""
    metrics.add_metric(name=f"ClientError_{code}", unit=MetricUnit.Count, value=1)
