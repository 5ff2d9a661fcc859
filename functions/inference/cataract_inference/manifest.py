"""The model manifest (``model.json``): what a model is, how to feed it and how to read its outputs.

Training writes it, serving reads it; both go through these models so the two can never disagree
on a field.
"""

from __future__ import annotations

import json
import numbers
import re
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_FILENAME = "model.json"
MODEL_FILENAME = "model.onnx"
CARD_FILENAME = "MODEL_CARD.md"  # baked in beside the model; serving never reads it
SCHEMA_VERSION = 1
# Keys the gate block may carry besides its thresholds (written by `python -m cataract_training.gate`).
GATE_EXTRAS = frozenset({"calibration", "eye_score", "eye_probe"})

# A number in model.json: an int or a float, never a bool or a string, never NaN or infinite.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# A whole number in model.json: an int, never a bool, a float or a string.
Integer = Annotated[int, Field(strict=True)]
# Preprocessing normalises pixel values of 0..1, so a std is their spread: at most 0.5 (1 leaves them unscaled, 1/255
# feeds 0..255). Below this the model's input reaches thousands and more: 1e-36 overflowed float32, a 500 per request.
MIN_STD = 0.001
# Below this crop fraction the photo's shorter side is first scaled past twice the input (2048 px at size 1024);
# 0.01 scaled every photo to ~22400 px, a MemoryError per request. Training writes 0.875, the usual ImageNet crop.
MIN_CROP_FRACTION = 0.5
# The numbers of gate.eye_score and gate.eye_probe (quality.EyeScore and EyeProbe), which float() would also
# take from a bool or a string.
EYE_BLOCK_NUMBERS = {
    "eye_score": ("bias", "w_distance", "w_skin", "centre", "scale", "skin_floor", "min_score"),
    "eye_probe": ("bias", "min_score"),
}
EYE_BLOCK_VECTORS = {"eye_probe": ("mean", "weights")}


class ManifestError(ValueError):
    """The manifest is missing, unreadable or inconsistent."""


class InputSpec(BaseModel):
    """How an RGB image becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = "input"
    size: Integer = Field(224, ge=16, le=1024)
    resize: Literal["letterbox", "squash", "center_crop"] = "letterbox"
    interpolation: Literal["bilinear", "bicubic", "lanczos"] = "bilinear"
    crop_fraction: Number = 0.875
    mean: tuple[Number, Number, Number] = (0.485, 0.456, 0.406)
    std: tuple[Number, Number, Number] = (0.229, 0.224, 0.225)
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"

    @field_validator("crop_fraction")
    @classmethod
    def _crop_fraction_is_sane(cls, fraction: float) -> float:
        if not MIN_CROP_FRACTION <= fraction <= 1.0:
            raise ValueError(
                f"crop_fraction {fraction} is outside {MIN_CROP_FRACTION}..1: it is the share of the scaled photo's "
                f"shorter side the model sees (0.875 as training writes it), and below {MIN_CROP_FRACTION} every photo "
                "would first be scaled to more than twice the input size"
            )
        return fraction

    @field_validator("mean")
    @classmethod
    def _mean_is_a_pixel_value(cls, mean: tuple[float, float, float]) -> tuple[float, float, float]:
        # Also the padding colour (fill_rgb), which must be a colour.
        if not all(0.0 <= m <= 1.0 for m in mean):
            raise ValueError(f"every mean must lie within 0..1, the pixel values it is the mean of; not {list(mean)}")
        return mean

    @field_validator("std")
    @classmethod
    def _std_is_a_spread_of_pixel_values(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(MIN_STD <= s <= 1.0 for s in std):
            why = (
                f"below {MIN_STD} the model's input reaches thousands, and 1e-36 overflows"
                if min(std) < MIN_STD
                else "above 1 it would be wider than the 0..1 values it is the spread of"
            )
            raise ValueError(
                f"every std must lie within {MIN_STD}..1 (a spread of pixel values of 0..1, by which they are "
                f"divided), not {list(std)}: {why}"
            )
        return std

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        """The colour that normalises to zero: used for padding and transparency."""
        r, g, b = (round(m * 255) for m in self.mean)
        return (r, g, b)


# The label of a photo the gate refuses (always referred): no class of a model may take it.
UNGRADABLE = "ungradable"


class OutputNames(BaseModel):
    """Names of the ONNX graph's outputs. Only ``logits`` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logits: str = "logits"
    embedding: str | None = None
    ood_distance: str | None = None
    cam: str | None = None
    mid_distance: str | None = None

    def roles(self) -> list[tuple[str, str]]:
        """Each role that names a graph output, and that output's name, in declaration order."""
        return [(role, name) for role, name in self.model_dump().items() if name]  # "" is absent, as None is

    @model_validator(mode="after")
    def _one_role_per_output(self) -> OutputNames:
        # One output read for two roles: a distance read from the embedding, or a CAM that fails every explain=true.
        shared = self.shared_outputs()
        if shared:
            name, first, role = shared[0]
            raise ValueError(
                f"outputs.{first} and outputs.{role} both name the graph output {name!r}: each role needs "
                "its own output; name the one the graph gives for each, or leave the optional one out"
            )
        return self

    def shared_outputs(self) -> list[tuple[str, str, str]]:
        """Each graph output named for a second role: (output, the role that named it first, this role)."""
        seen: dict[str, str] = {}
        shared = []
        for role, name in self.roles():
            if name in seen:
                shared.append((name, seen[name], role))
            seen.setdefault(name, role)
        return shared


class GateThresholds(BaseModel):
    """Gradability gate thresholds, fitted on data at training time.

    Besides the thresholds only the blocks in ``GATE_EXTRAS`` are allowed: a misspelt threshold must not
    pass as an extra and leave its check silently off.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    min_side: Integer = 64
    min_brightness: Number = 0.08
    max_brightness: Number = 0.95
    min_contrast: Number = 0.03
    min_sharpness: Number = 0.0
    max_ood_distance: Number | None = None
    # Mahalanobis distance of mid-level trunk features from the training photos: the eye detector.
    max_mid_distance: Number | None = None

    @model_validator(mode="after")
    def _can_pass_a_photo(self) -> GateThresholds:
        # Limits that refuse every photo: a serving model that calls everything ungradable.
        if self.min_brightness > self.max_brightness:
            raise ValueError(f"gate.min_brightness {self.min_brightness} is above max_brightness {self.max_brightness}")
        # Brightness is a mean of 0..1 values, contrast their standard deviation (at most 0.5), sharpness the
        # variance of a Laplacian of them (each value within -4..4, so at most 16).
        if self.min_brightness > 1 or self.max_brightness < 0:
            raise ValueError(
                f"gate brightness limits {self.min_brightness}..{self.max_brightness} leave out all of 0..1, where "
                "every photo's brightness lies"
            )
        for floor, most in (("min_contrast", 0.5), ("min_sharpness", 16.0)):
            if getattr(self, floor) > most:
                raise ValueError(f"gate.{floor} {getattr(self, floor)} is above {most}, the most any photo can have")
        for cap in ("max_ood_distance", "max_mid_distance"):
            value = getattr(self, cap)
            if value is not None and value <= 0:
                raise ValueError(f"gate.{cap} must be above 0 (a distance is never below it), not {value}")
        if self.min_side < 1:
            raise ValueError(f"gate.min_side must be at least 1, not {self.min_side}")
        return self

    @model_validator(mode="after")
    def _only_known_extras(self) -> GateThresholds:
        unknown = sorted(set(self.model_extra or {}) - GATE_EXTRAS)
        if unknown:
            raise ValueError(f"unknown gate keys {unknown} (misspelt thresholds?); known extras: {sorted(GATE_EXTRAS)}")
        return self

    @model_validator(mode="after")
    def _eye_blocks_hold_numbers(self) -> GateThresholds:
        # Their values are read with float() (quality.py), which took "0.1" and true; their shape and finiteness
        # are checked where they are parsed, at init.
        extra = self.model_extra or {}
        for block, keys in EYE_BLOCK_NUMBERS.items():
            raw = extra.get(block)
            if not isinstance(raw, dict):
                continue
            for key in keys:
                if key in raw and not _is_number(raw[key]):
                    raise ValueError(f"gate.{block}.{key} must be a number, not {raw[key]!r}")
            for key in EYE_BLOCK_VECTORS.get(block, ()):
                if isinstance(raw.get(key), list) and not all(_is_number(v) for v in raw[key]):
                    raise ValueError(f"gate.{block}.{key} must hold numbers only")
        return self


def _is_number(value: Any) -> bool:
    """An int or a float (numpy's too, as training passes them), never a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Provenance(BaseModel):
    """Where the backbone's pretrained weights came from, and under which licence."""

    model_config = ConfigDict(extra="allow", frozen=True)

    architecture: str
    weights: str
    licence: str


# A version names an S3 folder (PREFIX/<version>/) and ends the model card's title.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def version_problem(version: str) -> str | None:
    """Why ``version`` cannot name a new release (an S3 folder and the card's title), or None."""
    if version.lower().endswith(".onnx"):  # MODEL_S3_URI without its final "/" would name a model file
        return f"{version!r} is not a version: it must not end in '.onnx'"
    if re.fullmatch(VERSION_PATTERN, version):
        return None
    return f"{version!r} is not a version: up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"


class Manifest(BaseModel):
    """The contents of ``model.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)

    schema_version: Integer = SCHEMA_VERSION
    name: str
    version: str  # export and publish hold it to VERSION_PATTERN; serving reads what older tools published
    created: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    classes: tuple[str, ...]
    positive_class: str = "cataract"
    input: InputSpec = InputSpec()
    outputs: OutputNames = OutputNames()
    # Training searches 0.05-20; outside 0.01-100 calibration would pin every probability at 0, 1 or 1/2.
    temperature: Number = Field(1.0, ge=0.01, le=100.0)
    # Below 1: at 1 only a probability that rounds to 1.000000 would be referred.
    threshold: Number = Field(0.5, ge=0.0, lt=1.0)
    precision: Literal["fp32", "int8"] = "fp32"
    gate: GateThresholds = GateThresholds()
    metrics: dict[str, Any] = Field(default_factory=dict)
    training_data: dict[str, Any] = Field(default_factory=dict)
    backbone: Provenance | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {version} is not {SCHEMA_VERSION}, the one this code reads: "
                "serve it with the code that exported it"
            )
        return version

    @model_validator(mode="after")
    def _gate_caps_have_their_outputs(self) -> Manifest:
        # A cap on a distance the graph does not output would leave that check silently off.
        for cap, output in (("max_ood_distance", "ood_distance"), ("max_mid_distance", "mid_distance")):
            if getattr(self.gate, cap) is not None and getattr(self.outputs, output) is None:
                raise ValueError(f"gate.{cap} is set but outputs.{output} names no graph output")
        if (self.gate.model_extra or {}).get("eye_score") is not None and self.outputs.ood_distance is None:
            raise ValueError("gate.eye_score is set but outputs.ood_distance names no graph output")
        return self

    @model_validator(mode="after")
    def _positive_class_is_a_class(self) -> Manifest:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must name at least two distinct classes")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        if UNGRADABLE in self.classes:
            raise ValueError(f"{UNGRADABLE!r} is the service's label for a photo the gate refuses, not a class name")
        return self

    @property
    def positive_index(self) -> int:
        """Index of the positive (referable) class in the model's output."""
        return self.classes.index(self.positive_class)

    def public_view(self) -> dict[str, Any]:
        """The manifest as served by ``GET /model``: the training data's folder by its last two names only (the
        training machine's path is nobody's business)."""
        view = self.model_dump(mode="json")
        source = view["training_data"].get("source")
        if isinstance(source, str) and source:
            names = [part for part in PurePath(source.replace("\\", "/")).parts if part.strip("/")]
            # Everywhere in it: an audit finding may quote a file's full path (an unreadable photo's error).
            view["training_data"] = _replaced(view["training_data"], source, "/".join(names[-2:]))
        return view


def _replaced(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string it holds."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, old, new) for v in value]
    return value


def load_manifest(path: Path) -> Manifest:
    """Read and validate ``model.json``; raise ``ManifestError`` with an actionable message."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"model manifest not found: {path}") from exc
    except OSError as exc:
        raise ManifestError(f"model manifest {path} is not readable JSON: {exc}") from exc
    return parse_manifest(data, str(path))


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Validate the bytes of a ``model.json`` read from ``source``; raise ``ManifestError`` naming it."""
    try:
        raw = json.loads(data.decode("utf-8"))
    # ValueError: also an integer of more digits than Python converts; RecursionError: arrays nested too deep.
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"model manifest {source} is not readable JSON: {exc}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"model manifest {source} is invalid: {exc}") from exc


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest`` as pretty JSON."""
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
