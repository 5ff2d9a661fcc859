"""The gradability gate's statistics and verdicts, and the CAM overlay."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cataract_inference import explanation, quality
from cataract_inference.drawing import draw_eye
from cataract_inference.manifest import GateThresholds, InputSpec

MAX_OOD = 10.0
GATE = GateThresholds(
    min_side=64, min_brightness=0.1, max_brightness=0.9, min_contrast=0.05, min_sharpness=1e-4, max_ood_distance=MAX_OOD
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
    # The documented contract: "code: explanation", the code one of the six the README lists.
    codes = "too_small|too_dark|too_bright|low_contrast|too_blurry|not_an_eye"
    assert all(re.fullmatch(rf"({codes}): \S.*", r) for r in verdict.reasons), verdict.reasons
    assert reason in [r.split(":", 1)[0] for r in verdict.reasons], verdict.reasons


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


def test_overlay_blends_the_colour_map_by_the_heat_and_leaves_cold_pixels_alone() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    spec = InputSpec(size=32, resize="squash")
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[:, 0] = 1.0  # evidence in the left column only
    alpha = 0.45
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(explanation.overlay_png(img, cam, spec, alpha=alpha)))))
    photo = np.asarray(img)
    # The same blend in float: photo * (1 - alpha * heat) + jet(heat) * alpha * heat.
    heat = explanation.map_to_image_grid(explanation.normalised_map(cam), img.size, spec)
    weight = (alpha * heat)[..., None]
    expected = photo * (1.0 - weight) + explanation._jet(heat).astype(np.float32) * weight
    assert np.abs(out.astype(np.float32) - expected).max() <= 2.5  # the heat is quantised to 8 bits
    cold = heat == 0.0
    assert cold[:, -40:].all() and np.array_equal(out[cold], photo[cold])
    hot = heat > 0.9
    assert hot[:, :5].all()
    # Where the evidence is strongest the map is dark red (127, 0, 0): green and blue keep about 1 - alpha.
    for channel in (1, 2):
        kept = out[hot][:, channel].mean() / photo[hot][:, channel].mean()
        assert 1 - alpha - 0.05 < kept < 1 - alpha + 0.1


def test_skin_fraction_tells_skin_from_paper_sky_and_grass() -> None:
    for skin in [(224, 172, 140), (141, 85, 60), (90, 56, 37)]:  # light, brown and dark skin tones
        assert quality.skin_fraction(Image.new("RGB", (32, 32), skin)) == 1.0
    # Saturated red sits above the skin box's upper Cr bound (a lower bound alone would call it skin).
    for other in [(250, 250, 250), (90, 140, 230), (60, 150, 60), (128, 128, 128), (255, 0, 0)]:
        assert quality.skin_fraction(Image.new("RGB", (32, 32), other)) == 0.0
    half = Image.new("RGB", (40, 20), (250, 250, 250))
    half.paste(Image.new("RGB", (20, 20), (200, 150, 120)), (0, 0))
    assert quality.skin_fraction(half) == pytest.approx(0.5)
    assert quality.image_stats(half, half.size).skin_fraction == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("colour", "skin"),
    [
        # (Cb, Cr) in the comments, against the box Cb 77..127, Cr 133..173: each a few units from one edge.
        ((181, 136, 143), True),  # (123.9, 149.9): just inside the upper Cb edge
        ((161, 154, 100), True),  # (99.8, 135.9): just inside the lower Cr edge
        ((181, 153, 54), False),  # (73.8, 150.0): just below the lower Cb edge
        ((217, 125, 100), False),  # (100.0, 176.0): just above the upper Cr edge
        ((181, 142, 109), True),  # (104.9, 150.2): well inside
    ],
    ids=["in-below-cb-max", "in-above-cr-min", "out-below-cb-min", "out-above-cr-max", "well-inside"],
)
def test_a_large_photo_is_measured_for_skin_as_a_small_one_is(colour: tuple[int, int, int], skin: bool) -> None:
    # A large photo's skin is read back off the normalised model input (x * std + mean); a small one's, off the
    # photo itself. The two must agree to the pixel, near the box's edges too, where an offset would tip them.
    expected = 1.0 if skin else 0.0
    large, small = Image.new("RGB", (448, 336), colour), Image.new("RGB", (112, 84), colour)
    assert quality.skin_fraction(large) == quality.skin_fraction(small) == expected
    assert quality.image_stats(large, large.size).skin_fraction == expected  # through the model's input
    assert quality.image_stats(small, small.size).skin_fraction == expected  # at its own resolution


FUSED = GateThresholds(
    **{**GATE.model_dump(), "max_ood_distance": 100.0},
    eye_score={
        "bias": 2.0,
        "w_distance": -1.0,
        "w_skin": 1.0,
        "centre": 10.0,
        "scale": 2.0,
        "skin_floor": 0.01,
        "min_score": 0.0,
    },
)


def test_eye_score_fuses_distance_and_skin() -> None:
    eye = draw_eye("normal")
    stats = quality.image_stats(eye, eye.size)
    near = quality.assess(stats, 10.0, FUSED)
    assert near.gradable and {"skin_fraction", "eye_score"} <= set(near.scores)
    # The same photo, far from the training photos: the fused score says no, though under the cap.
    far = quality.assess(stats, 30.0, FUSED)
    assert not far.gradable and far.reasons[0].startswith("not_an_eye")
    # Close in distance but with no skin at all (a document, a sky): also no.
    sky = Image.fromarray(
        (np.linspace(80, 230, 300)[:, None, None] * np.ones((300, 400, 3)) * [0.5, 0.7, 1.0]).astype(np.uint8)
    )
    sky_stats = quality.image_stats(sky, sky.size)
    assert sky_stats.skin_fraction < 0.05
    assert not quality.assess(sky_stats, 10.0, FUSED).gradable
    score = quality.EyeScore.from_gate(FUSED)
    assert score is not None and score.score(10.0, 1.0) == pytest.approx(2.0 + np.log(1.01))
    assert quality.EyeScore.from_gate(GATE) is None


def _probe_gate(dim: int = 4) -> GateThresholds:
    weights = [0.0] * dim
    weights[0] = 10.0
    return GateThresholds(
        **GATE.model_dump(), eye_probe={"mean": [0.0] * dim, "weights": weights, "bias": -5.0, "min_score": 0.0}
    )


def test_eye_probe_reads_the_embedding() -> None:
    gate = _probe_gate()
    eye = draw_eye("normal")
    stats = quality.image_stats(eye, eye.size)
    along = quality.assess(stats, 1.0, gate, embedding=np.array([3.0, 0.0, 0.0, 0.0]))
    assert along.gradable and along.scores["eye_probe"] == pytest.approx(5.0)
    across = quality.assess(stats, 1.0, gate, embedding=np.array([0.0, 2.0, 0.0, 0.0]))
    assert not across.gradable and across.reasons[0].startswith("not_an_eye")
    # Without an embedding the probe is not applied.
    assert quality.assess(stats, 1.0, gate).gradable
    with pytest.raises(ValueError, match="expects 4"):
        quality.assess(stats, 1.0, gate, embedding=np.zeros(5))


def test_eye_probe_is_parsed_once_per_gate() -> None:
    gate = _probe_gate(1280)
    first = quality.EyeProbe.from_gate(gate)
    assert first is not None and first is quality.EyeProbe.from_gate(gate)
    assert first.weights.dtype == np.float32 and first.weights.shape == (1280,)


GOOD = quality.ImageStats(min_side=200, brightness=0.5, contrast=0.2, sharpness=0.01)
EPS = 1e-6


@pytest.mark.parametrize(
    ("field", "at", "outside", "reason"),
    [
        ("min_side", GATE.min_side, GATE.min_side - 1, "too_small"),
        ("brightness", GATE.min_brightness, GATE.min_brightness - EPS, "too_dark"),
        ("brightness", GATE.max_brightness, GATE.max_brightness + EPS, "too_bright"),
        ("contrast", GATE.min_contrast, GATE.min_contrast - EPS, "low_contrast"),
        ("sharpness", GATE.min_sharpness, GATE.min_sharpness - EPS, "too_blurry"),
        ("ood_distance", MAX_OOD, MAX_OOD + EPS, "not_an_eye"),
    ],
    ids=["side", "dark", "bright", "contrast", "blur", "ood"],
)
def test_each_gate_check_flips_exactly_at_its_threshold(field: str, at: float, outside: float, reason: str) -> None:
    """On the threshold a photo passes; just beyond it, it is refused with that check's reason only."""

    def verdict(value: float) -> quality.Quality:
        if field == "ood_distance":
            return quality.assess(GOOD, value, GATE)
        changes: dict[str, Any] = {field: value}
        return quality.assess(replace(GOOD, **changes), 1.0, GATE)

    assert verdict(at).gradable
    refused = verdict(outside)
    assert not refused.gradable and [r.split(":")[0] for r in refused.reasons] == [reason]


def test_the_eye_score_the_probe_and_the_mid_distance_each_pass_on_their_threshold() -> None:
    """On the threshold a photo passes; just beyond it, it is not an eye (the mirror of the test above)."""
    eye = draw_eye("normal")
    stats = quality.image_stats(eye, eye.size)
    fused = quality.EyeScore.from_gate(FUSED)
    assert fused is not None
    at = fused.score(10.0, stats.skin_fraction)

    def with_gate(**extras: Any) -> GateThresholds:
        return GateThresholds(**{**GATE.model_dump(), **extras})

    for min_score, gradable in ((at, True), (at + EPS, False)):
        gate = with_gate(eye_score={**FUSED.model_dump()["eye_score"], "min_score": min_score})
        assert quality.assess(stats, 10.0, gate).gradable is gradable, min_score
    along = np.array([3.0, 0.0, 0.0, 0.0])  # normalised to (1, 0, 0, 0): the probe scores -5 + 10 = 5
    for min_score, gradable in ((5.0, True), (5.0 + EPS, False)):
        probe = {"mean": [0.0] * 4, "weights": [10.0, 0.0, 0.0, 0.0], "bias": -5.0, "min_score": min_score}
        assert quality.assess(stats, 1.0, with_gate(eye_probe=probe), embedding=along).gradable is gradable
    capped = with_gate(max_mid_distance=30.0)
    assert quality.assess(stats, None, capped, mid_distance=30.0).gradable
    assert not quality.assess(stats, None, capped, mid_distance=30.0 + EPS).gradable


def test_mid_distance_cap_rejects_the_unfamiliar_and_reports_the_distance() -> None:
    gate = GateThresholds(**{**GATE.model_dump(), "max_mid_distance": 30.0})
    eye = draw_eye("normal")
    stats = quality.image_stats(eye, eye.size)
    near = quality.assess(stats, None, gate, mid_distance=29.9)
    assert near.gradable and near.scores["mid_distance"] == pytest.approx(29.9)
    far = quality.assess(stats, None, gate, mid_distance=30.1)
    assert not far.gradable and far.reasons == [far.reasons[0]] and far.reasons[0].startswith("not_an_eye")
    # Without the graph output, or without a threshold, the check does not apply.
    assert quality.assess(stats, None, gate).gradable
    assert quality.assess(stats, None, GATE, mid_distance=1e6).gradable


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (224, 224), (90, 400)])
def test_statistics_are_read_inside_the_letterbox_only(size: tuple[int, int]) -> None:
    """A flat grey photo is flat: the letterbox padding (another colour) must not count as contrast or edges."""
    from cataract_inference.imaging import content_box, preprocess

    spec = InputSpec()
    img = Image.new("RGB", size, (200, 200, 200))
    tensor = preprocess(img, spec)
    left, top, right, bottom = content_box(*size, spec)
    # The box is exactly where preprocess put the photo: inside it the tensor is the photo, outside the fill.
    assert np.allclose(tensor[:, top:bottom, left:right], tensor[:, top, left][:, None, None], atol=1e-5)
    if (right - left, bottom - top) != (spec.size, spec.size):
        assert not np.allclose(tensor[:, 0, 0], tensor[:, top, left])
    stats = quality.tensor_stats(tensor, spec, img, size)
    assert stats.brightness == pytest.approx(200 / 255, abs=2e-3)
    assert stats.contrast < 1e-3 and stats.sharpness < 1e-6
    assert stats.min_side == min(size) and stats.skin_fraction == 0.0
    assert quality.tensor_stats(tensor, spec, img, size, skin=True).skin_fraction == 0.0


def test_tensor_statistics_match_the_photo_they_came_from() -> None:
    eye = draw_eye("normal")
    stats = quality.image_stats(eye, eye.size)
    grey = np.asarray(eye.convert("L"), dtype=np.float32) / 255.0
    assert stats.brightness == pytest.approx(float(grey.mean()), abs=0.01)
    assert stats.contrast == pytest.approx(float(grey.std()), rel=0.1)
    assert stats.skin_fraction == pytest.approx(quality.skin_fraction(eye), abs=0.03)
    blurred = quality.image_stats(eye.filter(ImageFilter.GaussianBlur(4)), eye.size)
    assert blurred.sharpness < stats.sharpness / 2


def test_a_small_photo_is_measured_at_its_own_resolution_not_the_upscaled_one() -> None:
    """Upscaling to the model's size blurs; a sharp thumbnail must not read as out of focus."""
    eye = draw_eye("normal", size=(96, 64))
    small = quality.image_stats(eye, eye.size)
    grey = np.asarray(eye.convert("L"), dtype=np.float32) / 255.0
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4.0 * grey[1:-1, 1:-1]
    # Pillow's "L" rounds to whole grey levels; the gate does not.
    assert small.sharpness == pytest.approx(float(lap.var()), rel=0.15)
    upscaled = eye.resize((336, 224), Image.Resampling.BILINEAR)
    assert quality.image_stats(upscaled, eye.size).sharpness < small.sharpness / 4


def test_the_classifier_measures_skin_only_when_its_gate_has_an_eye_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cataract_inference import classifier as classifier_module
    from cataract_inference.classifier import load_classifier
    from cataract_inference.drawing import encode
    from tests.support.onnx_models import build_tiny_model

    asked: list[bool] = []
    measure_stats = quality.tensor_stats

    def spy(*args: Any, skin: bool, **kwargs: Any) -> Any:
        asked.append(skin)
        return measure_stats(*args, skin=skin, **kwargs)

    monkeypatch.setattr(classifier_module.quality, "tensor_stats", spy)
    fused = {k: v for k, v in FUSED.model_dump().items() if k != "max_ood_distance"} | {"max_ood_distance": 1e9}
    photo = encode(draw_eye("normal"))
    with_score = load_classifier(build_tiny_model(tmp_path / "fused", gate=fused)).predict_bytes(photo)
    assert with_score.quality.scores["skin_fraction"] > 0.2  # the drawn eye sits on skin
    assert asked and all(asked)
    asked.clear()
    plain = load_classifier(build_tiny_model(tmp_path / "plain", gate=GATE.model_dump())).predict_bytes(photo)
    # The score leaves the key out either way: what matters is that the per-request cost was not paid.
    assert "skin_fraction" not in plain.quality.scores
    assert asked and not any(asked)


def _probe(bias: float, size: int = 3) -> dict[str, object]:
    return {"mean": [0.0] * size, "weights": [0.0] * size, "bias": bias, "min_score": 0.0}


@pytest.mark.parametrize(("bias", "gradable"), [(-1.0, False), (1.0, True)])
def test_a_manifest_eye_probe_is_applied_when_screening(tmp_path: Path, bias: float, gradable: bool) -> None:
    # The probe reads the embedding, which predict_bytes once measured but did not pass to the gate:
    # a calibrated probe was then silently ignored.
    from cataract_inference.classifier import load_classifier
    from cataract_inference.drawing import encode
    from tests.support.onnx_models import build_tiny_model

    gate = {**GATE.model_dump(), "max_ood_distance": 1e9, "eye_probe": _probe(bias)}
    result = load_classifier(build_tiny_model(tmp_path / "probed", gate=gate)).predict_bytes(encode(draw_eye("normal")))
    assert result.quality.scores["eye_probe"] == bias
    assert result.quality.gradable is gradable
    assert (result.label == "ungradable") is not gradable
    assert any(r.startswith("not_an_eye:") for r in result.quality.reasons) is not gradable


@pytest.mark.parametrize(
    ("probe", "outputs", "message"),
    [
        (_probe(1.0, size=5), None, "5 weights; the model's embedding has 3 values"),
        ({"mean": [0.0] * 3}, None, "eye_probe is malformed"),
        (_probe(1.0), {"logits": "logits", "ood_distance": "ood_distance"}, "names no embedding output"),
    ],
)
def test_an_eye_probe_the_model_cannot_feed_fails_at_load(
    tmp_path: Path, probe: dict[str, object], outputs: dict[str, str] | None, message: str
) -> None:
    from cataract_inference.classifier import load_classifier
    from cataract_inference.model_source import ModelLoadError
    from tests.support.onnx_models import build_tiny_model

    extra: dict[str, Any] = {"outputs": outputs} if outputs else {}
    gate = {**GATE.model_dump(), "eye_probe": probe}
    with pytest.raises(ModelLoadError, match=message):
        load_classifier(build_tiny_model(tmp_path / "bad", gate=gate, **extra))


_EYE_SCORE = FUSED.model_dump()["eye_score"]


def _with_gate_block(directory: Path, block: str, value: object, **manifest_fields: Any) -> Path:
    """A tiny model whose model.json's gate holds ``value`` as ``block``, written as json.dumps writes it (NaN too)."""
    from tests.support.onnx_models import build_tiny_model

    gate = {**GATE.model_dump(), "max_ood_distance": None}
    model_dir = build_tiny_model(directory, gate=gate, **manifest_fields)
    manifest = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    manifest["gate"][block] = value
    (model_dir / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return model_dir


@pytest.mark.parametrize(
    ("eye_score", "outputs", "message"),
    [
        ({k: v for k, v in _EYE_SCORE.items() if k != "w_distance"}, None, "eye_score is malformed: KeyError"),
        ({**_EYE_SCORE, "scale": 0.0}, None, "scale and skin_floor must be above 0"),
        ({**_EYE_SCORE, "skin_floor": 0.0}, None, "scale and skin_floor must be above 0"),
        ({**_EYE_SCORE, "min_score": float("nan")}, None, "not finite"),
        ([1.0, 2.0], None, "must be an object"),
        (_EYE_SCORE, {"logits": "logits", "embedding": "embedding"}, "outputs.ood_distance names no graph output"),
    ],
)
def test_an_eye_score_that_cannot_be_applied_fails_at_load(
    tmp_path: Path, eye_score: object, outputs: dict[str, str] | None, message: str
) -> None:
    # Each once loaded: a missing key or a zero scale then failed every request, a NaN or a missing distance
    # output left the check silently off.
    from cataract_inference.classifier import load_classifier
    from cataract_inference.manifest import ManifestError
    from cataract_inference.model_source import ModelLoadError

    extra: dict[str, Any] = {"outputs": outputs} if outputs else {}
    with pytest.raises((ModelLoadError, ManifestError), match=re.escape(message)):
        load_classifier(_with_gate_block(tmp_path / "bad", "eye_score", eye_score, **extra))


def test_an_eye_probe_holding_a_nan_fails_at_load(tmp_path: Path) -> None:
    from cataract_inference.classifier import load_classifier
    from cataract_inference.model_source import ModelLoadError

    probe = {**_probe(1.0), "min_score": float("nan")}
    with pytest.raises(ModelLoadError, match=r"eye_probe is malformed.*not finite"):
        load_classifier(_with_gate_block(tmp_path / "nan", "eye_probe", probe))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"min_brightness": 0.9, "max_brightness": 0.1}, "min_brightness 0.9 is above max_brightness 0.1"),
        ({"max_mid_distance": -1.0}, "max_mid_distance must be above 0"),
        ({"max_ood_distance": 0.0}, "max_ood_distance must be above 0"),
        ({"min_side": 0}, "min_side must be at least 1"),
    ],
)
def test_gate_limits_that_refuse_every_photo_are_refused(limits: dict[str, Any], message: str) -> None:
    # Each once loaded, and then called every photo ungradable.
    with pytest.raises(ValueError, match=re.escape(message)):
        GateThresholds(**{**GATE.model_dump(), **limits})


def test_a_small_photo_under_a_centre_crop_is_measured_where_the_model_looks() -> None:
    # Noise at the sides, flat grey in the middle third: the crop sees only grey at any size. A photo smaller than
    # the model's input was once measured whole (noise included) and passed, while the same photo larger was refused.
    from cataract_inference.manifest import InputSpec

    spec = InputSpec(size=32, resize="center_crop")
    rng = np.random.default_rng(0)
    for width in (60, 1200):
        height = width // 3
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[:, width // 3 : 2 * width // 3] = 128
        stats = quality.image_stats(Image.fromarray(pixels), (width, height), spec)
        assert stats.contrast < 0.01 and stats.sharpness < 1e-4, (width, stats)
    # Squashed, the model sees the whole photo: measured whole.
    small = rng.integers(0, 256, (20, 60, 3), dtype=np.uint8)
    assert quality.image_stats(Image.fromarray(small), (60, 20), InputSpec(size=32, resize="squash")).contrast > 0.1


def test_the_eye_score_uses_the_manifests_skin_floor() -> None:
    fitted = {**_EYE_SCORE, "skin_floor": 0.1}
    score = quality.EyeScore.from_gate(GateThresholds(**{**GATE.model_dump(), "eye_score": fitted}))
    assert score is not None and score.skin_floor == 0.1
    # bias + w_distance * (ood - centre) / scale + w_skin * log(skin + floor), with no skin at all:
    assert score.score(14.0, 0.0) == pytest.approx(2.0 - 1.0 * (14.0 - 10.0) / 2.0 + 1.0 * math.log(0.1))


def _overlay_pixels(img: Image.Image, cam: np.ndarray, spec: InputSpec, **kwargs: Any) -> np.ndarray:
    """overlay_png's PNG decoded to an (H, W, 3) uint8 array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(explanation.overlay_png(img, cam, spec, **kwargs)))))


def _heat_drawn(out: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """How far each overlay pixel moved from a flat photo's colour: zero where no heat was drawn."""
    return np.abs(out.astype(np.int32) - np.asarray(colour, dtype=np.int32)).sum(axis=-1)


def test_a_letterboxed_photos_heat_map_leaves_out_the_padding() -> None:
    # 640 x 320 letterboxed into 224: the photo fills rows 56..168 of the square, the rest is padding. The evidence
    # sits in CAM rows 3-4 (square rows 48..80), the photo's top rows: cut to the photo first, the heat covers the
    # top of the overlay; stretched over the photo padding and all, it would land a third of the way down.
    grey = (128, 128, 128)
    cam = np.zeros((14, 14), dtype=np.float32)
    cam[3:5] = 1.0
    heat = _heat_drawn(_overlay_pixels(Image.new("RGB", (640, 320), grey), cam, InputSpec()), grey)
    height = heat.shape[0]
    assert heat.shape == (256, 512)
    assert (heat[: height // 5] > 0).all()
    assert not heat[height // 3 : 2 * height // 3].any()


def test_the_deciding_halfs_heat_map_is_drawn_at_its_place_in_a_shrunk_photo() -> None:
    # 1600 x 800 shrinks to 512 x 256 (by 0.32): the lower-right quadrant (800, 400, 1600, 800)
    # is (256, 128, 512, 256) there. With evidence everywhere in the CAM, exactly that quadrant is coloured.
    colour = (100, 150, 200)
    out = _overlay_pixels(
        Image.new("RGB", (1600, 800), colour),
        np.ones((7, 7), dtype=np.float32),
        InputSpec(),
        region=(800, 400, 1600, 800),
    )
    assert out.shape == (256, 512, 3)
    drawn = _heat_drawn(out, colour) > 0
    expected = np.zeros((256, 512), dtype=bool)
    expected[128:, 256:] = True
    assert np.array_equal(drawn, expected)
    assert (out[~expected] == colour).all()  # the rest is the shrunk photo, untouched


def test_a_centre_cropped_photos_heat_map_sits_over_the_centre_it_came_from() -> None:
    # 400 x 200 under a 32 px centre crop: scaled to 74 x 37, the model saw its middle 32 x 32. Evidence at the
    # CAM's centre is the photo's centre: the heat's centre of mass is there, not off to the top left.
    grey = (128, 128, 128)
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[1:3, 1:3] = 1.0
    spec = InputSpec(size=32, resize="center_crop")
    heat = _heat_drawn(_overlay_pixels(Image.new("RGB", (400, 200), grey), cam, spec), grey).astype(np.float64)
    assert heat.shape == (200, 400) and heat.sum() > 0
    ys, xs = np.indices(heat.shape)
    centre_x, centre_y = (heat * xs).sum() / heat.sum(), (heat * ys).sum() / heat.sum()
    assert abs(centre_x - 200) < 10 and abs(centre_y - 100) < 10, (centre_x, centre_y)
    assert not heat[:, :100].any() and not heat[:, 300:].any()  # outside the crop there is no evidence


@pytest.mark.parametrize(
    ("value", "rgb"),
    [
        # r = 1.5 - |4v - 3|, g = 1.5 - |4v - 2|, b = 1.5 - |4v - 1|, each clipped to 0..1, times 255, truncated.
        (0.0, (0, 0, 127)),
        (0.25, (0, 127, 255)),
        (0.5, (127, 255, 127)),
        (0.75, (255, 127, 0)),
        (1.0, (127, 0, 0)),
    ],
)
def test_the_colour_map_is_jet(value: float, rgb: tuple[int, int, int]) -> None:
    colour = explanation._jet(np.array([value], dtype=np.float32))
    assert colour.dtype == np.uint8 and colour.tolist() == [list(rgb)]


def test_the_blend_of_one_pixel_to_the_unit() -> None:
    # A 32 px photo under a 32 px squash with a 32 x 32 CAM: no resizing, the heat is the CAM itself.
    photo = (40, 80, 200)
    cam = np.zeros((32, 32), dtype=np.float32)
    cam[0, 0] = 1.0
    cam[0, 1] = 0.5
    out = _overlay_pixels(Image.new("RGB", (32, 32), photo), cam, InputSpec(size=32, resize="squash"))
    # Full heat: level 255, jet (127, 0, 0), weight round(0.45 * 255) = 115 of 255, each channel rounded:
    # (40 * 140 + 127 * 115) / 255 = 79.2, 80 * 140 / 255 = 43.9, 200 * 140 / 255 = 109.8.
    assert out[0, 0].tolist() == [79, 44, 110]
    # Half heat: level round(127.5) = 128, jet(128 / 255) = (129, 255, 125), weight round(0.45 * 128) = 58:
    # (40 * 197 + 129 * 58) / 255 = 60.2, (80 * 197 + 255 * 58) / 255 = 119.8, (200 * 197 + 125 * 58) / 255 = 182.9.
    assert out[0, 1].tolist() == [60, 120, 183]
    assert out[0, 2].tolist() == list(photo)  # no heat, no change
