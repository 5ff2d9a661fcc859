"""Screening metrics with 95% Wilson intervals, ROC AUC and calibration error (pure NumPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(nan, nan)`` when n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def proportion(k: int, n: int) -> dict[str, Any]:
    """A proportion with its count and 95% Wilson interval (value and interval None when n = 0)."""
    if not n:
        return {"value": None, "k": int(k), "n": 0, "ci95": None}
    lo, hi = wilson(k, n)
    return {"value": round(k / n, 4), "k": int(k), "n": int(n), "ci95": [round(lo, 4), round(hi, 4)]}


def from_counts(m: dict[str, Any]) -> tuple[float, tuple[float, float]]:
    """A ``proportion`` record's value and 95% interval, recomputed from its counts where it has them: model.json
    keeps 4 decimals, and rounding those again turns 98.947% into 99.0%, or a 0.347% bound into 0.4%."""
    if m.get("n"):
        return m["k"] / m["n"], wilson(m["k"], m["n"])
    low, high = m["ci95"]
    return m["value"], (low, high)


def format_rate(m: dict[str, Any]) -> str:
    """``proportion``'s record as ``97.9% [92.8, 99.4] (95/97)``, from its counts (``n/a`` when undefined)."""
    if m.get("value") is None:
        return "n/a"
    value, (low, high) = from_counts(m)
    return f"{value * 100:.1f}% [{low * 100:.1f}, {high * 100:.1f}] ({m['k']}/{m['n']})"


def json_ready(obj: Any) -> Any:
    """``obj`` with every NaN or infinity (an AUC of one class, say) as None: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    return obj


def roc_auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count half)."""
    is_pos = np.asarray(is_pos, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(is_pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold."""
    is_pos = np.asarray(is_pos, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    # One point per distinct score: tied photos cross the threshold together, so the curve's area is the AUC.
    last_of_tie = np.r_[np.diff(score[order]) != 0, True]
    tp = np.concatenate([[0], np.cumsum(is_pos[order])[last_of_tie]])
    fp = np.concatenate([[0], np.cumsum(~is_pos[order])[last_of_tie]])
    return fp / max(1, fp[-1]), tp / max(1, tp[-1])


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy in each."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = which == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": int(m.sum()),
                "confidence": float(confidence[m].mean()) if m.any() else float("nan"),
                "accuracy": float(correct[m].mean()) if m.any() else float("nan"),
            }
        )
    return out


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: bin-weighted gap between confidence and accuracy."""
    n = len(confidence)
    if n == 0:
        return float("nan")
    bins = calibration_bins(confidence, correct, n_bins)
    return float(sum(b["count"] / n * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"]))


def decision_rates(is_pos: np.ndarray, pred_pos: np.ndarray) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV and NPV (Wilson 95%) of yes/no decisions, and their confusion."""
    is_pos = np.asarray(is_pos, dtype=bool)
    pred_pos = np.asarray(pred_pos, dtype=bool)
    tp = int((is_pos & pred_pos).sum())
    tn = int((~is_pos & ~pred_pos).sum())
    fp = int((~is_pos & pred_pos).sum())
    fn = int((is_pos & ~pred_pos).sum())
    return {
        "accuracy": proportion(tp + tn, len(is_pos)),
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "ppv": proportion(tp, tp + fp),
        "npv": proportion(tn, tn + fn),
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "rows": "actual cataract, actual normal"},
    }


def binary_report(is_pos: np.ndarray, pred_pos: np.ndarray, p_pos: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV, NPV (Wilson 95%), ROC AUC, confusion and ECE."""
    is_pos = np.asarray(is_pos, dtype=bool)
    p_pos = np.asarray(p_pos, dtype=np.float64)
    rates = decision_rates(is_pos, pred_pos)
    # Calibration of the predicted class's probability (top-label ECE), two classes.
    conf = np.where(p_pos >= 0.5, p_pos, 1 - p_pos)
    correct = (p_pos >= 0.5) == is_pos
    return {
        "n": len(is_pos),
        **{k: rates[k] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")},
        "roc_auc": round(roc_auc(is_pos, p_pos), 4),
        "confusion": rates["confusion"],
        "ece": round(ece(conf, correct, n_bins), 4),
        "ece_bins": n_bins,
        "brier": round(float(np.mean((p_pos - is_pos) ** 2)), 4),
    }
