"""How far the model stays right as an eye photo degrades along what the gate's image statistics measure.

The gate's image statistics (grey mean, grey std, variance of the Laplacian) were first set at the tails
of the training photos: refuse what looks unlike them. Measured, the model keeps screening photos
correctly well past those tails: on the first model it was measured on, a 2 px Gaussian blur of a 512 px
photo made the gate refuse 6 of the 95 validation photos, all of which the model still classified
correctly. Each refusal is a needless "ungradable" and a needless referral.

This module degrades eye photos the model never trained on, one axis at a time and one step at a time,
and finds the most severe step at which the model still screens them as well as the originals. The
gate then admits the photos up to that step (``gate.fit_stat_thresholds(admit=...)``), except that every
degraded cataract the model missed (``new_misses``) stays refused where the training photos' tails
refused it (``keep_refused=...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from cataract_inference.drawing import encode

if TYPE_CHECKING:
    from .gate import Signals

REFERENCE_SIDE = 512  # blur widths are given for a photo of this longest side and scaled to the photo
JPEG_QUALITY = 88  # each degraded photo reaches the model as a phone would send it
SENSOR_NOISE = 3.0  # grey levels (of 255): an underexposed phone photo is brightened, noise and all
# Competent: no more missed cataracts than on the originals, and at most this many more errors.
ERROR_SLACK = 1


@dataclass(frozen=True)
class Axis:
    """One kind of degradation and its steps, mildest first."""

    name: str
    levels: tuple[float, ...]
    description: str


AXES: tuple[Axis, ...] = (
    Axis("blur", (1, 2, 3, 4, 6, 8, 10, 12), "Gaussian blur, sigma in px at a 512 px longest side"),
    Axis("darker", (0.6, 0.45, 0.35, 0.25, 0.18, 0.12), "exposure times the level, with sensor noise"),
    Axis("brighter", (1.35, 1.5, 1.7, 2.0, 2.4), "exposure times the level, clipped at white"),
    Axis("flatter", (0.6, 0.45, 0.35, 0.25, 0.15, 0.1), "contrast times the level"),
)


def degrade(img: Image.Image, axis: str, level: float, *, seed: int = 0) -> Image.Image:
    """``img`` (RGB) degraded along ``axis`` to ``level``."""
    if axis == "blur":
        return img.filter(ImageFilter.GaussianBlur(level * max(img.size) / REFERENCE_SIDE))
    if axis == "darker":
        dark = np.asarray(ImageEnhance.Brightness(img).enhance(level), dtype=np.float32)
        noise = np.random.default_rng(seed).normal(0.0, SENSOR_NOISE, dark.shape)
        return Image.fromarray(np.clip(dark + noise, 0, 255).round().astype(np.uint8), "RGB")
    if axis == "brighter":
        return ImageEnhance.Brightness(img).enhance(level)
    if axis == "flatter":
        return ImageEnhance.Contrast(img).enhance(level)
    raise ValueError(f"unknown degradation axis {axis!r}; expected one of {[a.name for a in AXES]}")


@dataclass(frozen=True)
class Photo:
    """An eye photo the model never trained on, and its label."""

    image: Image.Image
    cataract: bool
    name: str


@dataclass(frozen=True)
class Step:
    """Every photo at one level of one axis, through the serving path (``axis`` "original": untouched)."""

    axis: str
    level: float
    signals: list[Signals]
    truth: list[bool]

    @property
    def n(self) -> int:
        return len(self.truth)

    @property
    def errors(self) -> int:
        """Photos the model gets wrong, the gate ignored."""
        return sum(s.referral != t for s, t in zip(self.signals, self.truth, strict=True))

    @property
    def misses(self) -> int:
        """Cataracts the model does not refer, the gate ignored."""
        return sum(t and not s.referral for s, t in zip(self.signals, self.truth, strict=True))


def sweep(
    photos: Sequence[Photo], measure: Callable[[bytes], Signals], progress: Callable[[str], None] | None = None
) -> list[Step]:
    """The originals, then every level of every axis; ``measure`` runs one encoded photo through serving."""
    if not photos:
        raise ValueError("no eye photos to measure the model's competence on")

    def run(axis: str, level: float, change: Callable[[Image.Image, int], Image.Image]) -> Step:
        if progress:
            progress(f"{axis} {level:g}")
        signals = [measure(encode(change(p.image, i), "JPEG", quality=JPEG_QUALITY)) for i, p in enumerate(photos)]
        if any(s.referral is None for s in signals):
            raise ValueError("the competence sweep needs each photo's referral (Signals.referral)")
        return Step(axis, level, signals, [p.cataract for p in photos])

    steps = [run("original", 0.0, lambda img, _i: img)]
    for axis in AXES:
        for level in axis.levels:
            steps.append(run(axis.name, level, _change(axis.name, level)))
    return steps


def _change(axis: str, level: float) -> Callable[[Image.Image, int], Image.Image]:
    """One degradation at one level, as a change of (photo, its index): the index seeds any noise."""
    return lambda img, i: degrade(img, axis, level, seed=i)


def _original(steps: Sequence[Step]) -> Step:
    """The sweep's step of the undegraded photos, which every other step is judged against."""
    original = next((s for s in steps if s.axis == "original"), None)
    if original is None:
        raise ValueError("the sweep has no step for the original photos")
    return original


def competent_levels(steps: Sequence[Step], *, slack: int = ERROR_SLACK) -> dict[str, float | None]:
    """Per axis, the most severe level the model screens as well as the originals (``None``: not even the mildest).

    As well: no more missed cataracts, and at most ``slack`` more errors. The first level that fails
    ends the axis; a later level that happens to pass does not count. Photos of both kinds are needed:
    without a cataract, "no more missed cataracts" reads 0 <= 0 at every level and every axis would be
    competent at its harshest.
    """
    original = _original(steps)
    cataracts = sum(original.truth)
    if cataracts in (0, original.n):
        raise ValueError(
            f"the competence rule needs cataract and other photos, and got {cataracts} cataract and "
            f"{original.n - cataracts} other photos: without both, missed cataracts or false alarms go unseen "
            "and every degradation would count as competent (give the sweep photos of both classes)"
        )
    out: dict[str, float | None] = {}
    for axis in AXES:
        best: float | None = None
        for step in (s for s in steps if s.axis == axis.name):
            if step.misses > original.misses or step.errors > original.errors + slack:
                break
            best = step.level
        out[axis.name] = best
    return out


def admitted(steps: Sequence[Step], levels: dict[str, float | None]) -> list[Signals]:
    """The signals of every degraded photo at or below its axis's competent level: the gate must pass them."""
    order = {a.name: a.levels for a in AXES}
    out: list[Signals] = []
    for step in steps:
        limit = levels.get(step.axis)
        if step.axis not in order or limit is None:
            continue
        if order[step.axis].index(step.level) <= order[step.axis].index(limit):
            out.extend(step.signals)
    return out


def new_misses(steps: Sequence[Step]) -> list[Signals]:
    """Degraded cataract photos the model misses though it caught them undegraded: the gate must refuse these."""
    original = _original(steps)
    return [
        signals
        for step in steps
        if step.axis != "original"
        for signals, truth, before in zip(step.signals, step.truth, original.signals, strict=True)
        if truth and not signals.referral and before.referral
    ]


def summary(steps: Sequence[Step], levels: dict[str, float | None]) -> dict[str, Any]:
    """JSON-able counts per axis and level, and each axis's competent level."""
    return {
        "rule": (
            f"competent: no more missed cataracts than on the originals and at most {ERROR_SLACK} more "
            f"{'error' if ERROR_SLACK == 1 else 'errors'}; the first level that fails ends the axis"
        ),
        "original": {"n": steps[0].n, "errors": steps[0].errors, "misses": steps[0].misses},
        "axes": {
            axis.name: {
                "description": axis.description,
                "competent_level": levels.get(axis.name),
                "levels": [
                    {"level": s.level, "n": s.n, "errors": s.errors, "misses": s.misses}
                    for s in steps
                    if s.axis == axis.name
                ],
            }
            for axis in AXES
        },
    }
