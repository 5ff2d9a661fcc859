"""The gradability gate: can this photo be judged at all?

Two kinds of signal, both measured: simple image statistics (size, exposure, contrast,
sharpness) computed on a small grey copy, and the model's own out-of-distribution distance
(Mahalanobis distance of the backbone embedding from the training photos, computed inside the
ONNX graph). Thresholds come from the manifest, fitted on data at training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .manifest import GateThresholds

STATS_SIDE = 256


@dataclass(frozen=True)
class ImageStats:
    """Cheap statistics of an image, on a 0..1 grey scale."""

    min_side: int
    brightness: float
    contrast: float
    sharpness: float


@dataclass(frozen=True)
class Quality:
    """The gate's verdict."""

    gradable: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def image_stats(img: Image.Image, original_size: tuple[int, int]) -> ImageStats:
    """Brightness (mean), contrast (std) and sharpness (variance of the Laplacian) of ``img``."""
    grey = img.convert("L")
    if max(grey.size) > STATS_SIDE:
        grey = grey.copy()
        grey.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
    arr = np.asarray(grey, dtype=np.float32) / 255.0
    if min(arr.shape) >= 3:
        lap = arr[1:-1, :-2] + arr[1:-1, 2:] + arr[:-2, 1:-1] + arr[2:, 1:-1] - 4.0 * arr[1:-1, 1:-1]
        sharpness = float(lap.var())
    else:
        sharpness = 0.0
    return ImageStats(
        min_side=min(original_size),
        brightness=float(arr.mean()),
        contrast=float(arr.std()),
        sharpness=sharpness,
    )


def assess(stats: ImageStats, ood_distance: float | None, gate: GateThresholds) -> Quality:
    """Apply the manifest's thresholds. Each failed check adds a reason a person can act on."""
    reasons: list[str] = []
    if stats.min_side < gate.min_side:
        reasons.append(f"too_small: the shorter side is {stats.min_side} px; at least {gate.min_side} px is needed")
    if stats.brightness < gate.min_brightness:
        reasons.append("too_dark: the photo is underexposed")
    if stats.brightness > gate.max_brightness:
        reasons.append("too_bright: the photo is overexposed")
    if stats.contrast < gate.min_contrast:
        reasons.append("low_contrast: the photo is nearly uniform")
    if stats.sharpness < gate.min_sharpness:
        reasons.append("too_blurry: the photo is out of focus")
    if ood_distance is not None and gate.max_ood_distance is not None and ood_distance > gate.max_ood_distance:
        reasons.append("not_an_eye: the photo does not look like the eye photos the model was trained on")
    scores = {
        "brightness": round(stats.brightness, 4),
        "contrast": round(stats.contrast, 4),
        "sharpness": round(stats.sharpness, 6),
    }
    if ood_distance is not None:
        scores["ood_distance"] = round(ood_distance, 3)
    return Quality(gradable=not reasons, reasons=reasons, scores=scores)
