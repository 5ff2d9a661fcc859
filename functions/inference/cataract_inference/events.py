"""API Gateway events: build them from an image, so anyone can replay their own photo."""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from typing import Any

DEFAULT_STAGE = "Prod"


def _request_context(path: str, method: str, stage: str, request_id: str | None) -> dict[str, Any]:
    return {
        "accountId": "123456789012",
        "apiId": "local",
        "domainName": "localhost",
        "httpMethod": method,
        "identity": {"sourceIp": "127.0.0.1", "userAgent": "cataract-screen"},
        "path": f"/{stage}{path}",
        "protocol": "HTTP/1.1",
        "requestId": request_id or str(uuid.uuid4()),
        "requestTimeEpoch": 0,
        "resourcePath": path,
        "stage": stage,
    }


def rest_event(
    path: str,
    method: str = "GET",
    *,
    body: str | None = None,
    content_type: str | None = None,
    is_base64: bool = False,
    stage: str = DEFAULT_STAGE,
    query: dict[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A REST API (v1) proxy event, as API Gateway sends it to the function."""
    headers = {"Host": "localhost", "Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": _request_context(path, method, stage, request_id),
        "body": body,
        "isBase64Encoded": is_base64,
    }


def http_api_event(
    path: str,
    method: str = "GET",
    *,
    body: str | None = None,
    content_type: str | None = None,
    is_base64: bool = False,
    stage: str = "$default",
    request_id: str | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An HTTP API (v2) event."""
    raw_path = path if stage == "$default" else f"/{stage}{path}"
    headers = {"host": "localhost", "accept": "application/json"}
    if content_type:
        headers["content-type"] = content_type
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": raw_path,
        "rawQueryString": urllib.parse.urlencode(query or {}),
        **({"queryStringParameters": dict(query)} if query else {}),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "cataract-screen",
            },
            "requestId": request_id or str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": stage,
            "time": "27/Nov/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def predict_event(
    image: bytes,
    *,
    explain: bool = False,
    http_api: bool = False,
    raw: bool = False,
    media_type: str = "image/jpeg",
    request_id: str | None = None,
) -> dict[str, Any]:
    """A ``POST /predict`` event carrying ``image``: JSON with base64 by default, or a raw binary body."""
    encoded = base64.b64encode(image).decode("ascii")
    kwargs: dict[str, Any] = {"request_id": request_id}
    if raw:
        kwargs.update(body=encoded, content_type=media_type, is_base64=True)
    else:
        kwargs.update(body=json.dumps({"image": encoded, "explain": explain}), content_type="application/json")
    # A raw body has no JSON to carry explain: it travels in the query, as a client would send it.
    query = {"explain": "true"} if raw and explain else None
    if http_api:
        return http_api_event("/predict", "POST", **kwargs, query=query)
    return rest_event("/predict", "POST", **kwargs, query=query)


def event_problem(event: object) -> str | None:
    """What keeps ``event`` from being a REST (v1) or HTTP API (v2) proxy event Mangum can run, or None."""
    if not isinstance(event, dict):
        return f"it is a JSON {type(event).__name__}, not an object"
    context = event.get("requestContext")
    if not isinstance(context, dict):
        return "it has no requestContext object"
    if event.get("version") == "2.0":
        http = context.get("http")
        if not isinstance(http, dict) or not all(isinstance(http.get(k), str) for k in ("method", "path")):
            return "requestContext.http needs method and path strings"
        if not isinstance(event.get("rawPath"), str):
            return "rawPath must be a string"
        if "rawQueryString" in event and not isinstance(event["rawQueryString"], str):  # Mangum encodes it
            return "rawQueryString must be a string"
        if not isinstance(http.get("sourceIp"), str):
            return "requestContext.http needs a sourceIp string"
        if "headers" in event and not isinstance(event["headers"], dict):
            return "headers must be an object"
        cookies = event.get("cookies")
        if cookies is not None and not (isinstance(cookies, list) and all(isinstance(c, str) for c in cookies)):
            return "cookies must be a list of strings"
    else:
        if not isinstance(event.get("httpMethod"), str):
            return "httpMethod must be a string (or version 2.0, for an HTTP API event)"
        if not isinstance(event.get("path"), str):
            return "path must be a string"
        # Mangum tells a REST event by its resource, and reads the caller's address from identity.
        if not isinstance(event.get("resource"), str):
            return "resource must be a string (the API resource, such as /predict)"
        if "identity" in context and not isinstance(context["identity"], dict):
            return "requestContext.identity must be an object"
    for name in ("headers", "queryStringParameters", "multiValueHeaders", "multiValueQueryStringParameters"):
        values = event.get(name)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"{name} must be an object or null"
        # Mangum encodes each one: anything else fails inside it, as a traceback rather than this message.
        if name.startswith("multiValue"):
            if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in values.values()):
                return f"{name} must map each name to a list of strings"
        elif not all(isinstance(v, str) for v in values.values()):
            return f"{name} must map each name to a string"
    if event.get("body") is not None and not isinstance(event["body"], str):
        return "body must be a string or null (JSON goes in as text)"
    rid = context.get("requestId")
    # API Gateway's ids are ASCII; the response sends it back in a header, which cannot carry anything else.
    if rid is not None and not (isinstance(rid, str) and rid.isascii() and rid.isprintable()):
        return "requestContext.requestId must be a string of printable ASCII, as API Gateway's are"
    return None
