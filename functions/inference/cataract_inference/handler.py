"""Lambda entry point: the model loads once, at init; each event goes through Mangum to the app.

A model that is missing, corrupt or fails its checksum raises here, at import, so Lambda reports
an init error and the function never serves.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from mangum import Mangum

from .api import create_app, error_content, note_refusal, percent_decodes, request_id_of
from .classifier import Classifier
from .events import event_problem
from .observability import instrumented, logger, note_cold_start
from .settings import get_settings

settings = get_settings()
classifier = Classifier.from_settings(settings)
# Every later line names the model, so logs can be filtered by version across a rollout or a rollback.
logger.append_keys(model_version=classifier.manifest.version)
logger.info("model loaded", extra={"model": classifier.model_info, "source": classifier.artifact.source})
app = create_app(classifier, settings)
# lifespan off: Mangum would otherwise run startup and shutdown on every invocation.
asgi_handler = Mangum(app, lifespan="off")


@instrumented
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Serve one API Gateway event (REST v1 or HTTP API v2)."""
    note_cold_start(context)
    problem = event_problem(event)
    if problem:
        # Not an HTTP client's mistake but a wrong integration: fail the invocation loudly.
        raise TypeError(f"this function expects an API Gateway proxy event (REST v1 or HTTP API v2): {problem}")
    if not _percent_decodes(event):
        # Mangum decodes %ff to U+FFFD and routing goes on (a 404); `serve` refuses the same bytes. One answer.
        return _refusal(
            event, context, "invalid_encoding", "the path or query string is not valid UTF-8 once percent-decoded"
        )
    try:
        # Mangum types the context as its own protocol; Powertools' class is the same runtime object.
        return asgi_handler(_with_usable_ports(_encodable(event)), context)  # type: ignore[arg-type]
    except UnicodeEncodeError:
        # Mangum encodes the path, headers and query to bytes; a lone surrogate there would escape as an
        # invocation error (a 502 at the gateway), as an undecodable body would (below).
        if _encodes(event):
            raise
        return _refusal(event, context, "invalid_encoding", "the path, a header or the query string is not valid UTF-8")
    except (binascii.Error, ValueError):
        # Mangum base64-decodes a flagged body before the app runs; a body that is not base64 would
        # escape as an invocation error (a 502 at the gateway). It is the client's bad request.
        if not _undecodable_body(event):
            raise
        return _refusal(
            event, context, "invalid_base64", "the request body is flagged as base64 but is not valid base64"
        )


def _percent_decodes(event: dict[str, Any]) -> bool:
    """Whether the event's path (REST ``path``, HTTP API ``rawPath``) and raw query string are UTF-8 once
    percent-decoded, as URLs must be."""
    values = (event.get(field) for field in ("path", "rawPath", "rawQueryString"))
    # Only a value with a % escape: a lone surrogate alone is refused where Mangum trips on it (below).
    return all(percent_decodes(value) for value in values if isinstance(value, str) and "%" in value)


def _encodes(event: dict[str, Any]) -> bool:
    """True when every string in the event encodes to UTF-8 (no lone surrogates)."""
    try:
        json.dumps(event, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _undecodable_body(event: dict[str, Any]) -> bool:
    """True when the event says its body is base64 and it is not (decoded as Mangum decodes it)."""
    body = event.get("body")
    if not event.get("isBase64Encoded") or not isinstance(body, str | bytes):
        return False
    try:
        base64.b64decode(body)
    except (binascii.Error, ValueError):
        return True
    return False


def _refusal(event: dict[str, Any], context: LambdaContext, code: str, message: str) -> dict[str, Any]:
    """The API's 400 error, built here because the request never reached the app."""
    # As the app picks it (API Gateway's, else the invocation's), but never from headers that may be the problem.
    request_id = request_id_of({"aws.event": event, "aws.context": context, "headers": []})
    note_refusal(400, code, request_id)
    body, headers = error_content(code, message, request_id, settings.disclaimer)
    return {
        "statusCode": 400,
        # Lower-case, as Mangum writes the app's own answers.
        "headers": {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _encodable(event: dict[str, Any]) -> dict[str, Any]:
    """A text body with lone surrogates cannot be encoded by Mangum; pass its bytes on as binary instead,
    so the app answers 400 for the invalid UTF-8 rather than the adapter crashing."""
    body = event.get("body")
    # isascii() is O(1) on CPython's compact strings; encoding a phone photo's body to check it took 0.15 ms.
    if isinstance(body, str) and not body.isascii() and not event.get("isBase64Encoded"):
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raw = body.encode("utf-8", "surrogatepass")
            return {**event, "body": base64.b64encode(raw).decode("ascii"), "isBase64Encoded": True}
    return event


# Headers Mangum reads a port from, with int(), for the ASGI scope's "server" (which the app never reads).
_PORT_HEADERS = frozenset({"host", "x-forwarded-port"})


def _is_port(text: str) -> bool:
    # At most 5 digits: int() refuses over 4300 of them too (a ValueError, the same crash).
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


def _usable_port(name: str, value: str) -> bool:
    if name == "x-forwarded-port":
        return _is_port(value)
    if ":" not in value:
        return True
    host, port = value.rsplit(":", 1)
    return ":" not in host and _is_port(port)


def _with_usable_ports(event: dict[str, Any]) -> dict[str, Any]:
    """The event without a Host port or ``X-Forwarded-Port`` that is not one port number.

    Mangum parses them with ``int()``: a client's ``X-Forwarded-Port: 443,80`` (or a repeated header, which the
    gateway joins) crashed the invocation, a 502 for a request to any path, ``GET /health`` included.
    """
    changes: dict[str, Any] = {}
    for field, joined in (("headers", lambda v: v), ("multiValueHeaders", ", ".join)):
        headers = event.get(field)
        if not isinstance(headers, dict):
            continue
        bad = [k for k, v in headers.items() if k.lower() in _PORT_HEADERS and not _usable_port(k.lower(), joined(v))]
        if bad:
            changes[field] = {k: v for k, v in headers.items() if k not in bad}
    return {**event, **changes} if changes else event
