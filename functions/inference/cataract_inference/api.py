"""The FastAPI app: routes and error handlers, nothing else. The work happens in ``classifier``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
import orjson
import pybase64
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import docs_pages, page
from .classifier import Classifier
from .imaging import ImageError
from .lean_fastapi import FastAPI, HTMLResponse, JSONResponse, Request, RequestValidationError
from .observability import (
    annotate_server_error,
    logger,
    record_client_error,
    record_screening,
    record_server_error,
    stack_summary,
)
from .schemas import (
    SAFETY_HEADERS,
    SAFETY_HEADERS_RAW,
    ErrorResponse,
    HealthResponse,
    ModelDescription,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    QualityOut,
)
from .settings import Settings

# The raw-body types, the subtype spelt as RFC 9110's token: "image/" alone, or "image/png, text/plain", is none.
RAW_IMAGE_TYPE = re.compile(r"image/[a-z0-9!#$%&'*+.^_`|~-]+|application/octet-stream")
NOT_FOUND_MESSAGE = (
    "no such route: the API answers POST /predict, GET /health, GET /model and GET /openapi.json, with no trailing "
    "slash (and serves its web page at GET /)"
)
# RFC 2397: the media type may be left out, and a parameter's value may be a quoted string.
_DATA_URL = re.compile(r'^data:([\w.+-]+/[\w.+-]+)?(;[\w.+-]+=([\w.+-]+|"[^"\\]*"))*;base64,', re.IGNORECASE)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The routes template.yaml puts behind the API key (unless ApiKeyRequired=false).
KEYED_PATHS = frozenset({"/predict", "/model"})
BODY_DEADLINE_S = 60.0  # the whole body, from its first byte; 6 MB at 100 kB/s
# `serve` screens this many photos at once, the rest wait their turn: each may decode to hundreds of MB.
SERVE_CONCURRENT_PREDICTIONS = max(2, os.cpu_count() or 1)
# Path segments, none of them "." or "..": a stage's characters, and those API Gateway allows in a custom domain's
# base path (letters, digits and $-_.+!*'()), none of which a browser changes in a URL's path.
_PREFIX_OK = re.compile(r"(/(?!\.\.?(?:/|$))[A-Za-z0-9._~$+!*'()-]+)+")
# A route's path parameter ({name}, or greedy {name+}), as REST resources and HTTP API route keys write it.
_ROUTE_PARAMETER = re.compile(r"\{([^{}+]+)\+?\}")
# API Gateway's own host names: only there is an HTTP API's stage in the path (a custom domain maps it away).
_GATEWAY_HOST = re.compile(r"(?i)^[a-z0-9]+\.execute-api\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


class ClientError(Exception):
    """A request we refuse, with the status and code clients see."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_content(
    code: str, message: str, request_id: str | None, disclaimer: str, extra: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and the headers of every error answer (the app's, and the handler's own 400)."""
    body = ErrorResponse.model_validate(
        {"error": {"code": code, "message": message}, "request_id": request_id, "disclaimer": disclaimer}
    )
    headers = {**(extra or {}), "Cache-Control": "no-store", **SAFETY_HEADERS}
    if request_id:
        headers["X-Request-Id"] = request_id
    return body.model_dump(exclude_none=True), headers


# When the app took the request (per task, so concurrent requests under `serve` keep their own): refusals and
# failures log how long they took, as "screened" does.
_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_started", default=None)


def elapsed_ms() -> dict[str, float]:
    """``{"latency_ms": ...}`` since the app took this request, or nothing for a refusal made before the app."""
    started = _STARTED.get()
    return {} if started is None else {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def note_refusal(status: int, code: str, request_id: str | None = None) -> None:
    """Every refusal is logged and counted by its code (a fixed set), never by what the client sent.

    ``request_id`` is for refusals made before the app, whose middleware otherwise adds it to the log.
    """
    record_client_error(code)
    extra: dict[str, object] = {"status": status, "code": code, **elapsed_ms()}
    if request_id:
        extra["request_id"] = request_id
    logger.info("request refused", extra=extra)


def _error(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    disclaimer: str,
    *,
    extra: dict[str, str] | None = None,
) -> JSONResponse:
    body, headers = error_content(code, message, request_id, disclaimer, extra)
    return JSONResponse(body, status_code=status, headers=headers)


def request_id_of(scope: Scope) -> str:
    """API Gateway's request id when there is one, so logs, responses and X-Ray agree."""
    event = scope.get("aws.event") or {}
    rid = (event.get("requestContext") or {}).get("requestId")
    if isinstance(rid, str) and rid:
        return rid
    context = scope.get("aws.context")
    rid = getattr(context, "aws_request_id", None)
    if isinstance(rid, str) and rid:
        return rid
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID_OK.match(candidate):
                return candidate
    return str(uuid.uuid4())


def stage_prefix(scope: Scope) -> tuple[str, bool]:
    """The path prefix API Gateway adds in front of the app's routes (``/Prod``, or a custom domain's base
    path such as ``/screening``), or ``""``; and whether the path the app was handed still carries it.

    A REST stage is not in ``event["path"]`` (Mangum's path); an HTTP API stage and a base path are.
    """
    event = scope.get("aws.event") or {}
    context = event.get("requestContext") or {}
    parameters = event.get("pathParameters")
    if event.get("version") == "2.0":
        raw = (context.get("http") or {}).get("path") or ""
        route_key = event.get("routeKey")
        template = route_key.partition(" ")[2] if isinstance(route_key, str) else None  # "$default": none
        prefix = _base_path(raw, _filled_route(template, parameters))
        if prefix is None:
            # The catch-all route says nothing of where the app's path begins: only a stage in API Gateway's own
            # host name is known to be there (a custom domain's mapping key is unknown, and a stage named like a
            # route, "health", is not in the path through it).
            stage = context.get("stage") or "$default"
            domain = context.get("domainName")
            # (`sam local start-api`, whose host is localhost, never puts the stage in the path either.)
            on_gateway = isinstance(domain, str) and bool(_GATEWAY_HOST.match(domain))
            at_stage = raw == f"/{stage}" or raw.startswith(f"/{stage}/")
            prefix = f"/{stage}" if stage != "$default" and on_gateway and at_stage else ""
        return (prefix, True) if prefix and _PREFIX_OK.fullmatch(prefix) else ("", False)
    outer, inner = context.get("path"), event.get("path")
    if not isinstance(inner, str):
        return "", False
    # The stage's root without its final slash ("/Prod") comes with the path "/", which "/Prod" does not end with.
    if isinstance(outer, str) and outer != inner and (inner == "/" or outer.endswith(inner)):
        prefix = outer[: len(outer) - len(inner)].rstrip("/") if inner != "/" else outer.rstrip("/")
        carried = False
    else:
        prefix, carried = _base_path(inner, _filled_route(event.get("resource"), parameters)) or "", True
    # The page fetches root + "/predict": "//host" would send the photo elsewhere. Stages and base paths
    # are plain path segments.
    return (prefix, carried) if _PREFIX_OK.fullmatch(prefix) else ("", False)


def _filled_route(template: object, parameters: object) -> str | None:
    """The path a route matched: its template (a REST ``resource``, an HTTP API route key's path) with each path
    parameter's value in its place (``/{proxy+}`` and ``{"proxy": "health"}`` give ``/health``); None when the
    event does not say (no template, or a parameter without its value)."""
    if not isinstance(template, str) or not template.startswith("/"):
        return None
    values = parameters if isinstance(parameters, dict) else {}
    missing = [name for name in _ROUTE_PARAMETER.findall(template) if not isinstance(values.get(name), str)]
    if missing:
        return None
    return _ROUTE_PARAMETER.sub(lambda m: values[m[1]], template)


def _base_path(path: str, route: str | None) -> str | None:
    """What comes before the ``route`` an event matched in its ``path``: a custom domain's base path (or an HTTP
    API's stage), ``""`` for none; None when the route is unknown or the path does not end in it.

    Through a custom domain whose API mapping has a base path, API Gateway keeps that base path in the path (a
    REST event's ``path`` and ``requestContext.path``, an HTTP API's ``rawPath``), while the resource or route key
    is the route as the API defines it.
    """
    if route is None:
        return None
    path, route = path.rstrip("/"), route.rstrip("/")
    if route and not path.endswith(route):
        return None
    return path[: len(path) - len(route)]


class GatewayScopeMiddleware:
    """Sets ``root_path`` from the API Gateway stage and a request id on every request.

    Mangum strips the stage from the path but leaves ``root_path`` empty, so links the app builds
    (the docs' openapi.json, the page's form target) would miss the stage. This puts it back.
    """

    def __init__(self, app: ASGIApp, disclaimer: str) -> None:
        self.app, self.disclaimer = app, disclaimer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _STARTED.set(time.perf_counter())
            scope["state"] = dict(scope.get("state") or {})
            scope["state"]["request_id"] = request_id = request_id_of(scope)
            # Per task (a context variable): under `serve`, concurrent requests keep their own ids in the logs.
            logger.thread_safe_append_keys(request_id=request_id)
            prefix, carried = stage_prefix(scope)
            path = scope["path"]
            if carried and (path == prefix or path.startswith(prefix + "/")):
                path = path[len(prefix) :]  # HTTP API v2 keeps the stage in the path, REST a base path.
            if prefix:
                scope["root_path"] = prefix
                scope["path"] = prefix + (path or "/")  # the stage or base path alone is the page
            send = _with_safety_headers(send)
            if not _utf8_target(scope):
                # uvicorn decodes %ff as U+FFFD and routing goes on (a 404, or a 422 naming the replacement
                # character); on Lambda the handler refuses the same bytes as invalid_encoding. One answer for both.
                note_refusal(400, "invalid_encoding")
                message = "the path or query string is not valid UTF-8 once percent-decoded"
                await _error(400, "invalid_encoding", message, request_id, self.disclaimer)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _utf8_target(scope: Scope) -> bool:
    """Whether the request's raw path and query string are UTF-8 once percent-decoded (as URLs must be)."""
    return all(percent_decodes(raw) for raw in (scope.get("raw_path"), scope.get("query_string")) if raw)


def percent_decodes(raw: str | bytes) -> bool:
    """Whether a path or query string is UTF-8 once percent-decoded. A lone surrogate in a ``str`` (what a Lambda
    event may carry) is not UTF-8 either, and does not raise."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _with_safety_headers(send: Send) -> Send:
    """Every answer carries ``SAFETY_HEADERS``, once each, whoever built it."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [(name, value) for name, value in SAFETY_HEADERS_RAW if name not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending


def decode_base64_image(text: str) -> bytes:
    """Bytes of a base64 string or data: URL; ``ClientError`` (400) when it is not valid base64."""
    payload = text.strip()
    if payload[:5].lower() == "data:":
        match = _DATA_URL.match(payload)
        if not match:
            raise ClientError(400, "invalid_base64", "a data: URL must look like data:image/png;base64,<data>")
        payload = payload[match.end() :]
    data = _strict_b64(payload) if len(payload) % 4 == 0 else None
    if data is None:
        # The slow path, for wrapped lines, URL-safe alphabets and missing padding. str.split() drops the
        # same whitespace as a regex would, at C speed (the regex took ~25 ms on a phone photo).
        payload = "".join(payload.split())
        if "-" in payload or "_" in payload:
            payload = payload.replace("-", "+").replace("_", "/")
        payload += "=" * (-len(payload) % 4)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientError(400, "invalid_base64", f"the image field is not valid base64: {exc}") from exc
    if not data:
        raise ClientError(400, "empty_image", "the image field decodes to no bytes")
    return data


def _strict_b64(payload: str) -> bytes | None:
    """Plain, padded, unwrapped base64 (what clients almost always send) decoded in one pass, or ``None``."""
    try:
        # pybase64 is base64.b64decode(validate=True) with SIMD: the same bytes and the same refusals, but
        # 0.1 ms instead of 4-5 ms for a 1.2 MB phone photo (the stdlib decodes a byte at a time).
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def _load_json(body: bytes) -> Any:
    """``json.loads(body)``, through orjson when it can parse the body.

    For a phone photo's 1.6 MB of base64 the stdlib took 1.2 ms, plus 0.1 ms to decode the bytes
    to text first; orjson parses the bytes in 0.8 ms. It is stricter (no NaN, no lone surrogates,
    no BOM or UTF-16), so whatever it refuses is parsed again by the stdlib. It reads integers over
    64 bits as floats, which changes no answer: no field of the request takes a number. A test holds
    the two to the same responses.
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Decoded strictly first: json.loads(bytes) lets invalid UTF-8 through as lone surrogates, which then
        # failed the image field's validation (a 422) instead of the body's (a 400).
        return json.loads(body.decode(json.detect_encoding(body)), object_pairs_hook=_refuse_repeated_keys)
    if _may_have_lost_a_key(body, raw):
        # orjson keeps the last of a repeated key without a word; the stdlib, hooked, says which. Only the
        # answer matters here: numbers are only measured (len), so none is too long for it to convert.
        json.loads(body.decode(), object_pairs_hook=_refuse_repeated_keys, parse_int=len, parse_float=len)
    return raw


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: json.loads would keep the last one silently, so a
    body with two images would screen the second, and ``"explain": true, "explain": false`` would mean false."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ClientError(
                    422,
                    "invalid_request",
                    f"{_clip(_writable(key), 40)!r} is given more than once in the body; send each field once",
                )
            seen.add(key)
    return obj


def _may_have_lost_a_key(body: bytes, raw: Any) -> bool:
    """Whether orjson may have dropped a repeated key from ``raw``, the object it parsed from ``body``.

    Every string in the body has two quotes, plus one for each escaped quote inside it, and a key dropped from
    the object leaves its quotes in the body. So a flat object whose keys and string values account for every
    quote in the body lost nothing, and one that does not is parsed again. Cheaper than a second parse (a few
    memchr calls, not 1.5 ms for a phone photo's base64), and escapes such as PHP's "\\/" cost nothing. A body
    refused anyway (not an object, or more keys than the request has fields) is not looked at.
    """
    if not isinstance(raw, dict) or len(raw) > len(PredictRequest.model_fields):
        return False
    if any(isinstance(value, (dict, list)) for value in raw.values()):
        return True
    strings = len(raw) + sum(isinstance(value, str) for value in raw.values())
    quotes, at = 0, body.find(b'"')
    while at >= 0:
        quotes += 1
        if quotes > 2 * strings:
            return True
        at = body.find(b'"', at + 1)
    return False


def _query_flag(request: Request, name: str) -> bool:
    """A yes/no query parameter: true/false, 1/0 or yes/no in any case; absent or empty is false (no spaces).

    Anything else is refused, as the JSON field refuses a non-boolean, rather than silently read as false.
    """
    given = {value.lower() for value in request.query_params.getlist(name)}
    if len(given) > 1:  # Starlette would take the last one silently
        raise ClientError(422, "invalid_request", f"query parameter {name!r} is given more than once; send it once")
    raw = request.query_params.get(name, "").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("", "0", "false", "no"):
        return False
    raise ClientError(422, "invalid_request", f"query parameter {name!r} must be true or false, got {_clip(raw, 20)!r}")


def _json_explain(request: Request, parsed: PredictRequest) -> bool:
    """``explain`` for a JSON body: its own field, or the query's when the body leaves it out; both must agree.

    An empty ``?explain=`` counts as absent, as it does beside a raw image, so it never contradicts the body.
    """
    _check_query(request)
    # Every value, not the last one: "?explain=true&explain=" is two values, refused as beside a raw image.
    if not any(request.query_params.getlist("explain")):
        return parsed.explain
    query = _query_flag(request, "explain")
    if "explain" not in parsed.model_fields_set:
        return query
    if query != parsed.explain:
        raise ClientError(
            422,
            "invalid_request",
            f"explain is {str(parsed.explain).lower()} in the body but {str(query).lower()} in the query; send it once",
        )
    return query


def _check_content_encoding(request: Request) -> None:
    """Refuse a compressed body (415), which would otherwise fail as bad JSON or as not an image.

    Every Content-Encoding header counts, and every coding in each: ``serve`` sees a repeated header twice where
    API Gateway joins the two with a comma, and either way the body was compressed once the client says so.
    """
    codings = [c.strip().lower() for value in request.headers.getlist("content-encoding") for c in value.split(",")]
    for encoding in codings:
        if encoding not in ("", "identity"):
            raise ClientError(
                415,
                "unsupported_media_type",
                f"Content-Encoding {_clip(encoding, 40)!r} is not accepted; send the body uncompressed "
                "(JPEG, PNG and WebP are compressed already)",
            )


def _content_type(request: Request) -> str:
    """The request's media type, lowercased, without parameters; "" when it has none. One only: ``serve`` sees a
    repeated header twice and API Gateway joins the two with a comma, and which of two types is meant is a guess."""
    values = request.headers.getlist("content-type")
    # The comma before the parameters go: "application/json; charset=utf-8, text/plain" is two types.
    if len(values) > 1 or (values and _has_unquoted_comma(values[0])):
        raise ClientError(
            415, "unsupported_media_type", "the request gives more than one Content-Type; send exactly one"
        )
    return values[0].split(";")[0].strip().lower() if values else ""


def _has_unquoted_comma(value: str) -> bool:
    """Whether a header value has a comma outside a quoted string (RFC 9110 lets a quoted parameter hold one)."""
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            return True
    return False


def _check_query(request: Request) -> None:
    """Refuse a query parameter other than ``explain`` (422), as the JSON body refuses an unknown field: a
    misspelt ``?Explain=true`` would otherwise be ignored without a word."""
    unknown = sorted({key for key in request.query_params if key != "explain"})
    if unknown:
        names = ", ".join(repr(_clip(_writable(key), 20)) for key in unknown[:_ERRORS_SHOWN])
        raise ClientError(
            422, "invalid_request", f"unknown query parameter {names}; the only one /predict takes is 'explain'"
        )


def _parse_json(body: bytes) -> PredictRequest:
    try:
        raw = _load_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientError(400, "malformed_json", f"the body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer over the stdlib's 4300 digits, met before any syntax error after it
        try:
            json.loads(body.decode(json.detect_encoding(body)), parse_int=len)  # the syntax, numbers left as text
        except (json.JSONDecodeError, UnicodeDecodeError) as syntax:
            raise ClientError(400, "malformed_json", f"the body is not valid JSON: {syntax}") from syntax
        except RecursionError as deep:
            raise ClientError(400, "malformed_json", "the JSON is nested too deeply") from deep
        raise ClientError(
            422, "invalid_request", "a number in the body has over 4300 digits; no field of the request takes a number"
        ) from exc
    except RecursionError as exc:
        raise ClientError(400, "malformed_json", "the JSON is nested too deeply") from exc
    if not isinstance(raw, dict):
        raise ClientError(422, "invalid_request", 'the body must be a JSON object like {"image": "<base64>"}')
    unknown = [key for key in raw if key not in PredictRequest.model_fields]
    if len(unknown) > _ERRORS_SHOWN:
        # pydantic would build an error for every one (500,000 keys: 1.3 s and 370 MB) to show five.
        shown = [{"loc": (key,), "msg": "Extra inputs are not permitted"} for key in unknown[:_ERRORS_SHOWN]]
        raise ClientError(422, "invalid_request", validation_details(shown, total=len(unknown)))
    try:
        return PredictRequest.model_validate(raw)
    except ValidationError as exc:
        raise ClientError(422, "invalid_request", validation_details(exc.errors(include_url=False))) from exc


def _code_span(text: str) -> str:
    """``text`` as Markdown code, so that the docs pages show model.json's words as they are: a name holding HTML or
    a Markdown link was rendered as one, on the origin that holds the API key."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


def _clip(text: str, limit: int) -> str:
    """Client-supplied text echoed in an error: short, so a key of base64 or a long header is not sent back."""
    return text if len(text) <= limit else text[:limit] + "…"


_ERRORS_SHOWN = 5


def validation_details(errors: Sequence[Any], total: int | None = None) -> str:
    """Where and what, for each validation error; never the submitted values, and at most a few.

    ``total``: how many errors there are, when only the first few were built.
    """
    total = len(errors) if total is None else total
    parts = []
    for err in errors[:_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in err["loc"]) or "body"
        parts.append(f"{_clip(_writable(where), 40)}: {err['msg']}")
    more = f"; and {total - _ERRORS_SHOWN} more" if total > _ERRORS_SHOWN else ""
    return "; ".join(parts) + more


def _writable(text: str) -> str:
    """``text`` that can be written as UTF-8: a field name may hold a lone surrogate (a JSON escape)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), compared by length first: int() of more than
    # 4300 digits raises, and that was a 500.
    digits = declared.lstrip("0") if declared.isascii() and declared.isdigit() else ""
    if len(digits) > len(str(limit)) or (digits and int(digits) > limit):
        raise ClientError(413, "payload_too_large", f"the body is {_clip(declared, 20)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        # Under Mangum the body is already here. Under `serve`, a client that stalls or trickles would hold its
        # connection, and its share of memory, for as long as it liked.
        async with asyncio.timeout(BODY_DEADLINE_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ClientError(
                        413,
                        "payload_too_large",
                        f"the body is over the {limit}-byte limit (base64 JSON is 4/3 of the photo: downscale it)",
                    )
                if chunk:
                    chunks.append(chunk)
    except TimeoutError as exc:
        raise ClientError(408, "request_timeout", f"the body did not arrive within {BODY_DEADLINE_S:.0f} s") from exc
    except ClientDisconnect as exc:  # nobody is left to answer: not a server error
        raise ClientError(499, "client_closed_request", "the client closed the connection mid-body") from exc
    # Under Mangum the body is one chunk (and an empty one after it): joining would copy 1.6 MB for nothing.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_REQUEST_ID_HEADER = {
    "X-Request-Id": {
        "description": "The request's id, as in the body's request_id and the logs (on AWS, API Gateway's "
        "request id); quote it when reporting a problem.",
        "schema": {"type": "string"},
    }
}
_ERROR_DEFAULT = {
    "description": "An error, from the app or API Gateway",
    "headers": {
        **_REQUEST_ID_HEADER,
        "Allow": {
            "description": "With 405: the methods the path is documented for (HEAD is served on /health only).",
            "schema": {"type": "string"},
        },
        "Retry-After": {"description": "With 503: seconds to wait before retrying.", "schema": {"type": "string"}},
    },
    "content": {"application/json": {"schema": _ERROR_REF}},
}


def _predict_openapi() -> dict[str, Any]:
    """The parts of ``POST /predict``'s operation FastAPI cannot infer from a route that reads the raw request."""
    raw = {"schema": {"type": "string", "format": "binary"}}
    return {
        "parameters": [
            {
                "name": "explain",
                "in": "query",
                "required": False,
                "description": "true/false, 1/0 or yes/no (any case) to add the heat map. With a JSON body, its "
                "explain field takes the place of this one; given in both, the two must agree.",
                # What _query_flag reads: the six words in any case, or empty (false).
                "schema": {
                    "type": "string",
                    "pattern": "^(|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)$",
                },
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema()},
                **{
                    media: raw
                    for media in ("image/jpeg", "image/png", "image/webp", "image/*", "application/octet-stream")
                },
            },
        },
        "responses": {
            str(code): {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
            for code, text in (
                (
                    400,
                    "Malformed JSON, bad base64, an empty body or image, a corrupt image, or a non-UTF-8 header",
                ),
                (413, "Body or image over the limits"),
                (
                    415,
                    "Not an image, a format or Content-Type we don't read, more than one Content-Type, or a "
                    "compressed body (Content-Encoding)",
                ),
                (
                    422,
                    "Wrong, missing, extra or repeated fields, a query parameter other than explain, an explain value "
                    "that is not yes or no, or explain given twice (in the query, or in the query and the JSON body) "
                    "with different values",
                ),
            )
        },
    }


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI's generated document leaves out: the error schema as a shared component, the API key, and a
    default error response on every operation (404, 405, 500 and API Gateway's own 403, 429, 502, 504)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error.pop("$defs", {}))
    schemas["ErrorResponse"] = error
    document["components"]["securitySchemes"] = {
        "ApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "The stack's API key (template parameter ApiKeyRequired, true by default); "
            "the local runner needs none.",
        }
    }
    predict = document.get("paths", {}).get("/predict", {}).get("post")
    if predict is not None:
        extra = _predict_openapi()
        predict["parameters"], predict["requestBody"] = extra["parameters"], extra["requestBody"]
        predict.setdefault("responses", {}).update(extra["responses"])
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for response in responses.values():
                response.setdefault("headers", {}).update(_REQUEST_ID_HEADER)
            responses.setdefault("default", _ERROR_DEFAULT)
            if path in KEYED_PATHS:
                operation["security"] = [{"ApiKey": []}]
    return document


def create_app(classifier: Classifier, settings: Settings) -> FastAPI:
    """The HTTP app around a loaded classifier."""
    manifest = classifier.manifest
    model_info = ModelInfo(**classifier.model_info)
    app = FastAPI(
        # A redirect for "/predict/" would answer 307 with an empty body (no error, no disclaimer), and a
        # client would have to send the photo again; the JSON 404 says what is wrong.
        redirect_slashes=False,
        # FastAPI's docs pages load floating CDN releases unchecked; ours pin each file by hash (docs_pages).
        docs_url=None,
        redoc_url=None,
        title="Cataract screening",
        version=manifest.version,
        description=(
            "Screens a photo of an eye for cataract. **A screening aid, not a diagnostic device.** "
            f"Model {_code_span(manifest.name)} {_code_span(manifest.version)}."
        ),
    )
    app.add_middleware(GatewayScopeMiddleware, disclaimer=settings.disclaimer)
    slots: list[anyio.CapacityLimiter] = []

    def prediction_slots() -> anyio.CapacityLimiter:
        if not slots:  # made on first use: it belongs to the running event loop
            slots.append(anyio.CapacityLimiter(SERVE_CONCURRENT_PREDICTIONS))
        return slots[0]

    generate = app.openapi  # built on the first /openapi.json, not at cold start

    def openapi_document() -> dict[str, Any]:
        first = app.openapi_schema is None
        document = generate()
        return complete_openapi(document) if first else document

    app.openapi = openapi_document  # type: ignore[method-assign]

    def refuse(
        request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        # The 500 handler runs outside GatewayScopeMiddleware, which may not have set the state yet.
        request_id = request.scope.get("state", {}).get("request_id")
        return _error(status, code, message, request_id, settings.disclaimer, extra=headers)

    def refused(
        request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        note_refusal(status, code)
        return refuse(request, status, code, message, headers)

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
        return refused(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refused(request, 422, "invalid_request", validation_details(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own texts ("Not Found") tell a client nothing; these say where to go, without echoing the
        # path or method it sent. Starlette's 405 carries the Allow header a client needs.
        codes = {
            404: ("not_found", NOT_FOUND_MESSAGE),
            405: ("method_not_allowed", "this route does not take that method; the Allow header lists those it does"),
        }
        code, message = codes.get(exc.status_code, ("http_error", str(exc.detail)))
        return refused(request, exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Where it failed, without the exception's message: that could quote the request (an image, a header).
        record_server_error()
        annotate_server_error(exc)
        failure = {"error_type": type(exc).__name__, "stack": stack_summary(exc), **elapsed_ms()}
        logger.error("unhandled error", extra=failure)
        return refuse(request, 500, "internal_error", "the service failed; it has been logged")

    # The route takes the raw Request; complete_openapi documents its bodies, on the first /openapi.json only.
    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id: str = request.scope["state"]["request_id"]
        _check_content_encoding(request)
        body = await _read_body(request, settings.max_body_bytes)
        if not body:
            raise ClientError(400, "empty_body", 'the body is empty; send {"image": "<base64>"} or raw image bytes')
        content_type = _content_type(request)
        if not content_type:
            # A browser sends a typeless body cross-site without asking (no CORS preflight): refusing it keeps other
            # web pages from screening through a visitor's local runner, or a deployment without an API key.
            raise ClientError(
                415,
                "unsupported_media_type",
                "the request has no Content-Type; send application/json, or the raw bytes as image/jpeg (or another "
                "image/*) or application/octet-stream",
            )
        if content_type == "application/json":
            parsed = _parse_json(body)
            image_bytes, explain = decode_base64_image(parsed.image), _json_explain(request, parsed)
        elif RAW_IMAGE_TYPE.fullmatch(content_type):
            _check_query(request)
            image_bytes, explain = body, _query_flag(request, "explain")
        else:
            raise ClientError(
                415,
                "unsupported_media_type",
                f"Content-Type {_clip(content_type, 60)!r} is not accepted; send application/json, or the raw bytes "
                "as image/jpeg (or another image/*) or application/octet-stream",
            )
        parsed_at = time.perf_counter()
        try:
            if "aws.event" in request.scope:
                # Lambda gives an environment one request at a time, and Mangum runs each on a fresh root
                # task, so a worker thread would be started per invocation only to be waited on.
                result = classifier.predict_bytes(image_bytes, explain=explain)
            else:
                # Under uvicorn (`serve`), concurrent requests overlap in threads (ORT releases the GIL), a few
                # at a time: starlette's own pool would run 40, and 40 hostile 40 MP photos need ~10 GB.
                result = await anyio.to_thread.run_sync(
                    partial(classifier.predict_bytes, image_bytes, explain=explain), limiter=prediction_slots()
                )
        except ImageError as exc:
            raise ClientError(exc.status, exc.code, str(exc)) from exc
        timing = {"parse": round((parsed_at - started) * 1000, 2), **result.timing_ms}
        timing["total"] = round((time.perf_counter() - started) * 1000, 2)
        record_screening(timing["total"])
        # The result stays out of the log, and out of the metrics, which are log lines in the same stream: with
        # the request id it could be joined to the access log's client IP and key.
        logger.info("screened", extra={"timing_ms": timing, "image_bytes": len(image_bytes)})
        response = PredictResponse(
            label=result.label,
            probabilities=result.probabilities,
            referral=result.referral,
            threshold=manifest.threshold,
            quality=QualityOut(
                gradable=result.quality.gradable, reasons=result.quality.reasons, scores=result.quality.scores
            ),
            model=model_info,
            request_id=request_id,
            timing_ms=timing,
            heatmap_png=result.heatmap_png,
            views=result.views,
            disclaimer=settings.disclaimer,
        )
        return JSONResponse(
            response.model_dump(exclude_none=True),
            headers={"X-Request-Id": request_id, "Cache-Control": "no-store"},
        )

    def answer(request: Request, content: dict[str, Any]) -> JSONResponse:
        # The same two headers as /predict's answers and every error: a support ticket can quote the id.
        request_id: str = request.scope["state"]["request_id"]
        return JSONResponse(content, headers={"X-Request-Id": request_id, "Cache-Control": "no-store"})

    health_view = HealthResponse(status="ok", model=model_info, disclaimer=settings.disclaimer).model_dump()

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request) -> JSONResponse:
        return answer(request, health_view)

    # Uptime checkers and load balancers often probe with HEAD; FastAPI, unlike Starlette, does not add it.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    model_view = {**manifest.public_view(), "disclaimer": settings.disclaimer}

    # Returned as built: the manifest was validated when it was loaded, and the schema is for the document.
    @app.get("/model", response_model=ModelDescription)
    async def model(request: Request) -> JSONResponse:
        return answer(request, model_view)

    def docs_response(page: docs_pages.DocsPage) -> HTMLResponse:
        return HTMLResponse(page.html, headers={"Content-Security-Policy": page.csp})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return docs_response(docs_pages.swagger_ui(request.scope.get("root_path", "") + "/openapi.json", app.title))

    @app.get("/redoc", response_class=HTMLResponse, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return docs_response(docs_pages.redoc(request.scope.get("root_path", "") + "/openapi.json", app.title))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(
            page.render(request.scope.get("root_path", ""), settings.disclaimer),
            headers={"Content-Security-Policy": page.csp()},
        )

    return app
