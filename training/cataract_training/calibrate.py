"""Temperature scaling and the sensitivity-first decision threshold, fitted on held-out logits (release: grouped CV's
out-of-fold predictions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cataract_inference.classifier import softmax  # serving's own: what is fitted is what is served

# The share of cataracts the referral threshold must catch: a missed cataract costs more than a referral.
SENSITIVITY_TARGET = 0.95
# P(cataract) >= 0.5 is the model's own argmax at any temperature: a referral threshold above it would
# refer fewer cataracts than the bare model does.
MAX_THRESHOLD = 0.5


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes at ``temperature``."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature minimising the held-out logits' NLL: a log-spaced grid, then golden-section refinement.

    One scalar cannot change the ranking, so accuracy and AUC are untouched; only confidence moves.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 200))
    losses = [nll(logits, labels, t) for t in grid]
    best = int(np.argmin(losses))
    a = np.log(grid[max(best - 1, 0)])
    b = np.log(grid[min(best + 1, len(grid) - 1)])
    phi = (5**0.5 - 1) / 2
    for _ in range(60):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if nll(logits, labels, np.exp(c)) < nll(logits, labels, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


@dataclass(frozen=True)
class HeldOutTemperature:
    """A temperature fitted on held-out predictions, and how the fit ended."""

    temperature: float
    separable: bool  # every prediction right: held at >= 1
    at_bound: bool  # not separable, yet it ran to a bound of the search: no calibration to speak of
    bounds: tuple[float, float]  # the search's


def fit_held_out_temperature(
    logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0
) -> HeldOutTemperature:
    """``fit_temperature`` as release ships it, from validation or out-of-fold predictions.

    Perfectly separated predictions (a small or easy set) make the NLL-optimal temperature run to zero: certainty
    that no new photo bears out. Such a set cannot sharpen the model, so its temperature is kept >= 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    separable = bool((logits.argmax(1) == labels).all())
    lo = max(lo, 1.0) if separable else lo
    t = fit_temperature(logits, labels, lo=lo, hi=hi)
    # At a bound when the loss there is no worse than at the fit's answer (the search stops just short of it).
    at_bound = not separable and min(nll(logits, labels, b) for b in (lo, hi)) <= nll(logits, labels, t)
    return HeldOutTemperature(t, separable, at_bound, (lo, hi))


def threshold_for_sensitivity(p_pos: np.ndarray, is_pos: np.ndarray, target: float = SENSITIVITY_TARGET) -> float:
    """The highest threshold on P(positive) whose sensitivity is still >= ``target``.

    The highest such threshold keeps specificity as high as the target allows. It is set just below
    the deciding positive's probability (midway to the next lower score), so scores equal to it refer.
    """
    p_pos = np.asarray(p_pos, dtype=np.float64)
    is_pos = np.asarray(is_pos, dtype=bool)
    pos = np.sort(p_pos[is_pos])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive examples to set a threshold on")
    need = int(np.ceil(target * len(pos) - 1e-9))
    cut = pos[max(need, 1) - 1]
    below = p_pos[p_pos < cut]
    if below.size:
        return float((cut + below.max()) / 2)
    return float(cut)


def referral_threshold(p_pos: np.ndarray, is_pos: np.ndarray, target: float = SENSITIVITY_TARGET) -> float:
    """The rule release ships: ``threshold_for_sensitivity`` capped at ``MAX_THRESHOLD`` (before rounding)."""
    return min(threshold_for_sensitivity(p_pos, is_pos, target), MAX_THRESHOLD)


def shipped_threshold(threshold: float) -> float:
    """The threshold as model.json keeps it, at 5 decimals: rounded down, never up, which could move it past
    the score of the cataract photo that decided it."""
    return math.floor(threshold * 1e5) / 1e5
