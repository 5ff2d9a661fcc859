"""release.py's rules, on synthetic logits: where the temperature and the threshold come from, the cap, the
rounding and the choice of precision (each one was a surviving mutation)."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cataract_training import calibrate, release
from cataract_training.files import replace_together

POS = release.POS


def _logits(p_pos: np.ndarray) -> np.ndarray:
    """Two-class logits whose softmax at T = 1 gives ``p_pos`` for the positive class."""
    out = np.zeros((len(p_pos), 2))
    out[:, POS] = np.log(p_pos / (1 - p_pos))
    return out


def _separated(n: int, seed: int, *, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Positives scored in [hi, 0.99], negatives in [0.01, lo]: 95% sensitivity needs a threshold near hi."""
    rng = np.random.default_rng(seed)
    labels = np.array([POS] * n + [1 - POS] * n)
    p = np.concatenate([rng.uniform(hi, 0.99, n), rng.uniform(0.01, lo, n)])
    return _logits(p), labels


@pytest.mark.parametrize("with_oof", [True, False])
def test_the_threshold_never_exceeds_the_models_own_argmax(with_oof: bool) -> None:
    val_logits, val_labels = _separated(40, 0, lo=0.2, hi=0.8)
    oof = _separated(200, 1, lo=0.2, hi=0.8) if with_oof else None
    fitted = release.fit_calibration(val_logits, val_labels, oof)
    assert fitted["threshold"] == release.MAX_THRESHOLD == 0.5
    if with_oof:
        assert fitted["threshold_oof"] > 0.5, "the case must be one the cap decides"


def test_temperature_and_threshold_are_fitted_on_the_out_of_fold_predictions_at_the_served_temperature() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 600)
    truth = rng.normal(0, 1.5, 600) + np.where(labels == POS, 1.0, -1.0)
    oof_logits = np.zeros((600, 2))
    oof_logits[:, POS] = 3.0 * truth  # overconfident: the fitted temperature should come out near 3
    val_logits, val_labels = _separated(30, 3, lo=0.3, hi=0.7)  # calibrated differently
    fitted = release.fit_calibration(val_logits, val_labels, (oof_logits, labels), left_out=30)
    t = calibrate.fit_temperature(oof_logits, labels)
    assert fitted["temperature"] == t and t > 2.0
    assert abs(t - calibrate.fit_temperature(val_logits, val_labels)) > 0.5, "validation would give another T"
    at_t = calibrate.softmax(oof_logits, t)[:, POS]
    assert fitted["threshold_oof"] == calibrate.threshold_for_sensitivity(at_t, labels == POS)
    at_1 = calibrate.softmax(oof_logits, 1.0)[:, POS]
    assert fitted["threshold_oof"] != calibrate.threshold_for_sensitivity(at_1, labels == POS)
    assert fitted["validation_left_out"] == 30


def test_a_perfectly_separated_validation_split_cannot_sharpen_the_model() -> None:
    val_logits, val_labels = _separated(40, 4, lo=0.3, hi=0.7)
    assert calibrate.fit_temperature(val_logits, val_labels) < 1.0, "unconstrained, it would sharpen"
    assert release.fit_calibration(val_logits, val_labels)["temperature"] >= 1.0


def test_perfectly_separated_out_of_fold_predictions_cannot_sharpen_the_model_either() -> None:
    # `all` calibrates on CV's out-of-fold predictions: a small, easy set of one's own photos separates them
    # perfectly, and unguarded the temperature ran to 0.05, every served probability near 0 or 1.
    oof_logits, oof_labels = _separated(30, 5, lo=0.3, hi=0.7)
    assert calibrate.fit_temperature(oof_logits, oof_labels) < 0.06, "unconstrained, it would run to the bound"
    val_logits, val_labels = _separated(10, 6, lo=0.3, hi=0.7)
    fitted = release.fit_calibration(val_logits, val_labels, (oof_logits, oof_labels))
    assert fitted["temperature"] >= 1.0
    assert fitted["source"].endswith("perfectly separated: temperature kept >= 1")
    # And CV's own per-fold rules, which score each fold as release would ship it.
    from cataract_training import cv

    folds = np.arange(len(oof_labels)) % 3
    rules = cv._fold_rules(oof_logits, oof_labels, folds, calibrate.SENSITIVITY_TARGET)
    assert all(t >= 1.0 for t, _ in rules.values())


def test_out_of_fold_predictions_that_run_the_temperature_to_its_bound_are_called_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tied = (np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), np.array([0, 1, 1]))
    fitted = release.fit_calibration(*_separated(5, 7, lo=0.3, hi=0.7), tied)
    assert fitted["temperature"] < 0.0525
    assert "fitted on 3 out-of-fold predictions ran to the fit's bound" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", [0.2092649, 0.2092651, 0.123456789, 0.5])
def test_the_shipped_threshold_is_rounded_down_never_up(threshold: float) -> None:
    shipped = calibrate.shipped_threshold(threshold)
    assert shipped <= threshold < shipped + 1e-5
    assert shipped == round(shipped, 5)


def _variant(median_ms: float, accuracy: float, sensitivity: float, ece: float, agreement: float) -> dict[str, Any]:
    return {
        "latency": {"median_ms": median_ms},
        "validation": {"accuracy": {"value": accuracy}, "sensitivity": {"value": sensitivity}, "ece": ece},
        "parity_vs_fp32": {"argmax_agreement": agreement},
    }


FP32 = _variant(10.0, 0.95, 0.96, 0.03, 1.0)


@pytest.mark.parametrize(
    ("int8", "picked"),
    [
        (_variant(7.9, 0.95, 0.96, 0.035, 0.995), "int8"),  # clearly faster, as good
        (_variant(8.1, 0.95, 0.96, 0.03, 1.0), "fp32"),  # under 20% faster
        (_variant(5.0, 0.94, 0.96, 0.03, 1.0), "fp32"),  # loses accuracy
        (_variant(5.0, 0.95, 0.94, 0.03, 1.0), "fp32"),  # loses sensitivity
        (_variant(5.0, 0.95, 0.96, 0.05, 1.0), "fp32"),  # worse calibration
        (_variant(5.0, 0.95, 0.96, 0.03, 0.98), "fp32"),  # disagrees with fp32 too often
    ],
)
def test_int8_ships_only_when_clearly_faster_and_as_good(int8: dict[str, Any], picked: str) -> None:
    choice, reason = release.choose(copy.deepcopy(FP32), int8)
    assert choice == picked
    assert reason


def test_a_temperature_at_its_bound_is_called_out(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --cv a tiny validation split can drive T to its bound: export must say so, not ship it quietly."""
    import numpy as np

    from cataract_training.release import fit_calibration

    # Two right with margin and one exact tie, wrong: the tie's loss ignores T, so the fit runs T to 0.05.
    tied = fit_calibration(np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), np.array([0, 1, 1]))
    assert tied["temperature"] < 0.0525
    assert "ran to the fit's bound (0.0515; it stops at 0.05 and 20)" in capsys.readouterr().err
    # A real mistake among confident right answers: an interior temperature, no warning.
    fine = fit_calibration(np.array([[3.0, 0.0], [0.0, 3.0], [2.5, 0.0], [0.0, 1.0]]), np.array([0, 1, 0, 0]))
    assert 0.06 < fine["temperature"] < 19.0
    assert "warning" not in capsys.readouterr().err


def test_a_temperature_just_inside_its_bound_is_not_called_out(capsys: pytest.CaptureFixture[str]) -> None:
    from cataract_training.release import fit_calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=(400, 2))
    labels = (rng.random(400) < calibrate.softmax(logits, 1.0)[:, 1]).astype(np.int64)
    # Logits 17x too small: the loss is lowest at T = 0.0524, within 5% of the fit's 0.05 but not at it.
    fit = fit_calibration(logits / 17.0, labels)
    assert 0.051 < fit["temperature"] < 0.0525
    assert "warning" not in capsys.readouterr().err


def test_a_failure_while_writing_the_new_files_leaves_the_old_set_intact(tmp_path: Path) -> None:
    # export overwrote model.onnx and model.json, then failed on the card: new model, old card, in one folder.
    for name, text in (("model.onnx", "old model"), ("model.json", "old manifest"), ("MODEL_CARD.md", "old card")):
        (tmp_path / name).write_text(text)

    def card_fails(_: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_together(
            tmp_path,
            {
                "model.onnx": lambda p: p.write_text("new model"),
                "model.json": lambda p: p.write_text("new manifest"),
                "MODEL_CARD.md": card_fails,
            },
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md", "model.json", "model.onnx"]  # no leftovers
    assert [(tmp_path / n).read_text() for n in ("model.onnx", "model.json", "MODEL_CARD.md")] == [
        "old model",
        "old manifest",
        "old card",
    ]
    replace_together(tmp_path, {"model.onnx": lambda p: p.write_text("new model")})
    assert (tmp_path / "model.onnx").read_text() == "new model"
    # As readable as any file written there (the image build and the function read it), not a temp file's 0600.
    (tmp_path / "plain").write_text("x")
    assert (tmp_path / "model.onnx").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_replaced_files_keep_the_mode_of_the_ones_they_replace(tmp_path: Path) -> None:
    # Written over, a file kept its mode; a fresh file under a strict umask is 0600, which the image's non-root
    # function user cannot read.
    from cataract_inference.manifest import load_manifest
    from cataract_training import card
    from tests.conftest import BUNDLED_MODEL_DIR

    for name in ("model.onnx", "MODEL_CARD.md"):
        (tmp_path / name).write_text("old")
        (tmp_path / name).chmod(0o644)
    old_umask = os.umask(0o077)
    try:
        replace_together(tmp_path, {"model.onnx": lambda p: p.write_text("new model")})
        card.write_card(load_manifest(BUNDLED_MODEL_DIR / "model.json"), tmp_path)
    finally:
        os.umask(old_umask)
    assert {n: (tmp_path / n).stat().st_mode & 0o777 for n in ("model.onnx", "MODEL_CARD.md")} == {
        "model.onnx": 0o644,
        "MODEL_CARD.md": 0o644,
    }
    assert (tmp_path / "model.onnx").read_text() == "new model"


def test_a_proportions_interval_is_the_wilson_interval_to_four_decimals() -> None:
    # The Wilson score interval, written out here: (p + z²/2n ± z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n).
    from statistics import NormalDist

    from cataract_training import metrics

    k, n = 95, 97
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    record = metrics.proportion(k, n)
    assert record["ci95"] == [round(low, 4), round(high, 4)] == [0.9279, 0.9943]
    assert record["value"] == 0.9794 and (record["k"], record["n"]) == (95, 97)
