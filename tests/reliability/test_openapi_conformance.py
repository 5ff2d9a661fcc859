"""The running API keeps to its own published OpenAPI document (``GET /openapi.json``), checked by schemathesis.

The app is built on the tiny test model and called in-process (ASGI, no server). Schemathesis reads the document
from the app itself and, for every documented operation, runs its coverage phase (boundary values, missing and
mistyped fields, undocumented methods and content types) and a bounded, derandomized fuzzing phase in positive
and negative modes, then its checks on every answer: status documented, content type, response schema and headers,
no server error, schema-valid requests accepted and schema-invalid ones refused.

Random data alone seldom gets past the decoder (a random ``image`` string is not base64 of a photo), so this
schema's own hooks (no global registration) make many requests carry a real small drawn image: base64 or a data:
URL in JSON, raw bytes for ``image/*`` and ``application/octet-stream``. Such a schema-valid request must be
screened (200), which is what caught a JSON body beside ``?explain=false`` being refused with a 422. The hooks also
mix in two wire-level variants the document describes in words: JSON that is not valid UTF-8 (a 400
``malformed_json``) and a compressed body (a 415 ``unsupported_media_type``).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, HookContext, Response
from schemathesis.core import NOT_SET
from schemathesis.transport.serialization import Binary

from cataract_inference import api
from cataract_inference.classifier import load_classifier
from cataract_inference.drawing import draw_eye, encode
from cataract_inference.settings import Settings

pytestmark = pytest.mark.slow

# Fuzzing examples per operation (the coverage phase adds its own fixed cases: about 60 for /predict).
MAX_EXAMPLES = 100

# Small drawn eyes (never photos): each format the document names, and one photo twice as wide as it is high,
# which is screened as two halves too and answers with `views`.
_EYES = {
    "image/png": encode(draw_eye("normal", size=(72, 48), seed=1), "PNG"),
    "image/jpeg": encode(draw_eye("cataract", size=(72, 48), seed=2), "JPEG"),
    "image/webp": encode(draw_eye("cataract", size=(72, 48), seed=3), "WEBP", quality=70),
}
_WIDE = encode(draw_eye("normal", size=(96, 40), seed=4, centre=(0.25, 0.5)), "PNG")
RAW_IMAGES = [*_EYES.values(), _WIDE]
# A raw body must be what its Content-Type names (schemathesis sniffs it); `image/*` and octet-stream take any.
RAW_BY_TYPE = {
    "image/png": [_EYES["image/png"], _WIDE],
    "image/jpeg": [_EYES["image/jpeg"]],
    "image/webp": [_EYES["image/webp"]],
}
JSON_IMAGES = [
    *(base64.b64encode(data).decode() for data in RAW_IMAGES),
    "data:image/jpeg;base64," + base64.b64encode(_EYES["image/jpeg"]).decode(),
    base64.urlsafe_b64encode(_EYES["image/webp"]).decode().rstrip("="),  # URL-safe, unpadded
]
# JSON bodies a client could send that are not JSON: invalid UTF-8 inside a string (bytes no UTF-8 text has, an
# encoded lone surrogate, a broken sequence), a truncated object.
MALFORMED_JSON = [
    b'{"image": "\xff\xfe\xfd"}',
    b'{"image": "\xed\xa0\x80' + JSON_IMAGES[0][:40].encode() + b'"}',
    b'{"image": "' + JSON_IMAGES[0][:40].encode() + b"\xc3\x28" + b'"}',
    b'{"image": "' + JSON_IMAGES[1][:40].encode(),
]
# `?explain=` values the document's pattern allows, lower-cased (any case is allowed; empty reads as false).
QUERY_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
# What the API may say to a schema-valid request: the document's schemas cannot express that `image` must be base64
# of a readable image, so 400/413/415 about the content are allowed. A 422 (the request's shape) is never allowed.
CONTENT_REFUSALS = {
    400: {"invalid_base64", "empty_body", "empty_image", "corrupt_image"},
    413: {"image_too_large", "payload_too_large"},
    415: {"not_an_image", "unsupported_format"},
}


def _mode(case: Case) -> GenerationMode | None:
    return case.meta.generation.mode if case.meta is not None else None


def _is_json(case: Case) -> bool:
    return case.media_type == "application/json"


def _has_image_field(case: Case) -> bool:
    """A JSON object whose `image` is a non-empty string: replacing it keeps the case as valid (or invalid) as it was,
    since the only ways to break that field are another type or the empty string."""
    image = case.body.get("image") if _is_json(case) and isinstance(case.body, dict) else None
    return isinstance(image, str) and image != ""


def _raw_images(case: Case) -> list[bytes]:
    return RAW_BY_TYPE.get(case.media_type or "", RAW_IMAGES)


def _with_body(case: Case, body: Any) -> Case:
    """``case`` with another body, judged valid or invalid again by schemathesis (it calls any raw body invalid)."""
    derived = case.derive()
    derived.body = body
    return derived


def _with_image(case: Case, body: Any) -> Case:
    """``case`` with a real image in place of its generated one, keeping its metadata (its generation mode).

    The image is of the format the Content-Type names, or a non-empty string in place of a non-empty string: the case
    stays exactly as valid as it was. Schemathesis would re-judge any changed raw body invalid, so the case is rebuilt
    around the new body rather than assigned it.
    """
    return Case(
        case.operation,
        case.method,
        case.path,
        path_parameters=dict(case.path_parameters),
        headers=case.headers.copy(),
        cookies=dict(case.cookies),
        query=dict(case.query),
        body=body,
        media_type=case.media_type,
        multipart_content_types=case.multipart_content_types,
        meta=copy.deepcopy(case.meta),
    )


def _json_image(case: Case, image: str) -> Case:
    assert isinstance(case.body, dict)
    return _with_image(case, {**case.body, "image": image})


def _gzipped(case: Case) -> Case:
    if _is_json(case):
        data = gzip.compress(json.dumps(case.body).encode())
        derived = _with_body(case, data)
    else:
        assert isinstance(case.body, Binary)  # a positive raw body
        derived = _with_body(case, Binary(gzip.compress(case.body.data)))
    derived.headers["Content-Encoding"] = "gzip"
    return derived


def map_case(context: HookContext, case: Case) -> Case:
    """Every phase: keep positive cases to the rule the document states in words, and give coverage cases images.

    With a JSON body, ``?explain=`` must agree with the body's ``explain`` when both are given (a disagreement is a
    documented 422); the coverage phase's positive cases (its fixed, schema-valid requests) get a real image.
    """
    if _mode(case) != GenerationMode.POSITIVE or case.body is NOT_SET:
        return case
    if _is_json(case) and isinstance(case.body, dict):
        explain, query = case.body.get("explain"), case.query.get("explain")
        if isinstance(explain, bool) and isinstance(query, str) and QUERY_FLAGS.get(query.lower()) is not explain:
            case.query = {**case.query, "explain": str(explain).lower()}
    meta = case.meta
    if meta is None or meta.phase.name != "coverage":
        return case
    pick = zlib.crc32(repr((case.media_type, sorted(case.query.items()))).encode())
    if _has_image_field(case):
        return _json_image(case, JSON_IMAGES[pick % len(JSON_IMAGES)])
    if not _is_json(case):
        raw = _raw_images(case)
        return _with_image(case, Binary(raw[pick % len(raw)]))
    return case


def flatmap_case(context: HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Fuzzing: the generated case as it is, or with a real image, or (sometimes) sent malformed or compressed."""
    if case.body is NOT_SET:
        return st.just(case)
    positive = _mode(case) == GenerationMode.POSITIVE
    variants: list[st.SearchStrategy[Case]] = [st.just(case)]
    if _has_image_field(case):
        variants.append(st.sampled_from(JSON_IMAGES).map(lambda image: _json_image(case, image)))
    elif positive and not _is_json(case):
        variants.append(st.sampled_from(_raw_images(case)).map(lambda data: _with_image(case, Binary(data))))
    if _is_json(case) and not positive:
        variants.append(st.sampled_from(MALFORMED_JSON).map(lambda data: _with_body(case, data)))
    if positive:
        variants.append(st.just(case).map(_gzipped))
    return st.one_of(variants)


@pytest.fixture(scope="module")
def api_schema(tiny_model_dir: Path) -> Any:
    """The app's own document, loaded from the app, with this module's generation settings and hooks."""
    settings = replace(Settings.from_env({}), model_dir=tiny_model_dir)
    app = api.create_app(load_classifier(tiny_model_dir), settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,  # the same examples every run; no seed or failure blobs to carry
        database="none",  # nothing written under .hypothesis
        # x-api-key is checked by API Gateway on AWS, not by the app (`serve` needs none): sending it, or not, is
        # no test of the app.
        with_security_parameters=False,
    )
    # Every built-in check runs (not_a_server_error, status_code_, content_type_, response_schema_ and
    # response_headers_conformance, positive_data_acceptance, negative_data_rejection, missing_required_header,
    # unsupported_method, allow_header_conformance; the stateful ones have no links to follow here), except:
    # ignored_auth: the key is API Gateway's to enforce (a 403 before the app runs, template.yaml); the app ignores it.
    schema.config.checks.update(excluded_check_names=["ignored_auth"])
    # Positive data may be refused for its content only (CONTENT_REFUSALS); a 422 for a schema-valid request fails.
    schema.config.checks.positive_data_acceptance.expected_statuses = ["2xx", *map(str, CONTENT_REFUSALS)]
    # Scoped to this schema object (and its clones), so nothing leaks into other modules' generation.
    schema.hooks.hook("map_case")(map_case)
    schema.hooks.hook("flatmap_case")(flatmap_case)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


def _error_code(response: Response) -> str | None:
    body = response.json()
    return body["error"]["code"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else None


def _carries_real_image(case: Case) -> bool:
    if _has_image_field(case):
        assert isinstance(case.body, dict)
        return case.body["image"] in JSON_IMAGES
    return isinstance(case.body, Binary) and case.body.data in RAW_IMAGES


# What the run sent and got, for the test after it: proof that the hooks still shape the data (a schemathesis
# upgrade that ignored them would otherwise leave a test that passes on random strings alone).
SENT: Counter[str] = Counter()


def _tally(case: Case, status: int) -> None:
    SENT[case.operation.label] += 1
    SENT[f"{case.operation.label} {_mode(case)}"] += 1
    if _carries_real_image(case) and status == 200:
        SENT["json image screened" if _is_json(case) else "raw image screened"] += 1
        if _is_json(case) and "explain" in case.query:
            SENT["json image screened with ?explain="] += 1


@schema.parametrize()
def test_the_api_keeps_to_its_openapi_document(case: Case) -> None:
    response = case.call_and_validate()
    _tally(case, response.status_code)
    if case.operation.path != "/predict" or case.body is NOT_SET:
        return
    code = _error_code(response) if response.status_code != 200 else None
    sent = f"{case.method} {case.path}?{case.query} {case.media_type} {case.headers.get('Content-Encoding')}"
    if case.headers.get("Content-Encoding") == "gzip":
        SENT["compressed"] += 1
        assert (response.status_code, code) == (415, "unsupported_media_type"), (sent, response.text[:300])
    elif _is_json(case) and case.body in MALFORMED_JSON:
        SENT["malformed json"] += 1
        assert (response.status_code, code) == (400, "malformed_json"), (sent, response.text[:300])
    elif _mode(case) == GenerationMode.POSITIVE:
        if _carries_real_image(case):
            assert response.status_code == 200, (sent, response.text[:300])
        elif response.status_code != 200:
            assert code in CONTENT_REFUSALS.get(response.status_code, set()), (sent, response.text[:300])


def test_the_conformance_run_reached_every_operation_and_the_screening_path(request: pytest.FixtureRequest) -> None:
    conformance = "test_the_api_keeps_to_its_openapi_document"
    if not any(getattr(item, "originalname", item.name) == conformance for item in request.session.items):
        pytest.skip(f"tallies the run of {conformance}, which was not selected")
    # Selected, so it ran first (file order); sending nothing at all would otherwise pass unseen.
    for label in ("POST /predict", "GET /health", "GET /model"):
        assert SENT[label] > 0, SENT
    for mode in GenerationMode:
        assert SENT[f"POST /predict {mode}"] > 0, SENT
    for variant in ("json image screened", "json image screened with ?explain=", "raw image screened"):
        assert SENT[variant] >= 3, SENT
    assert SENT["malformed json"] > 0 and SENT["compressed"] > 0, SENT
