"""The gradability gate's statistics and verdicts, and the CAM overlay."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cataract_inference import explanation, quality
from cataract_inference.drawing import draw_eye
from cataract_inference.manifest import GateThresholds, InputSpec

GATE = GateThresholds(
    min_side=64, min_brightness=0.1, max_brightness=0.9, min_contrast=0.05, min_sharpness=1e-4, max_ood_distance=10.0
)


def _verdict(img: Image.Image, ood: float | None = 1.0) -> quality.Quality:
    return quality.assess(quality.image_stats(img, img.size), ood, GATE)


def test_a_drawn_eye_is_gradable() -> None:
    verdict = _verdict(draw_eye("normal"))
    assert verdict.gradable and verdict.reasons == []
    assert set(verdict.scores) == {"brightness", "contrast", "sharpness", "ood_distance"}


@pytest.mark.parametrize(
    ("img", "reason"),
    [
        (Image.new("RGB", (40, 30), (128, 100, 90)), "too_small"),
        (draw_eye("normal").point(lambda v: v // 12), "too_dark"),
        (Image.new("RGB", (300, 200), (250, 250, 250)), "too_bright"),
        (Image.new("RGB", (300, 200), (120, 120, 120)), "low_contrast"),
        (draw_eye("normal").filter(ImageFilter.GaussianBlur(12)), "too_blurry"),
    ],
    ids=["small", "dark", "bright", "flat", "blurry"],
)
def test_each_check_names_its_reason(img: Image.Image, reason: str) -> None:
    verdict = _verdict(img)
    assert not verdict.gradable
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


def test_out_of_distribution_is_not_an_eye() -> None:
    verdict = _verdict(draw_eye("normal"), ood=25.0)
    assert not verdict.gradable and verdict.reasons[0].startswith("not_an_eye")


def test_gate_without_ood_threshold_ignores_the_distance() -> None:
    gate = GateThresholds()
    img = draw_eye("normal")
    assert quality.assess(quality.image_stats(img, img.size), 1e9, gate).gradable


def test_original_size_decides_too_small_not_the_decoded_size() -> None:
    img = draw_eye("normal", size=(480, 320))
    assert not quality.assess(quality.image_stats(img, (50, 40)), None, GATE).gradable


def test_normalised_map() -> None:
    out = explanation.normalised_map(np.array([[-1.0, 0.0], [1.0, 3.0]]))
    assert out.max() == 1.0 and out.min() == 0.0
    assert not explanation.normalised_map(np.full((2, 2), -1.0)).any()


@pytest.mark.parametrize("resize", ["letterbox", "squash", "center_crop"])
def test_heat_map_lands_where_the_evidence_is(resize: str) -> None:
    spec = InputSpec(size=32, resize=resize)
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[1:3, 0] = 1.0  # evidence at the left, middle rows
    grid = explanation.map_to_image_grid(cam, (200, 200), spec)
    assert grid.shape == (200, 200)
    left, right = grid[:, :70].mean(), grid[:, 130:].mean()
    assert left > right


def test_overlay_is_a_png_the_size_of_the_photo() -> None:
    img = draw_eye("cataract", size=(800, 400))
    data = base64.b64decode(explanation.overlay_png(img, np.random.default_rng(0).random((7, 7)), InputSpec()))
    overlay = Image.open(io.BytesIO(data))
    assert overlay.format == "PNG" and overlay.size == (512, 256)
