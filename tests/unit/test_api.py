"""The HTTP contract through the real Lambda handler: results, and a 4xx JSON error for every bad input."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from functools import partial
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode
from tests.support.images import (
    bmp_rle8,
    encoded,
    gradient,
    jpeg_with_malformed_exif,
    png_with_declared_size,
    png_with_truncated_exif,
    progressive_jpeg_with_scans,
    tiff_with_huge_strip_offset,
)

Invoke = Callable[[dict[str, Any]], tuple[int, dict[str, str], Any]]


def _json_event(payload: Any, content_type: str = "application/json") -> dict[str, Any]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return events.rest_event("/predict", "POST", body=body, content_type=content_type)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BRIGHT = encoded(Image.new("RGB", (80, 60), (250, 250, 250)), "PNG")
DARK = encoded(Image.new("RGB", (80, 60), (20, 20, 20)), "PNG")


def _raw_event(data: bytes, query: dict[str, str] | None = None, media: str = "image/png") -> dict[str, Any]:
    return events.rest_event("/predict", "POST", body=_b64(data), content_type=media, is_base64=True, query=query)


def _with_header(event: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    return {
        **event,
        "headers": {**event["headers"], name: value},
        "multiValueHeaders": {**event["multiValueHeaders"], name: [value]},
    }


def test_predict_returns_the_contract(invoke: Invoke) -> None:
    event = events.predict_event(encode(draw_eye("cataract")))
    status, headers, body = invoke(event)
    assert status == 200
    assert set(body) >= {
        "label",
        "probabilities",
        "referral",
        "quality",
        "model",
        "request_id",
        "timing_ms",
        "disclaimer",
    }
    assert body["label"] in ("cataract", "normal", "ungradable")
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["quality"] == {"gradable": True, "reasons": [], "scores": body["quality"]["scores"]}
    assert body["model"]["version"] == "0.0.1-test" and len(body["model"]["sha256"]) == 64
    assert body["request_id"] == event["requestContext"]["requestId"] == headers["x-request-id"]
    assert {"decode", "inference", "total"} <= set(body["timing_ms"])
    assert "not a diagnosis" in body["disclaimer"].lower()
    assert "heatmap_png" not in body
    assert headers["cache-control"] == "no-store"  # a screening result is health data: no cache keeps it


def test_label_and_referral_follow_the_threshold(invoke: Invoke) -> None:
    _, _, bright = invoke(_json_event({"image": _b64(BRIGHT)}))
    _, _, dark = invoke(_json_event({"image": _b64(DARK)}))
    # The tiny model scores brightness as cataract evidence.
    assert bright["label"] == "cataract" and bright["referral"] is True
    assert dark["label"] == "normal" and dark["referral"] is False
    assert bright["probabilities"]["cataract"] > 0.5 > dark["probabilities"]["cataract"]


def test_explain_returns_a_png_heat_map(invoke: Invoke) -> None:
    status, _, body = invoke(_json_event({"image": _b64(encode(draw_eye("normal"))), "explain": True}))
    assert status == 200
    png = base64.b64decode(body["heatmap_png"])
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "prefix",
    [
        "data:image/png;base64,",
        "DATA:image/png;base64,",
        "data:;base64,",  # RFC 2397: the media type may be left out
        'data:image/png;name="my eye.png";base64,',
    ],
)
def test_data_url_is_accepted(invoke: Invoke, prefix: str) -> None:
    status, _, _ = invoke(_json_event({"image": prefix + _b64(BRIGHT)}))
    assert status == 200


def test_urlsafe_and_unpadded_base64_is_accepted(invoke: Invoke) -> None:
    text = base64.urlsafe_b64encode(encode(draw_eye("normal"))).decode().rstrip("=")
    status, _, _ = invoke(_json_event({"image": text}))
    assert status == 200


# BMP is stored as is, so its base64 is known: a 60-row, 80-px image's pixel data starts on a 3-byte boundary and
# a row is 240 bytes, so each pixel is four base64 characters. White (FF FF FF) is "////", URL-safe "____";
# (190, 239, 251), stored B G R as FB EF BE, is "++++", URL-safe "----". The 54-byte header has neither.
@pytest.mark.parametrize(
    ("colour", "only", "absent"), [((255, 255, 255), "_", "-"), ((190, 239, 251), "-", "_")], ids=["underscore", "dash"]
)
def test_urlsafe_base64_with_only_one_of_its_two_letters_is_accepted(
    invoke: Invoke, colour: tuple[int, int, int], only: str, absent: str
) -> None:
    text = base64.urlsafe_b64encode(encoded(Image.new("RGB", (80, 60), colour), "BMP")).decode()
    assert only in text and absent not in text  # the case under test, whatever else changes
    status, _, body = invoke(_json_event({"image": text}))
    assert status == 200, body


@pytest.mark.parametrize(
    ("before", "after"), [("  ", ""), ("\n\t ", "\n"), ("", " \r\n")], ids=["before", "both-sides", "after"]
)
def test_a_data_url_wrapped_in_whitespace_is_accepted(invoke: Invoke, before: str, after: str) -> None:
    # Pasted from a text field or a file, a data: URL often keeps a blank or a newline at either end.
    status, _, body = invoke(_json_event({"image": before + "data:image/png;base64," + _b64(BRIGHT) + after}))
    assert status == 200, body


def test_base64_with_line_breaks_is_accepted(invoke: Invoke) -> None:
    text = base64.encodebytes(BRIGHT).decode()
    assert "\n" in text
    status, _, _ = invoke(_json_event({"image": text}))
    assert status == 200


@pytest.mark.parametrize("media", ["image/png", "image/jpeg", "application/octet-stream"])
def test_raw_image_body(invoke: Invoke, media: str) -> None:
    status, _, body = invoke(events.predict_event(BRIGHT, raw=True, media_type=media))
    assert status == 200
    assert body["label"] == "cataract"


def test_http_api_v2_event(invoke: Invoke) -> None:
    status, _, body = invoke(events.predict_event(BRIGHT, http_api=True))
    assert status == 200
    assert body["label"] == "cataract"


def test_http_api_v2_named_stage(invoke: Invoke) -> None:
    event = events.http_api_event("/health", stage="dev")
    status, _, body = invoke(event)
    assert status == 200 and body["status"] == "ok"


def test_http_api_v2_named_stage_alone_is_the_page(invoke: Invoke) -> None:
    event = events.http_api_event("/", stage="Prod")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/Prod"  # https://host/Prod, no slash
    status, _, html = invoke(event)
    assert status == 200 and 'data-root="/Prod"' in html


def test_rest_stage_alone_is_the_page(invoke: Invoke) -> None:
    # https://host/Prod, no slash: the root resource, with path "/" and requestContext.path "/Prod" (as AWS sends
    # it). The page's root came out empty, and it posted photos to https://host/predict.
    event = events.rest_event("/", "GET")
    event["requestContext"]["path"] = "/Prod"
    status, _, html = invoke(event)
    assert status == 200 and 'data-root="/Prod"' in html


def _through_custom_domain(event: dict[str, Any], base: str) -> dict[str, Any]:
    """``event`` as API Gateway sends it through a custom domain whose API mapping has base path ``base``."""
    if event.get("version") == "2.0":
        event["rawPath"] = event["requestContext"]["http"]["path"] = base + event["rawPath"]
        return event
    event["path"] = event["requestContext"]["path"] = base + event["path"]
    return event


@pytest.mark.parametrize("route", ["/health", "/", "/docs"])
def test_a_custom_domain_base_path_is_taken_off_and_kept_for_links(invoke: Invoke, route: str) -> None:
    event = events.rest_event(route, stage="prod")
    # Through https://api.example.org/screening/v1/... (an API mapping with that base path), API Gateway keeps
    # the base path in both paths; `resource` is the route.
    event["path"] = event["requestContext"]["path"] = "/screening/v1" + route
    status, _, body = invoke(event)
    assert status == 200
    if route == "/health":
        assert body["status"] == "ok"
    elif route == "/":
        assert 'data-root="/screening/v1"' in body
    else:
        assert "/screening/v1/openapi.json" in body


@pytest.mark.parametrize("base", ["/api+v1", "/v1!", "/(beta)", "/$v1", "/it's", "/a*b"])
def test_a_base_path_with_any_character_api_gateway_allows_in_one_is_taken_off(invoke: Invoke, base: str) -> None:
    # API Gateway's base paths take letters, digits and $-_.+!*'(): all but "-_." were 404 on every route.
    status, _, body = invoke(_through_custom_domain(events.rest_event("/health", stage="prod"), base))
    assert status == 200 and body["status"] == "ok"
    status, _, body = invoke(_through_custom_domain(events.predict_event(BRIGHT), base))
    assert status == 200 and body["label"] == "cataract"
    status, _, html = invoke(_through_custom_domain(events.rest_event("/", stage="prod"), base))
    assert status == 200 and f'data-root="{html_escape(base, quote=True)}"' in html


def test_a_base_path_in_front_of_a_proxy_resource_is_found_from_its_path_parameter(invoke: Invoke) -> None:
    # A REST API whose one resource is /{proxy+}: its route is in pathParameters, not in `resource`.
    event = _through_custom_domain(events.rest_event("/health", stage="prod"), "/screening")
    event["resource"], event["pathParameters"] = "/{proxy+}", {"proxy": "health"}
    status, _, body = invoke(event)
    assert status == 200 and body["status"] == "ok"
    del event["pathParameters"]  # a template without its value says nothing: no base path is guessed
    status, _, body = invoke(event)
    assert status == 404 and body["error"]["code"] == "not_found"


def _v2_through(event: dict[str, Any], domain: str, base: str = "", route_key: str | None = None) -> dict[str, Any]:
    """An HTTP API event through host ``domain`` (its mapping key ``base`` in the path), with ``route_key``."""
    event = _through_custom_domain(event, base)
    event["requestContext"]["domainName"] = domain
    event["headers"]["host"] = domain
    if route_key is not None:
        event["routeKey"] = event["requestContext"]["routeKey"] = route_key
        if "{proxy+}" in route_key:
            event["pathParameters"] = {"proxy": event["rawPath"].removeprefix(base + "/")}
    return event


@pytest.mark.parametrize("route_key", [None, "ANY /{proxy+}"])
def test_an_http_api_mapping_key_is_taken_off_where_the_route_says_where_the_app_begins(
    invoke: Invoke, route_key: str | None
) -> None:
    # https://api.example.org/screening/health: the mapping key stays in rawPath, the route key is the app's route.
    event = _v2_through(events.http_api_event("/health"), "api.example.org", "/screening", route_key)
    status, _, body = invoke(event)
    assert status == 200 and body["status"] == "ok"
    predict = _v2_through(events.predict_event(BRIGHT, http_api=True), "api.example.org", "/screening", route_key)
    status, _, body = invoke(predict)
    assert status == 200 and body["label"] == "cataract"


def test_an_http_api_mapping_key_behind_the_catch_all_route_cannot_be_told_from_a_route(invoke: Invoke) -> None:
    # "$default" matches any path and names none: /screening/health may as well be a route of the app's.
    event = _v2_through(events.http_api_event("/health"), "api.example.org", "/screening", "$default")
    status, _, body = invoke(event)
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.parametrize("route_key", ["$default", "ANY /{proxy+}", "GET /health"])
def test_an_http_api_stage_named_like_a_route_is_only_in_the_path_on_api_gateways_own_host(
    invoke: Invoke, route_key: str
) -> None:
    # Stage "health" through a custom domain with no mapping key, or under `sam local start-api` (host localhost):
    # /health is the route, and was served the page, its "/health" taken for the stage.
    for domain in ("api.example.org", "localhost"):
        event = _v2_through(events.http_api_event("/health", stage="health"), domain, route_key=route_key)
        event["rawPath"] = event["requestContext"]["http"]["path"] = "/health"
        if route_key == "ANY /{proxy+}":
            event["pathParameters"] = {"proxy": "health"}
        status, headers, body = invoke(event)
        assert status == 200 and headers["content-type"] == "application/json" and body["status"] == "ok", domain
    # On API Gateway's own host the stage is in the path: https://<id>.execute-api.<region>.amazonaws.com/health/
    gateway = "abc123.execute-api.eu-west-1.amazonaws.com"
    event = _v2_through(events.http_api_event("/", stage="health"), gateway, route_key=route_key)
    if route_key == "ANY /{proxy+}":
        event["routeKey"] = event["requestContext"]["routeKey"] = "$default"  # "/" is not a {proxy+} match
    elif route_key == "GET /health":
        event["routeKey"] = event["requestContext"]["routeKey"] = "GET /"
    status, headers, html = invoke(event)
    assert status == 200 and headers["content-type"].startswith("text/html") and 'data-root="/health"' in html


@pytest.mark.parametrize("route", ["/health", "/model", "/docs"])
def test_a_rest_stage_named_like_a_route_is_not_taken_off_the_route(invoke: Invoke, route: str) -> None:
    # Stage "health": https://<id>.execute-api.../health/health. The stage is not in the event's path.
    status, headers, _ = invoke(events.rest_event(route, stage=route.strip("/")))
    assert status == 200
    assert headers["content-type"].startswith("application/json" if route != "/docs" else "text/html")
    if route == "/docs":
        _, _, html = invoke(events.rest_event(route, stage="docs"))
        assert "/docs/openapi.json" in html and "swagger" in html.lower()


def test_a_path_that_does_not_end_in_its_route_is_not_given_a_base_path(invoke: Invoke) -> None:
    event = events.rest_event("/health")
    event["path"] = event["requestContext"]["path"] = "/elsewhere"
    status, _, body = invoke(event)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_health_and_model(invoke: Invoke) -> None:
    status, headers, health = invoke(events.rest_event("/health", request_id="test-request-id"))
    assert status == 200 and health["status"] == "ok" and health["model"]["version"] == "0.0.1-test"
    assert "not a diagnosis" in health["disclaimer"].lower()
    # The same id header as every other answer, API Gateway's request id on AWS.
    assert headers["x-request-id"] == "test-request-id" and headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    status, headers, model = invoke(events.rest_event("/model", request_id="test-request-id"))
    assert status == 200 and headers["x-request-id"] == "test-request-id"
    assert model["classes"] == ["cataract", "normal"]
    assert model["input"]["size"] == 32 and model["threshold"] == 0.5
    assert "not a diagnosis" in model["disclaimer"].lower()


def test_health_answers_head_for_uptime_probes(invoke: Invoke) -> None:
    status, headers, _ = invoke(events.rest_event("/health", "HEAD"))
    assert status == 200 and headers["content-type"] == "application/json"


def test_docs_and_openapi_work_under_the_stage_path(invoke: Invoke) -> None:
    status, _, html = invoke(events.rest_event("/docs", stage="Prod"))
    assert status == 200 and "/Prod/openapi.json" in html
    status, _, spec = invoke(events.rest_event("/openapi.json", stage="Prod"))
    assert status == 200 and "/predict" in spec["paths"]
    assert "image/png" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_pinned_files_checked_by_hash(invoke: Invoke, path: str) -> None:
    """The browser half, and the hashes against npm, are in tests/browser/test_docs_pages.py."""
    import re

    status, headers, html = invoke(events.rest_event(path))
    policy = headers["content-security-policy"]
    assert status == 200 and "default-src 'none'" in policy
    # Each pinned file by its full URL, never the whole CDN host (where any other script would run too).
    assert not re.search(r"https://cdn\.jsdelivr\.net[ ;]", policy), policy
    external = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"[^>]*>', html)
    tags = re.findall(r"<(?:script|link)[^>]*https?://[^>]*>", html)
    assert external and len(tags) == len(external)
    for url, tag in zip(external, tags, strict=True):
        assert re.search(r"@\d+\.\d+\.\d+/", url), f"{url} is not one release"
        assert 'integrity="sha384-' in tag and 'crossorigin="anonymous"' in tag, tag


def test_model_json_words_reach_the_docs_as_code_not_markup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/docs and /redoc render the description as Markdown: a model name holding a link or HTML was drawn as one."""
    from tests.conftest import FakeLambdaContext, load_handler
    from tests.support.onnx_models import build_tiny_model

    name = "[Log in again](https://evil.example/login) <img src=x onerror=alert(1)> `x`"
    module = load_handler(build_tiny_model(tmp_path / "model", name=name, version="1.0\n<b>x</b>"), monkeypatch)
    response = module.lambda_handler(events.rest_event("/openapi.json"), FakeLambdaContext())
    description = json.loads(response["body"])["info"]["description"]
    model_part = description.split("Model ", 1)[1]
    assert model_part == (
        "`[Log in again](https://evil.example/login) <img src=x onerror=alert(1)> 'x'` `1.0 <b>x</b>`."
    )  # each a code span: shown as written, never a link or an element


def test_the_openapi_document_is_valid_and_types_every_answer(invoke: Invoke) -> None:
    """Clients are generated from it: it must validate, and every error a client can get must have a schema."""
    import jsonschema
    from openapi_spec_validator import validate

    _, _, spec = invoke(events.rest_event("/openapi.json"))
    validate(spec)  # a $ref to nowhere (the error schema's own $defs) used to fail here
    predict = spec["paths"]["/predict"]["post"]
    assert {"application/json", "image/jpeg", "image/*", "application/octet-stream"} <= set(
        predict["requestBody"]["content"]
    )
    answer = spec["components"]["schemas"]["PredictResponse"]["properties"]
    probability = answer["probabilities"]["additionalProperties"]
    assert (probability["minimum"], probability["maximum"]) == (0, 1)
    assert (answer["threshold"]["minimum"], answer["threshold"]["maximum"]) == (0, 1)
    assert [p["name"] for p in predict["parameters"]] == ["explain"]
    assert {"400", "413", "415", "422", "default"} <= set(predict["responses"])
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert "default" in operation["responses"], path
            for code, response in operation["responses"].items():
                assert "X-Request-Id" in response["headers"], (path, code)
            assert (operation.get("security") == [{"ApiKey": []}]) == (path in ("/predict", "/model")), path
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "x-api-key"
    error_schema = {"$ref": "#/components/schemas/ErrorResponse", "components": spec["components"]}
    # Typed, not free-form objects, and the real answers fit their types.
    for path, field in (("/health", "status"), ("/model", "classes")):
        schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        component = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert field in component["properties"] and "disclaimer" in component["required"], path
        _, _, body = invoke(events.rest_event(path))
        jsonschema.validate(body, {**schema, "components": spec["components"]})
    for event in (
        _json_event("{"),
        _raw_event(BRIGHT, {"explain": "maybe"}),
        events.rest_event("/predict", "GET"),
        events.rest_event("/nope"),
    ):
        _, _, body = invoke(event)
        jsonschema.validate(body, error_schema)


def test_405_says_which_methods_are_allowed(invoke: Invoke) -> None:
    status, headers, body = invoke(events.rest_event("/predict", "GET"))
    assert status == 405 and headers["allow"] == "POST"
    assert "Allow header" in body["error"]["message"]


def test_404_says_which_routes_there_are(invoke: Invoke) -> None:
    status, _, body = invoke(events.rest_event("/predict-typo/", "POST"))
    assert status == 404 and body["error"]["code"] == "not_found"
    assert "POST /predict" in body["error"]["message"] and "trailing slash" in body["error"]["message"]
    assert "typo" not in json.dumps(body)  # the client's path is not echoed


def test_page_links_carry_the_stage(invoke: Invoke) -> None:
    status, headers, html = invoke(events.rest_event("/", stage="Prod"))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["x-content-type-options"] == "nosniff"
    # The docs pages load their viewer from a CDN: no Referer may tell it this function's URL.
    assert headers["referrer-policy"] == "no-referrer"
    assert 'data-root="/Prod"' in html


@pytest.mark.parametrize("outer", ["//evil.example/", "/Prod/../x/", "/Pr od/"])
def test_a_stage_path_that_is_not_plain_segments_is_not_used_as_the_page_root(invoke: Invoke, outer: str) -> None:
    event = events.rest_event("/")
    event["requestContext"]["path"] = outer  # the page would fetch root + "/predict": never another host
    status, _, html = invoke(event)
    assert status == 200 and 'data-root=""' in html


def test_errors_do_not_send_client_input_back(invoke: Invoke) -> None:
    photo = _b64(BRIGHT)
    status, _, body = invoke(_json_event({"image": photo, photo: True, **{f"k{i}": 1 for i in range(20)}}))
    assert status == 422 and photo not in body["error"]["message"]
    assert len(body["error"]["message"]) < 600 and "more" in body["error"]["message"]
    status, _, body = invoke(_json_event({"image": "x"}, content_type="text/" + "x" * 3000))
    assert status == 415 and len(body["error"]["message"]) < 200


def test_many_unknown_fields_are_refused_without_an_error_built_for_each(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cataract_inference.schemas import PredictRequest

    def validate(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("pydantic was handed 100,000 unknown fields (it builds an error for each: seconds, not ms)")

    monkeypatch.setattr(PredictRequest, "model_validate", validate)
    status, _, body = invoke(_json_event({"image": _b64(BRIGHT), **{f"k{i}": 0 for i in range(100_000)}}))
    assert status == 422 and body["error"]["code"] == "invalid_request"
    message = body["error"]["message"]
    assert message.startswith("k0: Extra inputs are not permitted; k1: ") and message.endswith("; and 99995 more")
    # Keys holding a lone surrogate (a JSON escape) are named without breaking the answer's UTF-8.
    surrogates = "{" + ", ".join(f'"\\udcff{i}": 0' for i in range(7)) + ', "image": "AAAA"}'
    status, _, body = invoke(_json_event(surrogates))
    assert status == 422 and "\\udcff0: Extra inputs are not permitted" in body["error"]["message"]


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed json", _json_event('{"image": '), 400, "malformed_json"),
    ("json not utf-8", _json_event("\udcff"), 400, "malformed_json"),
    # orjson refuses it; the stdlib's own decoding of bytes would let it through as a lone surrogate.
    ("json not utf-8 inside a string", _json_event('{"image": "\udcff"}'), 400, "malformed_json"),
    # A typeless body is what another web page can send cross-site without a CORS preflight.
    (
        "raw image with no content type",
        events.rest_event("/predict", "POST", body=_b64(BRIGHT), is_base64=True),
        415,
        "unsupported_media_type",
    ),
    (
        "json with no content type",
        events.rest_event("/predict", "POST", body=json.dumps({"image": _b64(BRIGHT)})),
        415,
        "unsupported_media_type",
    ),
    (
        "a content length of 5000 digits",
        _with_header(_json_event({"image": "AAAA"}), "Content-Length", "9" * 5000),
        413,
        "payload_too_large",
    ),
    (
        "gzip-compressed json",
        _with_header(_json_event({"image": "AAAA"}), "Content-Encoding", "gzip"),
        415,
        "unsupported_media_type",
    ),
    ("compressed raw image", _with_header(_raw_event(BRIGHT), "Content-Encoding", "br"), 415, "unsupported_media_type"),
    ("json array", _json_event([1, 2]), 422, "invalid_request"),
    # The stdlib and orjson keep the last of a repeated key: the first photo would go unscreened, without a word.
    (
        "image given twice",
        _json_event(f'{{"image": "{_b64(BRIGHT)}", "image": "{_b64(DARK)}"}}'),
        422,
        "invalid_request",
    ),
    (
        "image given twice, once as an escape",
        _json_event(f'{{"image": "{_b64(BRIGHT)}", "\\u0069mage": "{_b64(DARK)}"}}'),
        422,
        "invalid_request",
    ),
    (
        "explain given twice",
        _json_event(f'{{"image": "{_b64(BRIGHT)}", "explain": true, "explain": false}}'),
        422,
        "invalid_request",
    ),
    ("a misspelt query parameter", _raw_event(BRIGHT, query={"Explain": "true"}), 422, "invalid_request"),
    (
        "a content type that only starts as application/octet-stream",
        _raw_event(BRIGHT, media="application/octet-stream-whatever"),
        415,
        "unsupported_media_type",
    ),
    ("image/ with no subtype", _raw_event(BRIGHT, media="image/"), 415, "unsupported_media_type"),
    (
        # Joined by API Gateway after a first one with parameters: the comma is in the parameters' part.
        "two content types, the first with a charset",
        _with_header(
            _json_event({"image": _b64(BRIGHT)}), "Content-Type", "application/json; charset=utf-8, text/plain"
        ),
        415,
        "unsupported_media_type",
    ),
    (
        "two content types, joined by API Gateway",
        _with_header(_json_event({"image": _b64(BRIGHT)}), "Content-Type", "application/json, text/plain"),
        415,
        "unsupported_media_type",
    ),
    (
        "identity then gzip",
        _with_header(_json_event({"image": "AAAA"}), "Content-Encoding", "identity, gzip"),
        415,
        "unsupported_media_type",
    ),
    ("json string", _json_event('"hello"'), 422, "invalid_request"),
    ("missing image", _json_event({"explain": True}), 422, "invalid_request"),
    ("extra field", _json_event({"image": _b64(BRIGHT), "patient": "x"}), 422, "invalid_request"),
    ("image not a string", _json_event({"image": 12345}), 422, "invalid_request"),
    ("explain not a bool", _json_event({"image": _b64(BRIGHT), "explain": "yes"}), 422, "invalid_request"),
    ("empty image string", _json_event({"image": ""}), 422, "invalid_request"),
    ("bad base64", _json_event({"image": "not base64 at all!!"}), 400, "invalid_base64"),
    ("bad data url", _json_event({"image": "data:image/png,abc"}), 400, "invalid_base64"),
    ("image of whitespace only", _json_event({"image": "  \n "}), 400, "empty_image"),
    ("empty body", events.rest_event("/predict", "POST", body="", content_type="application/json"), 400, "empty_body"),
    ("no body", events.rest_event("/predict", "POST", body=None, content_type="application/json"), 400, "empty_body"),
    ("not an image", _json_event({"image": _b64(b"just some text, not a picture")}), 415, "not_an_image"),
    ("heic", _json_event({"image": _b64(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200)}), 415, "unsupported_format"),
    ("truncated jpeg", _json_event({"image": _b64(encoded(gradient((128, 128)), "JPEG")[:600])}), 400, "corrupt_image"),
    (
        "decompression bomb",
        _json_event({"image": _b64(png_with_declared_size(50_000, 50_000))}),
        413,
        "image_too_large",
    ),
    ("text content type", _json_event({"image": "x"}, content_type="text/plain"), 415, "unsupported_media_type"),
    (
        "form content type",
        _json_event("image=abc", content_type="application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    (
        "raw garbage",
        events.predict_event(b"\x01\x02\x03garbage", raw=True, media_type="image/png"),
        415,
        "not_an_image",
    ),
    ("get predict", events.rest_event("/predict", "GET"), 405, "method_not_allowed"),
    ("unknown route", events.rest_event("/nope"), 404, "not_found"),
    # A redirect would answer 307 with an empty body, no disclaimer, and the photo to send again.
    ("trailing slash", {**_raw_event(BRIGHT), "path": "/predict/", "resource": "/predict/"}, 404, "not_found"),
    # Valid JSON: orjson refuses the number and the stdlib raises ValueError (not JSONDecodeError) over 4300 digits.
    # It was a 400 "not valid JSON", with advice for Python programmers.
    (
        "json integer over 4300 digits",
        _json_event('{"image": "AAAA", "n": ' + "1" * 4301 + "}"),
        422,
        "invalid_request",
    ),
    # The same number in a body that is not JSON: the number was met first, and the body called valid JSON.
    ("broken json, long integer", _json_event('{"image": "AAAA", "n": ' + "1" * 4301), 400, "malformed_json"),
    ("explain query not a yes or no", _raw_event(BRIGHT, {"explain": "maybe"}), 422, "invalid_request"),
    (
        "explain in the query disagreeing with the json body",
        {**_json_event({"image": _b64(BRIGHT), "explain": False}), "queryStringParameters": {"explain": "true"}},
        422,
        "invalid_request",
    ),
    ("jpeg scan bomb", _raw_event(progressive_jpeg_with_scans(150), media="image/jpeg"), 413, "image_too_large"),
    ("run-length-encoded bmp", _raw_event(bmp_rle8(), media="image/bmp"), 415, "unsupported_format"),
    (
        "svg after a blank line",
        _json_event({"image": _b64(b'\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')}),
        415,
        "unsupported_format",
    ),
    ("tiff offset beyond 2**63", _raw_event(tiff_with_huge_strip_offset(), media="image/tiff"), 400, "corrupt_image"),
    ("lone surrogate in a header", _with_header(_raw_event(BRIGHT), "X-Note", "\udcff"), 400, "invalid_encoding"),
    ("lone surrogate in the query", _raw_event(BRIGHT, {"q": "\ud800"}), 400, "invalid_encoding"),
    # Percent-decoded, not UTF-8: Mangum made it U+FFFD and routing went on (a 404), where `serve` answers 400.
    ("%ff in a REST path", events.rest_event("/predict%ff", "POST", body="x"), 400, "invalid_encoding"),
    ("%C3 alone in an HTTP API path", events.http_api_event("/%C3/predict", "GET"), 400, "invalid_encoding"),
    (
        "%ff in an HTTP API query",
        {**events.predict_event(BRIGHT, http_api=True), "rawQueryString": "explain=%ff"},
        400,
        "invalid_encoding",
    ),
    ("a lone surrogate beside a % in a path", events.rest_event("/predict%41\ud800", "GET"), 400, "invalid_encoding"),
]


@pytest.mark.parametrize(
    ("value", "explained"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("", False)],
)
def test_explain_query_reads_yes_and_no(invoke: Invoke, value: str, explained: bool) -> None:
    status, _, body = invoke(_raw_event(BRIGHT, {"explain": value}))
    assert status == 200
    assert ("heatmap_png" in body) is explained


@pytest.mark.parametrize(
    ("fields", "query", "explained"),
    [
        ({}, "true", True),
        ({}, "no", False),
        ({"explain": True}, "1", True),
        ({"explain": False}, "false", False),
        ({"explain": True}, "", True),
        ({}, "", False),
    ],
)
def test_explain_in_the_query_serves_a_json_body_that_leaves_it_out_or_agrees(
    invoke: Invoke, fields: dict[str, bool], query: str, explained: bool
) -> None:
    status, _, body = invoke(
        {**_json_event({"image": _b64(BRIGHT), **fields}), "queryStringParameters": {"explain": query}}
    )
    assert status == 200, body
    assert ("heatmap_png" in body) is explained


def test_an_uncompressed_body_may_say_so(invoke: Invoke) -> None:
    status, _, body = invoke(_with_header(_json_event({"image": _b64(BRIGHT)}), "Content-Encoding", "identity"))
    assert status == 200, body


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ('application/json; profile="a,b"', False),
        ('image/png; name="eye, left.png"', True),
        ('image/png; name="say \\"hi\\", then", q=1', None),  # the comma after the quoted string: two types
        ('image/png; name="a\\",b"', True),  # an escaped quote does not end the string: its comma is inside
    ],
    ids=["json-quoted-comma", "image-quoted-comma", "comma-after-escaped-quote", "comma-after-an-escaped-quote-inside"],
)
def test_a_comma_inside_a_quoted_parameter_is_one_content_type(invoke: Invoke, content_type: str, raw: Any) -> None:
    # RFC 9110 lets a quoted parameter hold a comma: it was refused as "more than one Content-Type".
    event = _raw_event(BRIGHT) if raw else _json_event({"image": _b64(BRIGHT)})
    status, _, body = invoke(_with_header(event, "Content-Type", content_type))
    if raw is None:
        assert status == 415 and "more than one Content-Type" in body["error"]["message"], body
    else:
        assert status == 200, body


@pytest.mark.parametrize(
    ("data", "media"),
    [(jpeg_with_malformed_exif(), "image/jpeg"), (png_with_truncated_exif(), "image/png")],
    ids=["jpeg-bad-tag-type", "png-exif-that-raises"],
)
def test_a_photo_with_malformed_exif_is_screened(invoke: Invoke, data: bytes, media: str) -> None:
    # Only the PNG's EXIF raises when read (imaging's test says which path each takes).
    status, _, body = invoke(_raw_event(data, media=media))
    assert status == 200 and body["label"] in ("cataract", "normal", "ungradable")


@pytest.mark.parametrize(("case", "event", "status", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_a_json_4xx(invoke: Invoke, case: str, event: dict[str, Any], status: int, code: str) -> None:
    got, headers, body = invoke(event)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "not a diagnosis" in body["disclaimer"].lower()


@pytest.mark.parametrize("request_id", [None, ""])
def test_the_handlers_own_refusal_has_the_invocations_id_when_the_event_has_none(
    invoke: Invoke, request_id: str | None
) -> None:
    # A console test event or a direct invoke carries no requestContext.requestId: the app's answers fell back to
    # the invocation's id, the handler's own 400s had none (body, header and log line).
    event = events.rest_event("/predict%ff", "POST", body="x")
    if request_id is None:
        del event["requestContext"]["requestId"]
    else:
        event["requestContext"]["requestId"] = request_id
    status, headers, body = invoke(event)
    assert status == 400 and body["error"]["code"] == "invalid_encoding"
    assert body["request_id"] == headers["x-request-id"] == "test-invocation-id"


def test_body_over_the_lambda_limit_is_413(invoke: Invoke) -> None:
    big = "A" * (6 * 1024 * 1024 + 10)
    status, _, body = invoke(_json_event({"image": big}))
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_a_configured_disclaimer_is_on_every_kind_of_response(
    tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import FakeLambdaContext, load_handler

    words = "Clinic pilot: a screening aid only, never a diagnosis."
    module = load_handler(tiny_model_dir, monkeypatch, DISCLAIMER=words)
    flagged = events.rest_event("/predict", "POST", body="ab$=", content_type="image/jpeg", is_base64=True)
    cases = {
        "prediction": _json_event({"image": _b64(BRIGHT)}),
        "health": events.rest_event("/health"),
        "model": events.rest_event("/model"),
        "app error": _json_event({"image": "not base64 at all!!"}),
        "handler error": flagged,
        "unknown route": events.rest_event("/nope"),
    }
    for case, event in cases.items():
        response = module.lambda_handler(event, FakeLambdaContext())
        assert json.loads(response["body"])["disclaimer"] == words, case


def test_the_response_reports_the_models_own_threshold(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import FakeLambdaContext, load_handler
    from tests.support.onnx_models import build_tiny_model

    module = load_handler(build_tiny_model(tmp_path / "m", threshold=0.2), monkeypatch)
    response = module.lambda_handler(_json_event({"image": _b64(BRIGHT)}), FakeLambdaContext())
    assert json.loads(response["body"])["threshold"] == 0.2


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("req-42.a:b_c", True), ("has space", False), ("<script>", False), ("x" * 129, False), ("", False)],
)
def test_a_client_request_id_is_used_only_when_it_is_plain(sent: str, echoed: bool) -> None:
    """Under `serve` there is no gateway id: the client's X-Request-Id is echoed into headers and logs, so only
    a plain token is; anything else gets a fresh id."""
    from cataract_inference.api import request_id_of

    got = request_id_of({"type": "http", "headers": [(b"x-request-id", sent.encode())]})
    assert (got == sent) == echoed
    assert echoed or len(got) == 36  # a uuid4


def test_body_limit_is_configurable(tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import FakeLambdaContext, load_handler

    module = load_handler(tiny_model_dir, monkeypatch, MAX_BODY_BYTES="1000")
    response = module.lambda_handler(_json_event({"image": _b64(BRIGHT) * 20}), FakeLambdaContext())
    assert response["statusCode"] == 413
    # The limit itself is allowed, one byte more is not: by the bytes received, and by a declared length.
    for size, declared in ((1000, False), (1001, False), (1000, True), (1001, True)):
        body = '{"image": "' + "A" * (size - 13) + '"}'
        assert len(body) == size
        event = _json_event(body)
        if declared:
            event = _with_header(event, "Content-Length", str(size))
        status = module.lambda_handler(event, FakeLambdaContext())["statusCode"]
        assert (status == 413) is (size > 1000), (size, declared, status)


def test_non_http_event_fails_the_invocation(handler: Any) -> None:
    from tests.conftest import FakeLambdaContext

    with pytest.raises(TypeError, match="API Gateway"):
        handler.lambda_handler({"hello": "world"}, FakeLambdaContext())


def _with_bad_port(event: dict[str, Any], field: str, name: str, value: Any) -> dict[str, Any]:
    """``event`` with the header set as API Gateway sets it: a REST event carries it in both header maps."""
    changed = dict(event)

    def put(where: str, given: Any) -> None:
        headers = {k: v for k, v in (event.get(where) or {}).items() if k.lower() != name.lower()}
        changed[where] = {**headers, name: given}

    if field == "multiValueHeaders":
        put("multiValueHeaders", value)
        put("headers", value[-1])  # the single-value map keeps the last
    else:
        put("headers", value)
        if "multiValueHeaders" in event:
            put("multiValueHeaders", [value])
    return changed


_BAD_PORTS = [
    ("headers", "X-Forwarded-Port", "443,80"),  # a client's own header, passed on (Kludex/mangum#303)
    ("headers", "x-forwarded-port", "abc"),
    ("headers", "Host", "example.com:"),
    ("headers", "Host", "[::1]:443"),
    ("headers", "X-Forwarded-Port", "9" * 4301),  # digits, but over int()'s 4300
    ("headers", "Host", "localhost:" + "9" * 4301),
]


@pytest.mark.parametrize(
    ("http_api", "field", "name", "value"),
    [(False, *bad) for bad in _BAD_PORTS]
    + [(True, *bad) for bad in _BAD_PORTS]
    # REST only (an HTTP API joins a repeated header with commas itself): Mangum joins them, "443, 80".
    + [(False, "multiValueHeaders", "X-Forwarded-Port", ["443", "80"])],
)
def test_a_port_header_that_is_not_one_port_number_is_not_an_invocation_error(
    invoke: Invoke, http_api: bool, field: str, name: str, value: str | list[str]
) -> None:
    # Mangum int()s them for the ASGI scope: any such request, to any path, crashed the invocation (a 502).
    make = events.http_api_event if http_api else events.rest_event
    status, _, body = invoke(_with_bad_port(make("/health", "GET"), field, name, value))
    assert status == 200 and body["status"] == "ok"
    predict = make("/predict", "POST", body=json.dumps({"image": _b64(BRIGHT)}), content_type="application/json")
    status, _, body = invoke(_with_bad_port(predict, field, name, value))
    assert status == 200 and body["label"] == "cataract"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # Each passed the check, then crashed inside Mangum with a traceback instead of this message.
        (lambda e: e.update(headers=None), "headers must be an object"),
        (lambda e: e["requestContext"]["http"].pop("sourceIp"), "sourceIp"),
        # A hand-written id: "é" ended invoke on a codec error naming no field, "\ud800" on a plain-text 500.
        (lambda e: e["requestContext"].update(requestId="\u00e9"), "requestId must be a string of printable ASCII"),
        (lambda e: e["requestContext"].update(requestId="\ud800"), "requestId must be a string of printable ASCII"),
        (lambda e: e["requestContext"].update(requestId=7), "requestId must be a string of printable ASCII"),
    ],
)
def test_http_api_events_mangum_cannot_run_are_named(change: Any, problem: str) -> None:
    event = events.http_api_event("/health", "GET")
    change(event)
    assert problem in (events.event_problem(event) or "")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda e: e.pop("resource"), "resource must be a string"),
        (lambda e: e["requestContext"].update(identity=None), "identity must be an object"),
    ],
)
def test_rest_events_mangum_cannot_run_are_named(handler: Any, change: Any, problem: str) -> None:
    from tests.conftest import FakeLambdaContext

    event = events.rest_event("/health", "GET")
    change(event)
    with pytest.raises(TypeError, match=problem):
        handler.lambda_handler(event, FakeLambdaContext())


def test_heat_map_is_drawn_on_a_sharp_copy_of_a_large_photo(invoke: Invoke) -> None:
    # The model decodes a reduced JPEG draft (32 px input here); the overlay must not inherit that blur.
    photo = encoded(gradient((1600, 1200)), "JPEG", quality=90)
    status, _, body = invoke(_json_event({"image": _b64(photo), "explain": True}))
    assert status == 200
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert overlay.size == (512, 384)


# Bodies orjson refuses or reads differently from the stdlib: each must get the answer the stdlib parser gives.
JSON_EDGE_BODIES: list[tuple[str, bytes]] = [
    ("plain", b'{"image": "aGk=", "explain": true}'),
    ("NaN", b'{"image": "aGk=", "explain": NaN}'),
    ("integer over 64 bits", b'{"image": "aGk=", "explain": 123456789012345678901234567890}'),
    ("escaped lone surrogate", b'{"image": "\\ud800"}'),
    ("UTF-8 byte-order mark", b'\xef\xbb\xbf{"image": "aGk="}'),
    ("UTF-16", '{"image": "aGk="}'.encode("utf-16-le")),
    ("duplicate keys", b'{"image": "a", "image": "aGk="}'),
    ("duplicate keys after a byte-order mark", b'\xef\xbb\xbf{"image": "a", "image": "aGk="}'),
    ("nested 2,000 deep", b"[" * 2000 + b"]" * 2000),
    ("truncated", b'{"image": '),
    ("invalid UTF-8", b'{"image": "\xff"}'),
]


@pytest.mark.parametrize("body", [b for _, b in JSON_EDGE_BODIES], ids=[n for n, _ in JSON_EDGE_BODIES])
def test_json_fast_path_answers_as_the_stdlib_does(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    """Same status and error code with orjson in front as with the stdlib alone."""
    from cataract_inference import api

    event = events.rest_event("/predict", "POST", body=base64.b64encode(body).decode(), content_type="application/json")
    event["isBase64Encoded"] = True
    fast_status, _, fast = invoke(event)
    # The stdlib as the app uses it: refusing a repeated key, which it would otherwise keep the last of.
    monkeypatch.setattr(api, "_load_json", partial(json.loads, object_pairs_hook=api._refuse_repeated_keys))
    slow_status, _, slow = invoke(event)
    assert fast_status == slow_status
    assert (fast.get("error") or {}).get("code") == (slow.get("error") or {}).get("code")
    assert fast_status == 200 or 400 <= fast_status < 500


def test_the_stdlib_parses_only_what_orjson_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed body never reaches the stdlib parser; a NaN, which orjson refuses, does."""
    from cataract_inference import api

    stdlib_loads = json.loads
    calls: list[str | bytes] = []

    def counted_loads(b: str | bytes, **kwargs: Any) -> Any:
        calls.append(b)
        return stdlib_loads(b, **kwargs)

    monkeypatch.setattr(api.json, "loads", counted_loads)
    assert api._load_json(b'{"image": "aGk="}') == {"image": "aGk="}
    assert api._load_json(b'{"image": "aGk=", "explain": true}') == {"image": "aGk=", "explain": True}
    assert calls == []
    with pytest.raises(api.ClientError, match="'image' is given more than once"):
        api._load_json(b'{"image": "aGk=", "image": "aGk="}')
    assert len(calls) == 1  # the second, hooked parse that names the key
    calls.clear()
    # Escapes alone (PHP writes "\/", .NET "\u002B", both in base64) need no second parse; a repeated key still does.
    assert api._load_json(b'{"image": "aGk\\/\\u002B"}') == {"image": "aGk/+"}
    assert calls == []
    with pytest.raises(api.ClientError, match="'image' is given more than once"):
        api._load_json(b'{"image": "a\\/", "image": "aGk\\/"}')
    calls.clear()
    assert api._load_json(b'{"x": NaN}')["x"] != 0
    assert calls == ['{"x": NaN}']  # decoded strictly first


def test_our_own_fault_is_a_json_500_that_keeps_the_detail_in_the_log(
    handler: Any, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a detail the client must not see")

    monkeypatch.setattr(handler.classifier, "predict_bytes", broken)
    event = _json_event({"image": _b64(BRIGHT)})
    status, headers, body = invoke(event)
    assert status == 500
    assert body["error"]["code"] == "internal_error" and "detail" not in json.dumps(body)
    assert body["request_id"] == event["requestContext"]["requestId"] == headers["x-request-id"]
    assert "not a diagnosis" in body["disclaimer"].lower()


def test_a_wide_photo_reports_the_views_it_was_screened_as(invoke: Invoke) -> None:
    wide = Image.new("RGB", (200, 50), (20, 20, 20))
    wide.paste((250, 250, 250), (150, 0, 200, 50))
    _, _, body = invoke(_raw_event(encoded(wide, "PNG")))
    assert set(body["views"]) == {"whole", "left", "right"}
    assert body["label"] == "cataract" and body["probabilities"]["cataract"] == body["views"]["right"]
    _, _, narrow = invoke(_raw_event(DARK))
    assert "views" not in narrow


@pytest.mark.parametrize("json_body", [False, True])
@pytest.mark.parametrize(
    "query", ["explain=true&explain=false", "explain=1&explain=no", "explain=true&explain=", "explain=&explain=true"]
)
def test_explain_given_twice_with_different_values_is_refused(invoke: Invoke, query: str, json_body: bool) -> None:
    # Beside a JSON body, a last value that was empty once made the query count as absent: 200, no heat map.
    event = _json_event({"image": _b64(BRIGHT)}) if json_body else _raw_event(BRIGHT)
    pairs = [pair.split("=") for pair in query.split("&")]
    event["queryStringParameters"] = {pairs[-1][0]: pairs[-1][1]}
    event["multiValueQueryStringParameters"] = {"explain": [value for _, value in pairs]}
    status, _, body = invoke(event)
    assert status == 422 and "more than once" in body["error"]["message"]


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_json_nested_too_deeply_is_malformed_json(invoke: Invoke, depth: int) -> None:
    body = "[" * depth + "]" * depth
    status, _, answer = invoke(events.rest_event("/predict", "POST", body=body, content_type="application/json"))
    assert (status, answer["error"]["code"]) == (400, "malformed_json")
    assert answer["error"]["message"] == "the JSON is nested too deeply"


@pytest.mark.parametrize(
    "fault",
    [ValueError("a bug of ours"), UnicodeEncodeError("utf-8", "x", 0, 1, "a bug of ours")],
    ids=["ValueError", "UnicodeEncodeError"],
)
def test_the_handler_blames_the_client_only_for_what_the_client_sent(
    handler: Any, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    # The handler answers 400 invalid_base64 / invalid_encoding for these errors only when the event's body or
    # strings are the cause; on a well-formed event the same error is ours and must stay an invocation error.
    from tests.conftest import FakeLambdaContext

    def broken(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise fault

    monkeypatch.setattr(handler, "asgi_handler", broken)
    event = events.rest_event("/predict", "POST", body=base64.b64encode(b"ok").decode(), content_type="image/png")
    event["isBase64Encoded"] = True
    with pytest.raises(type(fault), match="a bug of ours"):
        handler.lambda_handler(event, FakeLambdaContext())


def test_get_model_names_the_training_data_without_the_training_machines_path(bundled_model_dir: Path) -> None:
    from cataract_inference.manifest import load_manifest

    manifest = load_manifest(bundled_model_dir / "model.json")
    assert manifest.training_data["source"].startswith("/")  # model.json keeps where training read it
    view = manifest.public_view()
    assert view["training_data"]["source"] == "cataract-eyes/train"
    assert "/work/" not in json.dumps(view)
    windows = manifest.model_copy(update={"training_data": {"source": "C:\\Users\\me\\eyes\\train"}})
    assert windows.public_view()["training_data"]["source"] == "eyes/train"
    # An audit finding quoting an unreadable photo's full path, and a folder right under the root.
    finding = "UNREADABLE: cataract/x.png (FileNotFoundError: '/srv/data/eyes/cataract/x.png')"
    served = manifest.model_copy(
        update={"training_data": {"source": "/srv/data/eyes", "findings": [finding]}}
    ).public_view()["training_data"]
    assert served["findings"] == ["UNREADABLE: cataract/x.png (FileNotFoundError: 'data/eyes/cataract/x.png')"]
    rooted = manifest.model_copy(update={"training_data": {"source": "/data"}})
    assert rooted.public_view()["training_data"]["source"] == "data"
