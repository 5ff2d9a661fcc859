"""Wilson intervals, AUC, ECE, temperature scaling and the sensitivity-first threshold."""

from __future__ import annotations

import numpy as np
import pytest

from cataract_training import calibrate, metrics


def test_wilson_known_values() -> None:
    lo, hi = metrics.wilson(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-4) and hi == pytest.approx(0.9565, abs=1e-4)
    assert metrics.wilson(0, 10)[0] == 0.0 and metrics.wilson(10, 10)[1] == pytest.approx(1.0)
    assert np.isnan(metrics.wilson(0, 0)[0])


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80).astype(bool)
    s = np.round(rng.normal(size=80) + y, 1)  # rounding makes ties
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert metrics.roc_auc(y, s) == pytest.approx(np.mean(pairs))


def test_roc_curve_steps_over_ties_so_its_area_is_the_auc() -> None:
    fpr, tpr = metrics.roc_curve(np.array([1, 1, 0, 0], dtype=bool), np.full(4, 0.5))
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60).astype(bool)
    s = np.round(rng.normal(size=60) + y, 1)
    fpr, tpr = metrics.roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, s))
    assert len(fpr) == len(np.unique(s)) + 1


def test_ece_zero_when_calibrated_and_large_when_overconfident() -> None:
    conf = np.full(1000, 0.8)
    correct = np.arange(1000) < 800
    assert metrics.ece(conf, correct) == pytest.approx(0.0, abs=1e-9)
    assert metrics.ece(np.full(100, 0.99), np.arange(100) < 60) == pytest.approx(0.39)


def test_ece_adds_over_and_under_confidence_instead_of_letting_them_cancel() -> None:
    # 100 answers at 0.95 of which 75 are right (0.2 over), 100 at 0.65 of which 85 are right (0.2 under):
    # 0.5 * |0.95 - 0.75| + 0.5 * |0.65 - 0.85| = 0.2, where a signed gap would sum to 0.
    conf = np.r_[np.full(100, 0.95), np.full(100, 0.65)]
    correct = np.r_[np.arange(100) < 75, np.arange(100) < 85]
    assert metrics.ece(conf, correct) == pytest.approx(0.2)


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    true_logit = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = np.stack([np.zeros(n), true_logit * 3.0], 1)  # three times too confident
    t = calibrate.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert calibrate.nll(logits, y, t) < calibrate.nll(logits, y, 1.0)
    # The refinement finds the minimum, not just the coarse grid's point (3% apart): a fine search agrees to 0.2%.
    fine = np.linspace(t * 0.9, t * 1.1, 2001)
    best = fine[int(np.argmin([calibrate.nll(logits, y, x) for x in fine]))]
    assert t == pytest.approx(best, rel=0.002)


def test_threshold_reaches_target_sensitivity() -> None:
    rng = np.random.default_rng(2)
    is_pos = rng.random(300) < 0.4
    p = np.clip(rng.normal(0.3 + 0.4 * is_pos, 0.2), 0, 1)
    for target in (0.9, 0.95, 1.0):
        thr = calibrate.threshold_for_sensitivity(p, is_pos, target)
        sens = (p[is_pos] >= thr).mean()
        assert sens >= target
        # and it is the highest such threshold: nudging it up past the next positive loses sensitivity
        higher = p[is_pos][p[is_pos] >= thr].min() + 1e-9
        assert (p[is_pos] >= higher).mean() < target
        # and it lies midway between the deciding positive and the next lower score, so neither sits on it
        deciding = p[is_pos][p[is_pos] >= thr].min()
        next_lower = p[p < deciding].max()
        assert thr == pytest.approx((deciding + next_lower) / 2)


def test_binary_report_counts() -> None:
    # Uneven errors (2 missed, 1 false alarm), so each rate has its own denominator: sensitivity 3/5, PPV 3/4,
    # specificity 3/4, NPV 3/5 would not all differ with one error of each kind.
    is_pos = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    p = np.array([0.9, 0.6, 0.8, 0.2, 0.4, 0.1, 0.3, 0.7, 0.05])
    r = metrics.binary_report(is_pos, p >= 0.5, p)
    assert r["confusion"] == {"tp": 3, "fn": 2, "fp": 1, "tn": 3, "rows": "actual cataract, actual normal"}
    assert (r["sensitivity"]["k"], r["sensitivity"]["n"], r["sensitivity"]["value"]) == (3, 5, 0.6)
    assert (r["specificity"]["k"], r["specificity"]["n"], r["specificity"]["value"]) == (3, 4, 0.75)
    assert (r["ppv"]["k"], r["ppv"]["n"], r["ppv"]["value"]) == (3, 4, 0.75)
    assert (r["npv"]["k"], r["npv"]["n"], r["npv"]["value"]) == (3, 5, 0.6)
    assert (r["accuracy"]["k"], r["accuracy"]["n"]) == (6, 9)
    assert r["brier"] == pytest.approx(round(float(np.mean((p - is_pos) ** 2)), 4))


def _cv_logits(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold logits of 5 folds in which easy cataract photos have six copies each and hard ones one."""
    rng = np.random.default_rng(seed)
    logits, labels, folds, groups = [], [], [], []
    for g in range(200):
        cataract = g % 2 == 0
        easy = cataract and g % 4 == 0
        margin = rng.normal(3.0 if easy else (0.6 if cataract else -1.5), 1.0)
        for _ in range(6 if easy else 1):
            logits.append([margin / 2, -margin / 2])
            labels.append(0 if cataract else 1)  # CLASSES = (cataract, normal)
            folds.append(g % 5)
            groups.append(g)
    return np.array(logits), np.array(labels), np.array(folds), np.array(groups)


def test_per_photo_cv_scores_distinct_photos_by_the_served_per_file_rule() -> None:
    from cataract_training import cv

    logits, labels, folds, groups = _cv_logits()
    per_file = cv.cross_fitted(logits, labels, folds)
    photo = cv.per_photo(logits, labels, folds, groups)
    # The rule served is fitted on files; refitted on distinct photos it would be looser (lower thresholds here).
    assert photo["thresholds"] == per_file["thresholds"] and photo["temperatures"] == per_file["temperatures"]
    assert photo["rule"] == "per_file"
    assert photo["confusion"]["tp"] + photo["confusion"]["fn"] == 100  # each distinct cataract photo once
    # Without duplicates, the per-photo view is the per-file view.
    single = np.unique(groups, return_index=True)[1]
    alone = cv.per_photo(logits[single], labels[single], folds[single], groups[single])
    assert {k: v for k, v in alone.items() if k != "rule"} == cv.cross_fitted(
        logits[single], labels[single], folds[single]
    )


def test_cross_fitted_cv_scores_the_capped_rounded_threshold_that_release_ships() -> None:
    from cataract_training import cv, release

    # Well separated, and most normals confident only at T ~ 1: the uncapped thresholds sit far above 0.5.
    rng = np.random.default_rng(7)
    n = 400
    labels = np.array([i % 2 for i in range(n)])  # 0 = cataract, 1 = normal
    margin = np.where(labels == 0, rng.normal(6.0, 1.0, n), rng.normal(1.0, 1.0, n))
    logits = np.stack([margin / 2, -margin / 2], axis=1)
    folds = np.arange(n) % 5
    report = cv.cross_fitted(logits, labels, folds)
    assert report["thresholds"] == [release.MAX_THRESHOLD] * 5
    shipped = release.fit_calibration(logits[:80], labels[:80], oof=(logits, labels))
    assert shipped["threshold_oof"] > 0.5 and shipped["threshold"] == release.MAX_THRESHOLD
    # Each fold's rule is rounded down as model.json keeps it.
    odd = cv._fold_rules(logits[:37], labels[:37], folds[:37], calibrate.SENSITIVITY_TARGET)
    assert all(thr == calibrate.shipped_threshold(thr) for _, thr in odd.values())
    assert all(t == round(t, 5) for t, _ in odd.values())  # and the temperature as model.json keeps it


def test_cross_validation_refers_by_the_served_rule_the_rounded_probability() -> None:
    """A cataract at 0.4999996 against a threshold of 0.5: the response says 0.5, and serving refers it."""
    from cataract_training import cv

    p = 0.4999996
    logits = np.array([[np.log(p / (1 - p)), 0.0]])  # softmax at T = 1 gives P(cataract) = p
    report = cv._scored(logits, np.array([0]), np.array([0]), {0: (1.0, 0.5)})
    assert report["sensitivity"]["value"] == 1.0


def test_binary_report_auc_and_top_label_ece() -> None:
    is_pos = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    p = np.array([0.9, 0.6, 0.8, 0.2, 0.4, 0.1, 0.3, 0.7, 0.05])
    # A referral threshold other than 0.5: the ECE still scores the predicted class (P >= 0.5) and its probability.
    r = metrics.binary_report(is_pos, p >= 0.35, p)
    assert r["roc_auc"] == 0.8  # 16 of the 20 (cataract, normal) pairs ranked right
    confidence = [0.9, 0.6, 0.8, 0.8, 0.6, 0.9, 0.7, 0.7, 0.95]
    right = [True, True, True, False, False, True, True, False, True]
    assert r["ece"] == round(metrics.ece(np.array(confidence), np.array(right)), 4)
    assert r["ece"] != round(metrics.ece(p, is_pos), 4)
