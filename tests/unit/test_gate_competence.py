"""The competence sweep: degradations, the competent level per axis, and the thresholds it widens."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from cataract_inference import quality
from cataract_inference.manifest import GateThresholds
from cataract_training import competence
from cataract_training import gate as cal


def _photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A textured test card: edges for the blur to soften, mid-grey for exposure to move."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    base = np.full((h, w, 3), 120, dtype=np.float64)
    base[:, : w // 2] += 40
    base[h // 3 : 2 * h // 3, w // 4 : 3 * w // 4] -= 60
    base += rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def _laplacian_var(img: Image.Image) -> float:
    g = _grey(img)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


@pytest.mark.parametrize("axis", [a.name for a in competence.AXES])
def test_each_axis_moves_its_statistic_further_at_each_level(axis: str) -> None:
    img = _photo()
    levels = next(a.levels for a in competence.AXES if a.name == axis)
    measure = {
        "blur": _laplacian_var,
        "darker": lambda im: float(_grey(im).mean()),
        "brighter": lambda im: -float(_grey(im).mean()),
        "flatter": lambda im: float(_grey(im).std()),
    }[axis]
    values = [measure(img)] + [measure(competence.degrade(img, axis, level)) for level in levels]
    assert all(b < a for a, b in itertools.pairwise(values)), (axis, values)


def test_blur_scales_with_the_photo() -> None:
    """The same blur level softens a photo and its double-size copy alike (widths are per 512 px)."""
    small = _photo(size=(256, 192))
    big = small.resize((512, 384), Image.Resampling.NEAREST)
    a = competence.degrade(small, "blur", 4)
    b = competence.degrade(big, "blur", 4).resize(small.size, Image.Resampling.BOX)
    assert abs(_laplacian_var(a) - _laplacian_var(b)) < 0.35 * _laplacian_var(a)


def test_darkening_adds_reproducible_sensor_noise() -> None:
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    one, again = (competence.degrade(img, "darker", 0.5, seed=3) for _ in range(2))
    assert np.array_equal(np.asarray(one), np.asarray(again))
    assert np.asarray(one).std() > 1.0  # a flat grey card gains noise
    assert not np.array_equal(np.asarray(one), np.asarray(competence.degrade(img, "darker", 0.5, seed=4)))


def test_an_unknown_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown degradation axis 'fog'"):
        competence.degrade(_photo(), "fog", 1.0)


def _signals(referrals: list[bool], sharpness: float = 0.01, brightness: float = 0.5) -> list[cal.Signals]:
    stats = quality.ImageStats(300, brightness, 0.2, sharpness, 0.5)
    return [cal.Signals(stats, 10.0, None, 5.0, r) for r in referrals]


TRUTH = [True, True, True, False, False, False]


def _step(axis: str, level: float, referrals: list[bool], **stats: float) -> competence.Step:
    return competence.Step(axis, level, _signals(referrals, **stats), TRUTH)


def test_errors_and_misses_are_counted_against_the_labels() -> None:
    step = _step("blur", 1, [True, False, True, True, False, False])
    assert (step.n, step.errors, step.misses) == (6, 2, 1)


def _steps(blur: list[list[bool]], darker: list[list[bool]] | None = None) -> list[competence.Step]:
    right = [True, True, True, False, False, False]
    steps = [_step("original", 0.0, right)]
    steps += [_step("blur", lv, r) for lv, r in zip(competence.AXES[0].levels, blur, strict=False)]
    steps += [_step("darker", lv, r) for lv, r in zip(competence.AXES[1].levels, darker or [], strict=False)]
    return steps


def test_the_competent_level_is_the_last_before_the_first_failure() -> None:
    right = [True, True, True, False, False, False]
    one_false_alarm = [True, True, True, True, False, False]
    one_miss = [False, True, True, False, False, False]
    two_false_alarms = [True, True, True, True, True, False]
    levels = competence.competent_levels(
        _steps(
            [right, one_false_alarm, right, two_false_alarms, right],  # fails at the 4th; the 5th does not count
            [one_miss],  # a missed cataract fails even with no more errors in all
        )
    )
    blur_levels = competence.AXES[0].levels
    assert levels["blur"] == blur_levels[2]
    assert levels["darker"] is None
    assert levels["brighter"] is None and levels["flatter"] is None  # not swept: nothing shown


def test_a_sweep_without_originals_is_refused() -> None:
    with pytest.raises(ValueError, match="no step for the original photos"):
        competence.competent_levels([_step("blur", 1, TRUTH)])


def test_only_steps_up_to_the_competent_level_are_admitted() -> None:
    right = [True, True, True, False, False, False]
    steps = _steps([right, right, right])
    levels = {"blur": competence.AXES[0].levels[1], "darker": None}
    admitted = competence.admitted(steps, levels)
    assert len(admitted) == 2 * len(TRUTH)
    assert all(s in steps[1].signals or s in steps[2].signals for s in admitted)


def test_admitted_photos_widen_the_thresholds_and_pass_them() -> None:
    rng = np.random.default_rng(0)
    columns = (rng.uniform(0.3, 0.7, 300), rng.uniform(0.1, 0.3, 300), rng.uniform(0.002, 0.05, 300))
    eyes = [
        cal.Signals(quality.ImageStats(300, float(b), float(c), float(s), 0.5), 10.0)
        for b, c, s in zip(*columns, strict=True)
    ]
    tails = cal.fit_stat_thresholds(eyes)
    blurred = [cal.Signals(quality.ImageStats(300, 0.96, 0.031, 1.23456e-5, 0.5), 10.0)]
    widened = cal.fit_stat_thresholds(eyes, admit=blurred)
    assert widened["min_sharpness"] == 1.2e-5 < tails["min_sharpness"]
    assert widened["min_contrast"] == 0.031 < tails["min_contrast"]
    assert widened["max_brightness"] == 0.96 > tails["max_brightness"]
    assert widened["min_brightness"] == tails["min_brightness"]  # widened, never narrowed
    assert widened["min_side"] == tails["min_side"]
    assert not cal.rejected(blurred, GateThresholds(**widened)).any()
    assert cal.rejected(blurred, GateThresholds(**tails)).all()
    # Admitted photos inside the tails change nothing.
    assert cal.fit_stat_thresholds(eyes, admit=eyes[:5]) == tails


def test_the_sweep_measures_every_level_of_every_axis() -> None:
    photos = [competence.Photo(_photo(i), i == 0, f"p{i}") for i in range(3)]
    seen: list[bytes] = []

    def measure(data: bytes) -> cal.Signals:
        seen.append(data)
        return _signals([True])[0]

    steps = competence.sweep(photos, measure)
    assert [(s.axis, s.level) for s in steps][:2] == [("original", 0.0), ("blur", competence.AXES[0].levels[0])]
    assert len(steps) == 1 + sum(len(a.levels) for a in competence.AXES)
    assert all(s.n == 3 and s.truth == [True, False, False] for s in steps)
    assert len(seen) == 3 * len(steps) and all(d[:2] == b"\xff\xd8" for d in seen)  # sent as JPEG


def test_the_sweep_needs_photos_and_referrals() -> None:
    with pytest.raises(ValueError, match="no eye photos"):
        competence.sweep([], lambda _d: _signals([True])[0])
    photo = [competence.Photo(_photo(), True, "p")]
    no_referral = cal.Signals(quality.ImageStats(300, 0.5, 0.2, 0.01, 0.5), 10.0)
    with pytest.raises(ValueError, match="referral"):
        competence.sweep(photo, lambda _d: no_referral)


def test_summary_reports_counts_and_the_rule() -> None:
    right = [True, True, True, False, False, False]
    steps = _steps([right, [True, True, True, True, False, False]])
    block = competence.summary(steps, competence.competent_levels(steps))
    assert block["original"] == {"n": 6, "errors": 0, "misses": 0}
    blur = block["axes"]["blur"]
    assert blur["competent_level"] == competence.AXES[0].levels[1]
    assert blur["levels"][1] == {"level": competence.AXES[0].levels[1], "n": 6, "errors": 1, "misses": 0}
    assert "no more missed cataracts" in block["rule"]


def _eye(brightness: float, contrast: float, sharpness: float) -> cal.Signals:
    return cal.Signals(quality.ImageStats(300, brightness, contrast, sharpness, 0.5), 10.0, None, 5.0, True)


def test_a_missed_cataract_the_widening_would_admit_is_refused_again() -> None:
    rng = np.random.default_rng(1)
    eyes = [
        _eye(float(b), 0.2, float(s))
        for b, s in zip(rng.uniform(0.3, 0.7, 300), rng.uniform(0.002, 0.05, 300), strict=True)
    ]
    tails = cal.fit_stat_thresholds(eyes)
    blurred = [_eye(0.5, 0.2, s) for s in (3e-5, 5e-5, 8e-5)]  # admitted: the model screened them right
    missed = _eye(0.5, 0.2, 6e-5)  # as blurred, and the model called this cataract normal
    widened = cal.fit_stat_thresholds(eyes, admit=blurred)
    assert not cal.fails_statistics(missed.stats, widened)  # the plain widening would serve it
    safe = cal.fit_stat_thresholds(eyes, admit=blurred, keep_refused=[missed])
    assert cal.fails_statistics(missed.stats, safe)
    assert widened["min_sharpness"] < safe["min_sharpness"] <= tails["min_sharpness"]
    assert safe["min_sharpness"] == 6.1e-5  # just past the miss, no further
    assert not cal.fails_statistics(blurred[2].stats, safe)  # the sharper admitted photo still passes
    # A miss the tails let through anyway is not the widening's doing: nothing moves for it.
    sharp_miss = _eye(0.5, 0.2, 0.04)
    assert cal.fit_stat_thresholds(eyes, admit=blurred, keep_refused=[sharp_miss]) == widened


def test_the_cheapest_threshold_is_moved_back() -> None:
    """A dark, flat photo the model missed: moving contrast back costs fewer admitted photos than sharpness."""
    eyes = [_eye(0.5, 0.2 + 0.001 * i, 0.01 + 1e-4 * i) for i in range(200)]
    tails = cal.fit_stat_thresholds(eyes)
    admitted = [_eye(0.5, 0.2, s) for s in (2e-5, 4e-5, 6e-5, 8e-5, 5e-3)] + [_eye(0.5, 0.05, 0.02)]
    missed = _eye(0.5, 0.06, 1e-4)
    safe = cal.fit_stat_thresholds(eyes, admit=admitted, keep_refused=[missed])
    assert cal.fails_statistics(missed.stats, safe)
    assert safe["min_contrast"] == 0.0601 and safe["min_sharpness"] < tails["min_sharpness"]


def test_new_misses_are_the_cataracts_lost_to_degradation_only() -> None:
    original = _step("original", 0.0, [True, False, True, False, False, False])  # photo 1: missed already
    blur = _step("blur", 1, [False, False, True, False, False, False])  # photo 0: lost to blur
    dark = _step("darker", 0.6, [True, False, False, True, False, False])  # photo 2 lost; photo 3 a false alarm
    misses = competence.new_misses([original, blur, dark])
    assert [id(m) for m in misses] == [id(blur.signals[0]), id(dark.signals[2])]
    with pytest.raises(ValueError, match="original"):
        competence.new_misses([blur])


def test_an_over_bright_missed_cataract_the_widening_would_admit_is_refused_again() -> None:
    rng = np.random.default_rng(2)
    eyes = [_eye(float(b), 0.2, 0.01) for b in rng.uniform(0.3, 0.7, 300)]
    tails = cal.fit_stat_thresholds(eyes)
    bright = [_eye(b, 0.2, 0.01) for b in (0.86, 0.9, 0.93)]  # admitted: the model screened them right
    missed = _eye(0.91234, 0.2, 0.01)  # as bright, and the model called this cataract normal
    widened = cal.fit_stat_thresholds(eyes, admit=bright)
    assert tails["max_brightness"] < missed.stats.brightness <= widened["max_brightness"]
    safe = cal.fit_stat_thresholds(eyes, admit=bright, keep_refused=[missed])
    assert cal.fails_statistics(missed.stats, safe)
    assert safe["max_brightness"] == 0.9123  # just under the miss, no further
    assert not cal.fails_statistics(bright[1].stats, safe)  # the darker admitted photo still passes


@pytest.mark.parametrize("truth", [[False] * 6, [True] * 6], ids=["no cataract", "only cataracts"])
def test_the_competent_levels_need_photos_of_both_classes(truth: list[bool]) -> None:
    # Without a cataract, "no more missed cataracts" read 0 <= 0 at every step: every axis was competent at its
    # harshest level, and the gate widened to match.
    steps = [competence.Step("original", 0.0, _signals(truth), truth)]
    steps += [competence.Step("blur", lv, _signals(truth), truth) for lv in competence.AXES[0].levels]
    with pytest.raises(ValueError, match=f"got {sum(truth)} cataract and {6 - sum(truth)} other photos"):
        competence.competent_levels(steps)
