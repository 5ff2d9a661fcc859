"""Grouped k-fold cross-validation: the honest estimate of how the recipe does on unseen photos.

Folds are dealt by duplicate group (stratified by class), so no near duplicate of a held-out photo is
ever trained on. Each fold trains for a fixed number of epochs (no peeking at its test fold) and
predicts its held-out photos from the exact serving tensors. Temperature and threshold are then
cross-fitted: each fold's are fitted on the other folds' out-of-fold predictions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from cataract_inference.classifier import PROBABILITY_DECIMALS

from . import calibrate, metrics
from .splits import grouped_kfold
from .train import CLASSES, FitConfig, Prepared, new_run_dir, predict_logits, prepare, train_model

POS = CLASSES.index("cataract")
# FitConfig's fields a fold does not use: it trains a fixed number of epochs, with no validation split.
FIT_ONLY = ("epochs", "patience", "val_fraction")


def _fold_rules(
    logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, target: float
) -> dict[int, tuple[float, float]]:
    """Each fold's temperature and threshold, fitted on the other folds' out-of-fold predictions by the rule
    release ships (capped at ``MAX_THRESHOLD``), both as model.json keeps them (the threshold rounded down)."""
    rules = {}
    for f in np.unique(fold_of):
        rest = fold_of != f
        t = calibrate.fit_held_out_temperature(logits[rest], labels[rest]).temperature
        probs_rest = calibrate.softmax(logits[rest], t)[:, POS]
        thr = calibrate.referral_threshold(probs_rest, labels[rest] == POS, target)
        rules[int(f)] = (round(t, 5), calibrate.shipped_threshold(thr))
    return rules


def _scored(
    logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, rules: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    """Metrics of ``logits``, each scored by its fold's temperature and threshold."""
    p_pos = np.zeros(len(labels))
    thr_vec = np.zeros(len(labels))
    for f, (t, thr) in rules.items():
        here = fold_of == f
        p_pos[here] = calibrate.softmax(logits[here], t)[:, POS]
        thr_vec[here] = thr
    # Served: the probability as the response rounds it, against the threshold (as classifier.decide does).
    report = metrics.binary_report(labels == POS, np.round(p_pos, PROBABILITY_DECIMALS) >= thr_vec, p_pos)
    report["temperatures"] = [round(t, 4) for t, _ in rules.values()]
    report["thresholds"] = [round(thr, 4) for _, thr in rules.values()]
    return report


def cross_fitted(
    logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, target: float = calibrate.SENSITIVITY_TARGET
) -> dict[str, Any]:
    """Per-fold temperature and threshold fitted on the other folds; pooled metrics on all photos."""
    return _scored(logits, labels, fold_of, _fold_rules(logits, labels, fold_of, target))


def per_photo(
    logits: np.ndarray,
    labels: np.ndarray,
    fold_of: np.ndarray,
    groups: np.ndarray,
    target: float = calibrate.SENSITIVITY_TARGET,
) -> dict[str, Any]:
    """Cross-fitted metrics counting each distinct photo (duplicate group) once, with its mean logits.

    Per-file metrics weigh a photo by its number of copies; this view does not. Each photo is scored by the
    rule that is served: its fold's temperature and threshold as fitted per file (``cross_fitted``), not
    refitted on the distinct photos, which would pick a looser threshold than the one shipped.
    """
    keys = sorted(set(groups.tolist()))
    first = np.array([int(np.nonzero(groups == g)[0][0]) for g in keys])
    mean_logits = np.stack([logits[groups == g].mean(0) for g in keys])
    report = _scored(mean_logits, labels[first], fold_of[first], _fold_rules(logits, labels, fold_of, target))
    report["rule"] = "per_file"  # the served rule; earlier runs refitted it on the distinct photos
    return report


def summarise(logits: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """The CV reports from out-of-fold logits: argmax at T=1, cross-fitted, and cross-fitted per distinct photo."""
    return {
        "argmax_T1": metrics.binary_report(labels == POS, logits.argmax(1) == POS, calibrate.softmax(logits)[:, POS]),
        "cross_fitted": cross_fitted(logits, labels, fold_of),
        "cross_fitted_per_photo": per_photo(logits, labels, fold_of, groups),
    }


def check_folds(prep: Prepared, k: int) -> None:
    """Refuse ``k`` folds when a class has fewer than ``k`` distinct photos (a fold would lack it)."""
    for c, name in enumerate(CLASSES):
        distinct = len({g for g, lab in zip(prep.groups, prep.labels.tolist(), strict=True) if lab == c})
        if distinct < k:
            raise ValueError(
                f"--folds {k} needs at least {k} distinct {name} photos (duplicates count once); there are {distinct}"
            )


def run_cv(
    cfg: FitConfig,
    k: int = 5,
    epochs: int | None = None,
    runs_dir: Path = Path("runs"),
    progress: bool = True,
    *,
    prepared: Prepared | None = None,
) -> Path:
    """Grouped k-fold CV of the recipe in ``cfg``; writes ``cv.json`` and ``cv_oof.npz`` in a run folder.

    ``prepared``: the data as ``prepare(cfg)`` returns it, when the caller has it already.
    """
    t0 = time.perf_counter()
    if epochs is not None and epochs < 1:
        raise ValueError(f"--fold-epochs must be at least 1, got {epochs}")
    prep = prepared if prepared is not None else prepare(cfg, progress)
    labels = prep.labels
    check_folds(prep, k)
    folds = grouped_kfold(prep.groups, labels.tolist(), k, cfg.seed)
    run = new_run_dir(runs_dir, f"cv{k}-{cfg.backbone}")
    fold_of = np.zeros(len(labels), dtype=np.int64)
    logits = np.zeros((len(labels), len(CLASSES)), dtype=np.float64)
    per_fold = []
    for f, test in enumerate(folds):
        test_set = set(test)
        train = [i for i in range(len(labels)) if i not in test_set]
        assert not {prep.groups[i] for i in train} & {prep.groups[i] for i in test}
        t_fold = time.perf_counter()
        model, history, _ = train_model(
            replace(cfg, seed=cfg.seed + f),
            [prep.images[i] for i in train],
            labels[train],
            [prep.groups[i] for i in train],
            epochs=epochs,
            progress=progress,
            desc=f"cv fold {f + 1}/{k}",
        )
        lg = predict_logits(model, prep.tensors[test])
        logits[test] = lg
        fold_of[test] = f
        acc = float((lg.argmax(1) == labels[test]).mean())
        per_fold.append(
            {
                "fold": f,
                "n": len(test),
                "groups": len({prep.groups[i] for i in test}),
                "acc_at_argmax": acc,
                "minutes": round((time.perf_counter() - t_fold) / 60, 2),
                "final_train_loss": history[-1]["train_loss"],
            }
        )
        if progress:
            print(f"fold {f + 1}/{k}: n={len(test)} acc@argmax={acc:.3f}", flush=True)
    np.savez(
        run / "cv_oof.npz",
        logits=logits,
        labels=labels,
        fold=fold_of,
        groups=np.array(prep.groups),
        keys=np.array(prep.keys),  # so export can leave out the photos its own validation reports on
    )
    result = {
        "k": k,
        "epochs_per_fold": epochs or cfg.epochs,
        # Without the fit's own epochs, patience and validation fraction: no fold used them.
        "config": {name: value for name, value in asdict(cfg).items() if name not in FIT_ONLY},
        "n_photos": len(labels),
        "n_groups": len(set(prep.groups)),
        "folds": per_fold,
        **summarise(logits, labels, fold_of, np.array(prep.groups)),
        "minutes": round((time.perf_counter() - t0) / 60, 2),
    }
    (run / "cv.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return run
