"""The heat map is computed from the real features: it follows the salient region when that moves.

The map comes from the graph's ``cam`` output (the classifier weights applied to the last
convolutional feature map), through ``Classifier.run`` and ``explanation.map_to_image_grid``, the
functions the service uses. Where the map is followed, the PNG is never decoded; the last test decodes it
only for its size, to check which decode the overlay was drawn on.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cataract_inference import explanation
from cataract_inference.classifier import Classifier, load_classifier
from cataract_inference.imaging import preprocess
from cataract_inference.schemas import PredictResponse
from tests.support.images import encoded

CANVAS = (640, 320)  # wide, so the letterbox pads only above and below: left and right stay symmetric


def heat_on_photo(classifier: Classifier, img: Image.Image, class_index: int | None = None) -> np.ndarray:
    """The class-activation map over ``img`` (H, W), 0..1, as the overlay would draw it."""
    spec = classifier.manifest.input
    outputs = classifier.run(preprocess(img, spec)[None])
    index = classifier.manifest.positive_index if class_index is None else class_index
    assert classifier.manifest.outputs.cam is not None, "the model has no CAM output"
    cam = outputs[classifier.manifest.outputs.cam][0, index]
    return explanation.map_to_image_grid(explanation.normalised_map(cam), img.size, spec)


def centre_x(heat: np.ndarray) -> float:
    """The heat map's horizontal centre of mass, as a fraction of the width."""
    columns = heat.sum(axis=0)
    total = float(columns.sum())
    assert total > 0, "the map has no positive evidence anywhere"
    return float((columns * (np.arange(heat.shape[1]) + 0.5)).sum() / total / heat.shape[1])


def place(subject: Image.Image, where: str, background: tuple[int, int, int]) -> tuple[Image.Image, tuple[int, ...]]:
    """``subject`` on a plain canvas, at the left or the right; returns the image and the subject's box."""
    width, height = CANVAS
    canvas = Image.new("RGB", CANVAS, background)
    photo = subject.copy()
    photo.thumbnail((int(width * 0.45), int(height * 0.9)), Image.Resampling.LANCZOS)
    margin = int(width * 0.03)
    x = margin if where == "left" else width - photo.width - margin
    y = (height - photo.height) // 2
    canvas.paste(photo, (x, y))
    return canvas, (x, y, x + photo.width, y + photo.height)


def mass_inside(heat: np.ndarray, box: tuple[int, ...]) -> float:
    """The fraction of the map's mass inside ``box``."""
    x0, y0, x1, y1 = box
    return float(heat[y0:y1, x0:x1].sum() / heat.sum())


# --------------------------------------------------------------------------- the tiny model (always runs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    from tests.support.onnx_models import build_tiny_model

    return load_classifier(build_tiny_model(tmp_path_factory.mktemp("tiny-cam")))


def test_tiny_model_map_follows_a_bright_patch(tiny: Classifier) -> None:
    # The tiny model's "cataract" evidence is brightness: a bright patch is the salient region.
    patch = Image.new("RGB", (200, 200), (235, 235, 235))
    left, left_box = place(patch, "left", (30, 30, 30))
    right, right_box = place(patch, "right", (30, 30, 30))
    heat_left, heat_right = heat_on_photo(tiny, left), heat_on_photo(tiny, right)
    assert centre_x(heat_left) < 0.4
    assert centre_x(heat_right) > 0.6
    assert mass_inside(heat_left, left_box) > 0.5 and mass_inside(heat_right, right_box) > 0.5
    # The other class's weights point the other way: its map lights the dark background instead.
    normal = 1 - tiny.manifest.positive_index
    assert centre_x(heat_on_photo(tiny, left, normal)) > centre_x(heat_left)


def test_the_tiny_test_models_cam_is_its_classifier_applied_per_cell(tiny: Classifier) -> None:
    """Guards tests/support/onnx_models, not the project: the heat-map tests above read the tiny model's CAM as the
    real model's (whose own identity test follows), which holds only while its graph is built this way."""
    img, _ = place(Image.new("RGB", (120, 80), (200, 180, 160)), "left", (60, 70, 80))
    out = tiny.run(preprocess(img, tiny.manifest.input)[None])
    # Global-average-pooling the CAM gives back the logits: same features, same weights.
    np.testing.assert_allclose(out["cam"].mean(axis=(2, 3)), out["logits"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the bundled model, real photos


@pytest.fixture(scope="module")
def real(bundled_model_dir: Path) -> Classifier:
    return load_classifier(bundled_model_dir)


def _cataract_photos(root: Path, n: int = 12) -> list[Image.Image]:
    paths = sorted((root / "cataract").glob("*"))
    step = max(1, len(paths) // n)
    return [Image.open(p).convert("RGB") for p in paths[::step][:n]]


def test_real_model_cam_is_the_classifier_applied_per_cell(real: Classifier, shared_photos: Path) -> None:
    photo = _cataract_photos(shared_photos, 1)[0]
    out = real.run(preprocess(photo, real.manifest.input)[None])
    names = real.manifest.outputs
    assert names.cam is not None
    cam = out[names.cam]
    assert cam.ndim == 4 and cam.shape[:2] == (1, len(real.manifest.classes)) and min(cam.shape[2:]) >= 5
    # CAM identity: the spatial mean of each class map is that class's logit (no gradients involved).
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), out[names.logits], rtol=1e-3, atol=1e-3)


def test_real_model_map_moves_with_the_eye(real: Classifier, shared_photos: Path) -> None:
    """A real eye photo at the left, then at the right, of a neutral canvas: the heat map goes with it."""
    background = real.manifest.input.fill_rgb  # the colour that normalises to zero: no evidence of its own
    photos = _cataract_photos(shared_photos)
    moved = 0
    shifts = []
    for photo in photos:
        left, left_box = place(photo, "left", background)
        right, right_box = place(photo, "right", background)
        heat_left, heat_right = heat_on_photo(real, left), heat_on_photo(real, right)
        cl, cr = centre_x(heat_left), centre_x(heat_right)
        shifts.append(cr - cl)
        # Where the photo is, against the same box on the empty side: the evidence must sit on the photo.
        on_photo = mass_inside(heat_left, left_box) > 2 * mass_inside(heat_left, right_box) and mass_inside(
            heat_right, right_box
        ) > 2 * mass_inside(heat_right, left_box)
        if cl < 0.5 < cr and cr - cl > 0.25 and on_photo:
            moved += 1
    assert moved >= 0.9 * len(photos), f"the map followed the eye in {moved}/{len(photos)} photos; shifts {shifts}"
    assert float(np.median(shifts)) > 0.3


def test_without_explain_no_overlay_is_made(real: Classifier, shared_photos: Path) -> None:
    photo = _cataract_photos(shared_photos, 1)[0]
    data = encoded(photo, "JPEG", quality=90)
    assert real.predict_bytes(data).heatmap_png is None
    assert real.predict_bytes(data, explain=True).heatmap_png


def test_explain_costs_nothing_when_not_asked(tiny: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``explain`` the overlay code never runs (the graph's cam output is a few extra MACs)."""
    calls: list[int] = []
    original = explanation.overlay_png

    def counting(*args: object, **kwargs: object) -> str:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(explanation, "overlay_png", counting)
    img, _ = place(Image.new("RGB", (200, 200), (220, 200, 180)), "left", (90, 90, 90))
    data = encoded(img, "PNG")
    result = tiny.predict_bytes(data)
    assert result.heatmap_png is None and calls == []
    assert tiny.predict_bytes(data, explain=True).heatmap_png and calls == [1]


@pytest.mark.parametrize(
    ("fmt", "size", "expected"),
    # The tiny model's input is 32 px: a JPEG keeps full size only while its shorter side is under 64 px, and its
    # ⅛ draft reaches the overlay's 448 px minimum from 3584 px on.
    [
        # (second decodes, overlay size)
        ("PNG", (900, 600), (0, (512, 341))),
        ("WEBP", (900, 600), (0, (512, 341))),
        ("JPEG", (90, 60), (0, (90, 60))),
        ("JPEG", (1600, 1200), (1, (512, 384))),  # draft 200×150: too blurry, decoded again at 800×600
        ("JPEG", (3600, 2700), (0, (450, 338))),  # draft 450×338: drawn on as it is
    ],
)
def test_overlay_decodes_the_photo_again_only_when_the_model_saw_a_blurry_draft(
    tiny: Classifier,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    size: tuple[int, int],
    expected: tuple[int, tuple[int, int]],
) -> None:
    """A second decode is for sharpness only: where the model's decode is sharp enough, the overlay reuses it."""
    from cataract_inference import classifier as classifier_module

    calls: list[int] = []
    original = classifier_module.decode_image  # the model's own decode goes through imaging.load_for_model

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classifier_module, "decode_image", counting)
    img, _ = place(Image.new("RGB", (200, 200), (220, 200, 180)), "left", (90, 90, 90))
    data = encoded(img.resize(size), fmt)
    second_decodes, overlay = expected
    heatmap = tiny.predict_bytes(data, explain=True).heatmap_png
    assert heatmap
    assert len(calls) == second_decodes
    assert Image.open(io.BytesIO(base64.b64decode(heatmap))).size == overlay
    assert tiny.predict_bytes(data).probabilities == tiny.predict_bytes(data, explain=True).probabilities


def test_when_a_half_decides_the_heat_map_is_that_halfs_drawn_over_it(tiny: Classifier) -> None:
    # Left: evenly bright (the tiny model's cataract evidence). Right: dark, with one brighter spot. The left half
    # decides, so the map must be the left half's, and nothing on the right, which the whole photo's map (drawn
    # before) lit as well.
    photo = Image.new("RGB", (480, 160), (20, 20, 20))  # under the overlay's 512 px: drawn at its own size
    photo.paste(Image.new("RGB", (240, 160), (200, 200, 200)), (0, 0))
    photo.paste(Image.new("RGB", (40, 40), (255, 255, 255)), (340, 60))
    result = tiny.predict_bytes(encoded(photo, "PNG"), explain=True)
    assert result.views is not None and result.views["left"] > max(result.views["whole"], result.views["right"])
    assert result.heatmap_png
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(result.heatmap_png))).convert("RGB"), dtype=int)
    drawn = np.abs(overlay - np.asarray(photo, dtype=int)).sum(axis=2) > 0
    assert drawn[:, :240].mean() > 0.9  # the deciding half's evidence, everywhere on it
    assert not drawn[:, 240:].any()  # and none on the half that did not decide
    whole = heat_on_photo(tiny, photo)
    assert whole[:, 240:].max() > 0.1, "the whole photo's map, drawn before, lit the right half too"
    # What /openapi.json tells client writers, who would otherwise show a half's map as the whole photo's.
    description = PredictResponse.model_fields["heatmap_png"].description or ""
    assert "that half's map, drawn over that half only" in description
