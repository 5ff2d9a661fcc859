"""Request and response models of the HTTP contract (see the README's API section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .manifest import Manifest

# On every answer. nosniff: a browser must not run JSON, or an error, as HTML or script. no-referrer: the docs
# pages load their viewer from a CDN, and a Referer would tell it this function's private URL.
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SAFETY_HEADERS_RAW = [(name.lower().encode("ascii"), value.encode("ascii")) for name, value in SAFETY_HEADERS.items()]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class PredictRequest(BaseModel):
    """``POST /predict`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(
        description="The photo, base64-encoded (standard or URL-safe alphabet), or a data: URL. An animation or a "
        "multi-page TIFF is screened on its first frame or page only.",
        min_length=1,
    )
    explain: bool = Field(False, description="Also return a class-activation heat map as a base64 PNG overlay.")


class QualityOut(BaseModel):
    """The gradability gate's verdict."""

    gradable: bool
    reasons: list[str] = Field(description='One "code: explanation" each, e.g. "too_dark: the photo is underexposed".')
    scores: dict[str, float] = Field(
        description="brightness, contrast and sharpness of the input; ood_distance and mid_distance when the model "
        "outputs them."
    )


class ModelInfo(BaseModel):
    """Which model answered."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    sha256: str


class PredictResponse(BaseModel):
    """A screening result."""

    label: Literal["cataract", "normal", "ungradable"] | str = Field(
        description="cataract whenever the cataract probability reaches threshold, even below 0.5 (the threshold "
        "favours sensitivity), else normal; ungradable when the photo cannot be judged (see quality.reasons)."
    )
    probabilities: dict[str, Probability] = Field(
        description="Class probabilities, temperature-scaled (roughly calibrated on held-out photos of the training "
        "source, half of them cataracts: at a lower prevalence they overstate the chance), one per class, 6 decimals; "
        "they sum to 1 within rounding (1e-6 per class). For a wide photo, the most suspicious view's (biased "
        "upwards); not meaningful when the label is ungradable."
    )
    referral: bool = Field(description="True when the photo should be seen by an eye-care professional.")
    threshold: Probability = Field(description="The cataract probability at or above which a photo is referred.")
    quality: QualityOut
    model: ModelInfo
    request_id: str
    timing_ms: dict[str, float]
    heatmap_png: str | None = Field(
        None,
        description="With explain=true: base64 PNG of the heat map of the view that decided, over the photo. For a "
        "photo screened as two halves too (see views), when a half decided it is that half's map, drawn over that half "
        "only; the rest of the photo is left as sent.",
    )
    views: dict[str, Probability] | None = Field(
        None,
        description="Only for a photo at least twice as long as it is high, which may show both eyes: the cataract "
        "probability of the whole photo and of each half (left and right, or top and bottom). Each half is "
        "screened too, and probabilities are those of the most suspicious view. A half the quality gate refuses on "
        "its own (a blank band beside an eye) is left out and cannot decide.",
    )
    disclaimer: str


class HealthResponse(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]
    model: ModelInfo
    disclaimer: str


class ModelDescription(Manifest):
    """``GET /model``: the served model's manifest (``model.json``), as training wrote it."""

    disclaimer: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str = Field(
        description="Stable and machine-readable. From the app: malformed_json, invalid_base64, invalid_encoding, "
        "empty_body, empty_image, corrupt_image (400); payload_too_large, image_too_large (413); not_an_image, "
        "unsupported_format, unsupported_media_type (415); invalid_request (422); not_found (404); "
        "method_not_allowed (405); request_timeout (408, the local runner only: the headers or the body stalled); "
        "malformed_request (400, the local runner only: not valid HTTP/1.1, or both Content-Length and "
        "Transfer-Encoding); "
        "headers_too_large (431, the local runner only: the request line and headers are over 64 KiB); "
        "uri_too_long (414, the local runner only: the request line is over 64 KiB); "
        "invalid_host (400, the local runner on loopback only: a Host that is not localhost or a loopback "
        "address such as 127.0.0.1 or [::1]); "
        "internal_error (500); overloaded (503, the local runner only: too many open connections, retry). "
        "From API Gateway: invalid_api_key, gateway_error (403); "
        "throttled, quota_exceeded (429); internal_error (502: the function failed, crashed or timed out); "
        "timeout (504). New codes may be added: treat unknown ones by status."
    )
    message: str = Field(description="For people: what was wrong and what to do.")


class ErrorResponse(BaseModel):
    """``{"error": {"code": ..., "message": ...}}`` with a 4xx (or, for our own faults, 5xx) status."""

    error: ErrorBody
    request_id: str | None = None
    disclaimer: str
