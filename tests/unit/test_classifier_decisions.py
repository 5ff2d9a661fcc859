"""What the classifier decides from the model's outputs: calibration, the threshold, the positive class, the heat map.

The tiny test model scores brightness (bright → its first class) and its CAM applies the same weights per cell,
so each check here knows the answer without a trained model.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cataract_inference import explanation
from cataract_inference.classifier import load_classifier, softmax
from cataract_inference.imaging import load_for_model
from cataract_inference.manifest import InputSpec
from tests.support.images import encoded
from tests.support.onnx_models import build_tiny_model

GREY = encoded(Image.new("RGB", (80, 60), (170, 170, 170)), "PNG")


def test_served_probabilities_are_temperature_scaled(tmp_path: Path) -> None:
    classifier = load_classifier(build_tiny_model(tmp_path / "m", temperature=3.0))
    _, tensor = load_for_model(GREY, classifier.manifest.input)
    logits = classifier.run(tensor[None])["logits"]
    scaled, raw = softmax(logits / 3.0)[0], softmax(logits)[0]
    assert abs(scaled[0] - raw[0]) > 0.01, "the photo must tell a temperature of 3 from 1"
    served = classifier.predict_bytes(GREY).probabilities
    assert served["cataract"] == pytest.approx(scaled[0], abs=1e-6)
    assert served["normal"] == pytest.approx(scaled[1], abs=1e-6)


@pytest.mark.parametrize(
    ("cataract_probability", "expected"),
    [(0.2499, ("normal", False)), (0.25, ("cataract", True)), (0.2501, ("cataract", True))],
)
def test_a_probability_at_the_threshold_is_referred(
    tmp_path: Path, cataract_probability: float, expected: tuple[str, bool]
) -> None:
    """Sensitivity first: "at or above the threshold" refers, as the README and the response's field say."""
    classifier = load_classifier(build_tiny_model(tmp_path / "m", threshold=0.25))
    assert classifier.decide(np.array([cataract_probability, 1 - cataract_probability])) == expected


@pytest.mark.parametrize(("below", "referred"), [(4e-7, True), (6e-7, False)])
def test_the_referral_agrees_with_the_probability_the_client_reads(
    tmp_path: Path, below: float, referred: bool
) -> None:
    """Answered to 6 decimals, 0.2499996 reads 0.25, the threshold, so it is referred; 0.2499994 reads 0.249999."""
    classifier = load_classifier(build_tiny_model(tmp_path / "m", threshold=0.25))
    p = 0.25 - below
    label, referral = classifier.decide(np.array([p, 1 - p]))
    assert (
        referral is referred and (round(p, 6) >= 0.25) is referred and label == ("cataract" if referred else "normal")
    )


def test_the_positive_class_is_found_by_name_not_position(tmp_path: Path) -> None:
    classifier = load_classifier(build_tiny_model(tmp_path / "m", classes=["normal", "cataract"], threshold=0.4))
    assert classifier.decide(np.array([0.55, 0.45])) == ("cataract", True)
    assert classifier.decide(np.array([0.65, 0.35])) == ("normal", False)


def test_with_three_classes_a_photo_not_referred_is_labelled_its_likeliest_other_class(tmp_path: Path) -> None:
    import onnx

    from cataract_inference.model_source import sha256_of
    from tests.support.onnx_models import rewrite_manifest, tiny_graph

    directory = build_tiny_model(tmp_path / "m", classes=["cataract", "normal", "other"], threshold=0.5)
    onnx.save(tiny_graph(32, n_classes=3), directory / "model.onnx")
    rewrite_manifest(directory, sha256=sha256_of(directory / "model.onnx"))
    classifier = load_classifier(directory)
    assert classifier.decide(np.array([0.3, 0.2, 0.5])) == ("other", False)
    assert classifier.decide(np.array([0.3, 0.6, 0.1])) == ("normal", False)
    assert classifier.decide(np.array([0.5, 0.1, 0.4])) == ("cataract", True)


def _tint(overlay_b64: str, photo: Image.Image) -> np.ndarray:
    """How far each pixel of the overlay moved from the photo: where the heat map was drawn."""
    overlay = Image.open(io.BytesIO(base64.b64decode(overlay_b64))).convert("RGB").resize(photo.size)
    return np.abs(np.asarray(overlay, dtype=np.int32) - np.asarray(photo, dtype=np.int32)).sum(axis=2)


@pytest.mark.parametrize("classes", [["cataract", "normal"], ["normal", "cataract"]])
def test_the_served_heat_map_is_the_positive_class_map(tmp_path: Path, classes: list[str]) -> None:
    """Bright is the first class's evidence: the cataract map lights it when cataract is first, and the dark
    side when cataract is second (its weights are the first class's, negated)."""
    classifier = load_classifier(
        build_tiny_model(tmp_path / "m", classes=classes, input={"size": 32, "resize": "squash"})
    )
    photo = Image.new("RGB", (200, 100), (40, 40, 40))
    photo.paste((230, 230, 230), (0, 0, 60, 100))  # bright band at the left
    heatmap = classifier.predict_bytes(encoded(photo, "PNG"), explain=True).heatmap_png
    assert heatmap is not None
    tint = _tint(heatmap, photo)
    left, right = tint[:, :50].mean(), tint[:, 150:].mean()
    assert (left > 2 * right) if classes[0] == "cataract" else (right > 2 * left), (left, right)


def test_the_heat_map_keeps_up_up() -> None:
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, :] = 1.0  # evidence in the top row only
    grid = explanation.map_to_image_grid(cam, (100, 100), InputSpec(size=32, resize="squash"))
    assert grid[:30].mean() > 3 * grid[70:].mean()


def _two_eyes(width: int, height: int, suspicious: str) -> Image.Image:
    """A dark (normal-looking) photo with one bright (cataract-looking) square patch in the named half."""
    photo = Image.new("RGB", (width, height), (40, 40, 40))
    side = min(width, height)
    corner = {
        "left": (0, 0),
        "right": (width - side, 0),
        "top": (0, 0),
        "bottom": (0, height - side),
    }[suspicious]
    photo.paste((200, 200, 200), (*corner, corner[0] + side, corner[1] + side))
    return photo


@pytest.mark.parametrize(
    ("size", "half"), [((160, 40), "left"), ((160, 40), "right"), ((40, 160), "top"), ((40, 160), "bottom")]
)
def test_a_wide_photo_is_referred_when_either_half_is(tmp_path: Path, size: tuple[int, int], half: str) -> None:
    # One clear eye can outvote a cataract in the other when both are in the photo: each half is screened too.
    classifier = load_classifier(build_tiny_model(tmp_path / "m"))
    result = classifier.predict_bytes(encoded(_two_eyes(*size, half), "PNG"))
    views = result.views
    assert views is not None and set(views) == {
        "whole",
        *(("left", "right") if size[0] > size[1] else ("top", "bottom")),
    }
    others = [v for name, v in views.items() if name not in ("whole", half)]
    assert views["whole"] < 0.5 <= views[half] and all(v < 0.5 for v in others), views
    assert result.label == "cataract" and result.referral is True
    assert result.probabilities["cataract"] == views[half]  # the most suspicious view's probabilities


@pytest.mark.parametrize("blank", ["left", "right"])
def test_a_half_the_gate_refuses_on_its_own_does_not_decide(tmp_path: Path, blank: str) -> None:
    # A flat band beside an eye (a screenshot's black bars, a wall): alone it is ungradable, and it had turned a
    # clear eye's photo into a referral by being the "most suspicious view".
    gate = {"min_side": 8, "min_brightness": 0.0, "max_brightness": 1.0, "min_contrast": 0.05}
    classifier = load_classifier(build_tiny_model(tmp_path / "m", gate=gate))
    photo = Image.new("RGB", (160, 80), (0, 0, 0))
    eye = (0, 0, 80, 80) if blank == "right" else (80, 0, 160, 80)
    for x in range(eye[0], eye[2], 8):  # a textured, dark (normal-looking) half
        photo.paste((255, 255, 255), (x, 0, x + 1, 80))
    band = (80, 0, 160, 80) if blank == "right" else (0, 0, 80, 80)
    photo.paste((170, 170, 170), band)  # flat and bright: the tiny model's "cataract", but no contrast at all
    band_alone = classifier.predict_bytes(encoded(photo.crop(band), "PNG"))
    assert band_alone.label == "ungradable" and band_alone.probabilities["cataract"] > 0.5, band_alone
    result = classifier.predict_bytes(encoded(photo, "PNG"))
    assert result.quality.gradable and result.views is not None
    assert set(result.views) == {"whole", "left" if blank == "right" else "right"}, result.views
    assert result.label == "normal" and result.referral is False
    assert result.probabilities["cataract"] == result.views["whole"] < 0.5


def test_the_halves_are_gated_with_the_skin_fraction_whatever_the_caller_asks_of_the_whole_photo(
    tmp_path: Path,
) -> None:
    # measure(skin=False), as the two-eyes study calls it, gated each half with a skin fraction of 0: a gate with an
    # eye score then refused every half, and the study's "served" probability was not the service's.
    import math

    gate = {
        "min_side": 8,
        "min_brightness": 0.0,
        "max_brightness": 1.0,
        "min_contrast": 0.0,
        "eye_score": {"bias": 0.0, "w_distance": 0.0, "w_skin": 1.0, "centre": 0.0, "scale": 1.0,
                      "skin_floor": 0.01, "min_score": math.log(0.2)},
    }  # fmt: skip
    classifier = load_classifier(build_tiny_model(tmp_path / "m", gate=gate))
    photo = np.zeros((80, 160, 3), np.uint8)
    photo[:, :80], photo[:, 80:] = (150, 110, 90), (235, 190, 160)  # skin both sides: darker, lighter
    noise = np.random.default_rng(0).integers(-6, 7, photo.shape)
    data = encoded(Image.fromarray(np.clip(photo.astype(int) + noise, 0, 255).astype(np.uint8)), "PNG")
    served = classifier.predict_bytes(data)
    assert served.views is not None and set(served.views) == {"whole", "left", "right"}, served.views
    measured = classifier.measure(data, skin=False)
    assert measured.views == served.views
    assert (
        round(float(measured.probabilities[classifier.manifest.positive_index]), 6) == served.probabilities["cataract"]
    )


def test_the_whole_photo_wins_a_tie_with_its_halves(tmp_path: Path) -> None:
    # When no half is more suspicious than the whole photo, the whole photo decides: the heat map then covers it
    # all, not one half arbitrarily. Squashed, a flat photo and each of its halves make the same input.
    classifier = load_classifier(build_tiny_model(tmp_path / "m", input={"size": 32, "resize": "squash"}))
    photo = Image.new("RGB", (200, 100), (200, 200, 200))  # bright: the map is lit wherever it is drawn
    result = classifier.predict_bytes(encoded(photo, "PNG"), explain=True)
    assert result.views is not None and set(result.views) == {"whole", "left", "right"}
    assert len(set(result.views.values())) == 1, result.views  # a three-way tie
    assert result.heatmap_png is not None
    tint = _tint(result.heatmap_png, photo)
    left, right = tint[:, :90].mean(), tint[:, 110:].mean()
    assert left > 10 and right > 10, (left, right)  # drawn over both halves: the whole photo's map
    assert left == pytest.approx(right, rel=0.05)


def test_only_photos_at_least_twice_as_long_as_high_are_split(tmp_path: Path) -> None:
    classifier = load_classifier(build_tiny_model(tmp_path / "m"))
    assert classifier.predict_bytes(encoded(_two_eyes(159, 80, "left"), "PNG")).views is None
    assert classifier.predict_bytes(encoded(_two_eyes(80, 159, "top"), "PNG")).views is None
    assert classifier.predict_bytes(encoded(_two_eyes(160, 80, "left"), "PNG")).views is not None
    plain = classifier.predict_bytes(encoded(Image.new("RGB", (200, 50), (40, 40, 40)), "PNG"))
    assert plain.views is not None and plain.label == "normal" and plain.referral is False
    assert plain.probabilities["cataract"] == max(plain.views.values())


@pytest.mark.parametrize(("size", "split"), [((2402, 1201), True), ((2399, 1200), False)])
def test_a_jpeg_is_split_by_its_own_shape_not_its_reduced_drafts(
    tmp_path: Path, size: tuple[int, int], split: bool
) -> None:
    # The draft rounds each side up on its own: 2402x1201 decoded at 1/8 to 301x151 (under 2:1) and lost its halves;
    # 2399x1200 to 300x150 (2:1) and gained them.
    classifier = load_classifier(build_tiny_model(tmp_path / "m"))
    result = classifier.predict_bytes(encoded(_two_eyes(*size, "left"), "JPEG"))
    assert (result.views is not None) is split, result.views


def test_a_model_with_a_fixed_batch_of_one_screens_wide_photos_too(tmp_path: Path) -> None:
    # The halves once ran as a batch of 2: such a model loaded fine, then failed every wide photo with a 500.
    import onnx

    from cataract_inference.model_source import sha256_of
    from tests.support.onnx_models import rewrite_manifest

    folder = build_tiny_model(tmp_path / "m")
    graph = onnx.load(folder / "model.onnx")
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, folder / "model.onnx")
    rewrite_manifest(folder, sha256=sha256_of(folder / "model.onnx"))
    classifier = load_classifier(folder)
    assert classifier.session.get_inputs()[0].shape[0] == 1
    result = classifier.predict_bytes(encoded(_two_eyes(160, 40, "left"), "PNG"))
    assert result.views is not None and result.label == "cataract"


def test_a_large_wide_photo_is_reduced_before_it_is_split() -> None:
    from cataract_inference.classifier import split_in_two
    from cataract_inference.manifest import InputSpec

    letterbox = InputSpec(size=224, resize="letterbox")
    halves = split_in_two(Image.new("RGB", (12000, 3000)), spec=letterbox)
    assert set(halves) == {"left", "right"}
    assert all(448 <= max(h.size) < 1000 for h in halves.values()), [h.size for h in halves.values()]
    assert [h.size for h in split_in_two(Image.new("RGB", (800, 400)), spec=letterbox).values()] == [(400, 400)] * 2


@pytest.mark.parametrize("resize", ["center_crop", "squash"])
@pytest.mark.parametrize("photo", [(3600, 900), (4096, 512), (12000, 3000)])
def test_a_half_keeps_the_shorter_side_a_cropping_or_squashing_model_needs(resize: str, photo: tuple[int, int]) -> None:
    """Such a resize sizes the shorter side (256 px for center_crop at 224): reducing by the half's longer side,
    as for a letterbox, left a 3600x900 photo's halves at 450x225, enlarged again by the model's resize."""
    from cataract_inference.classifier import split_in_two
    from cataract_inference.imaging import decode_side
    from cataract_inference.manifest import InputSpec

    spec = InputSpec(size=224, resize=resize)
    halves = split_in_two(Image.new("RGB", photo), spec=spec)
    assert all(min(h.size) >= min(2 * decode_side(spec), photo[1]) for h in halves.values()), [
        h.size for h in halves.values()
    ]
