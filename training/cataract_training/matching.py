"""Reframed copies: one photo cropped, bordered, mirrored, resized or recoloured, which whole-image hashes miss.

Web-scraped eye photos come back as crops of each other (one eye cut from a face shot, a black border added,
a mirror image, an iris recoloured for a stock photo). Perceptual hashes compare whole images, so they see
none of that, and a copy on each side of a split inflates every held-out number. Here ORB keypoints
(scikit-image) of a small grey copy of each photo, and of its mirror image, are matched between candidate
pairs, and a pair counts as one photo when a RANSAC similarity transform (shift, scale, rotation) explains at
least ``MIN_INLIERS`` of the matches: a geometric check that two different eyes do not pass.

Candidates are each photo's ``CANDIDATES`` nearest neighbours by colour histogram, and as many by layout (a
tiny grey thumbnail, contrast-normalised, or its mirror image), which a recoloured, darkened or greyscale copy
keeps. Only candidates are matched, so the keypoint work grows with the number of photos, not with its square;
the candidate search compares small vectors a block of rows at a time, in memory that grows the same way.

Found: copies cropped to about half the photo or more. A tight crop (one eye cut from a wide face shot, a third
of it or less) keeps too few of the photo's 200 keypoints, and is usually missed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE = 256  # longest side of the grey copy the keypoints are found on
KEYPOINTS = 200
CANDIDATES = 25  # neighbours by colour histogram verified per photo
MIN_INLIERS = 20  # consistent matches for "the same photo": see docs/training.md for how it was chosen
MAX_RATIO = 0.8  # Lowe's ratio test on descriptor distances
RANSAC_PX = 3.0  # residual, in pixels of the grey copy, for a match to count as consistent
HIST_BINS = 8  # per RGB channel
LAYOUT_SIDE = 16  # the grey thumbnail compared for layout candidates
MIN_LAYOUT_CORRELATION = 0.5  # below it, no layout candidate (flat images correlate with nothing)
ROWS_PER_BLOCK = 256  # rows of the candidate similarities held at once


@dataclass(frozen=True)
class Features:
    """Keypoints (row, col) and descriptors of a photo and of its mirror image, its colour histogram and layout."""

    keypoints: tuple[np.ndarray, np.ndarray]
    descriptors: tuple[np.ndarray, np.ndarray]  # packed bits (uint8, 32 a descriptor): 12 kB a photo, not 400
    histogram: np.ndarray
    layout: np.ndarray  # (2, LAYOUT_SIDE**2): the grey thumbnail and its mirror, zero mean, unit norm (or zeros)


def _orb(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.feature import ORB

    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(grey)
    except (RuntimeError, ValueError, IndexError):  # too small or too flat for any keypoint
        return np.zeros((0, 2)), np.zeros((0, 32), dtype=np.uint8)
    return np.asarray(orb.keypoints, dtype=np.float64), np.packbits(np.asarray(orb.descriptors, dtype=bool), axis=1)


def _layout(small: Image.Image) -> np.ndarray:
    thumb = np.asarray(small.convert("L").resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.Resampling.BOX), dtype=np.float64)
    out = []
    for view in (thumb, thumb[:, ::-1]):
        v = view.ravel() - view.mean()
        norm = float(np.linalg.norm(v))
        out.append(v / norm if norm > 1e-6 else np.zeros_like(v))
    return np.stack(out).astype(np.float32)


def features(img: Image.Image) -> Features:
    """What the matching needs of one photo."""
    small = img.convert("RGB")
    small.thumbnail((SIDE, SIDE))
    grey = np.asarray(small.convert("L"), dtype=np.float64) / 255.0
    plain, mirrored = _orb(grey), _orb(grey[:, ::-1])
    rgb = np.asarray(small.resize((64, 64)), dtype=np.int64) * HIST_BINS // 256
    codes = (rgb[..., 0] * HIST_BINS + rgb[..., 1]) * HIST_BINS + rgb[..., 2]
    hist = np.bincount(codes.ravel(), minlength=HIST_BINS**3).astype(np.float64)
    return Features((plain[0], mirrored[0]), (plain[1], mirrored[1]), hist / hist.sum(), _layout(small))


def _matches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Index pairs of mutual nearest descriptors that pass the ratio test."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    a = np.unpackbits(a, axis=1).astype(np.float32)
    b = np.unpackbits(b, axis=1).astype(np.float32)
    # Hamming distances of 0/1 vectors, |a| + |b| - 2 a.b: one product instead of a.(1-b) + (1-a).b, the same
    # integers (exact in float32), in half the time (the product is nearly all of the audit's matching).
    dist = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    best = dist.argmin(axis=1)
    back = dist.argmin(axis=0)
    two = np.partition(dist, 1, axis=1)[:, :2]
    rows = np.arange(len(a))
    keep = (back[best] == rows) & (two[:, 0] <= MAX_RATIO * two[:, 1])
    return np.stack([rows[keep], best[keep]], axis=1)


def inliers(a: Features, b: Features, floor: int = 3) -> int:
    """The most matches one similarity transform explains, between ``a`` and ``b`` or ``b``'s mirror image.

    Orientations with fewer than ``floor`` matches are not fitted (0 for them): they could not reach it.
    """
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    best = 0
    for side in (0, 1):
        pairs = _matches(a.descriptors[0], b.descriptors[side])
        if len(pairs) < max(3, floor, best + 1):
            continue
        src = a.keypoints[0][pairs[:, 0]][:, ::-1]
        dst = b.keypoints[side][pairs[:, 1]][:, ::-1]
        with warnings.catch_warnings():  # "No inliers found": an answer (0), not a problem
            warnings.simplefilter("ignore", UserWarning)
            _, mask = ransac(
                (src, dst), SimilarityTransform, min_samples=3, residual_threshold=RANSAC_PX, max_trials=300, rng=0
            )
        if mask is not None:
            best = max(best, int(mask.sum()))
    return best


def candidate_pairs(feats: Sequence[Features], k: int = CANDIDATES) -> list[tuple[int, int]]:
    """Each photo with its ``k`` nearest neighbours by colour-histogram intersection, and its ``k`` nearest by layout
    (correlation of grey thumbnails, either one mirrored; at least ``MIN_LAYOUT_CORRELATION``), as sorted pairs."""
    if len(feats) < 2:
        return []
    hists = np.stack([f.histogram for f in feats])
    layouts = np.stack([f.layout[0] for f in feats])
    mirrors = np.stack([f.layout[1] for f in feats])
    k = min(k, len(feats) - 1)
    out: set[tuple[int, int]] = set()
    for start in range(0, len(feats), ROWS_PER_BLOCK):
        rows = np.arange(start, min(start + ROWS_PER_BLOCK, len(feats)))
        colour = np.stack([np.minimum(hists[i], hists).sum(axis=1) for i in rows])
        layout = np.maximum(layouts[rows] @ layouts.T, layouts[rows] @ mirrors.T)
        for sims, floor in ((colour, -np.inf), (layout, MIN_LAYOUT_CORRELATION)):
            sims[np.arange(len(rows)), rows] = -np.inf  # not oneself
            for r, row in zip(rows, sims, strict=True):
                for j in np.argsort(-row, kind="stable")[:k]:
                    if row[j] >= floor:
                        out.add((min(int(r), int(j)), max(int(r), int(j))))
    return sorted(out)


def reframed_pairs(
    feats: Sequence[Features], *, k: int = CANDIDATES, min_inliers: int = MIN_INLIERS
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, inliers)`` of photos that show the same scene, however cropped, mirrored or recoloured."""
    found = []
    for i, j in candidate_pairs(feats, k):
        n = inliers(feats[i], feats[j], floor=min_inliers)
        if n >= min_inliers:
            found.append((i, j, n))
    return found
