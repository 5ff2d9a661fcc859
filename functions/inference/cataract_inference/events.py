"""API Gateway events: build them from an image, so anyone can replay their own photo."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

DEFAULT_STAGE = "Prod"


def _request_context(path: str, method: str, stage: str) -> dict[str, Any]:
    return {
        "accountId": "123456789012",
        "apiId": "local",
        "domainName": "localhost",
        "httpMethod": method,
        "identity": {"sourceIp": "127.0.0.1", "userAgent": "cataract-screen"},
        "path": f"/{stage}{path}",
        "protocol": "HTTP/1.1",
        "requestId": str(uuid.uuid4()),
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
        "requestContext": _request_context(path, method, stage),
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
        "rawQueryString": "",
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
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": stage,
            "time": "27/Nov/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def predict_event(
    image: bytes, *, explain: bool = False, http_api: bool = False, raw: bool = False, media_type: str = "image/jpeg"
) -> dict[str, Any]:
    """A ``POST /predict`` event carrying ``image``: JSON with base64 by default, or a raw binary body."""
    encoded = base64.b64encode(image).decode("ascii")
    if raw:
        kwargs: dict[str, Any] = {"body": encoded, "content_type": media_type, "is_base64": True}
    else:
        kwargs = {"body": json.dumps({"image": encoded, "explain": explain}), "content_type": "application/json"}
    if http_api:
        return http_api_event("/predict", "POST", **kwargs)
    return rest_event("/predict", "POST", **kwargs, query={"explain": "true"} if raw and explain else None)


def is_api_gateway_event(event: object) -> bool:
    """True for the REST (v1) and HTTP API (v2) proxy event shapes Mangum understands."""
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        return False
    return "httpMethod" in event or event.get("version") == "2.0"
