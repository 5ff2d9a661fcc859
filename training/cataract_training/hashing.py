"""Exact and perceptual hashes, and grouping of near duplicates with a union-find."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIDE = 8


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of raw file bytes: equal digests mean byte-identical files."""
    return hashlib.sha256(data).hexdigest()


def _grey(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


def dhash(img: Image.Image) -> np.ndarray:
    """Difference hash: 64 booleans, is each pixel brighter than its right neighbour (9x8 grey)."""
    arr = _grey(img, (HASH_SIDE + 1, HASH_SIDE))
    return (arr[:, 1:] > arr[:, :-1]).reshape(-1)


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    mat[0] /= np.sqrt(2.0)
    return mat


def phash(img: Image.Image, side: int = 32) -> np.ndarray:
    """Perceptual hash: signs of the 8x8 lowest DCT frequencies (without DC) against their median."""
    arr = _grey(img, (side, side))
    dct = _dct_matrix(side)
    low = (dct @ arr @ dct.T)[:HASH_SIDE, :HASH_SIDE].reshape(-1)
    ac = low[1:]
    return np.concatenate([[False], ac > np.median(ac)])


def _packed(hashes: np.ndarray) -> np.ndarray:
    """(n, bits) booleans as (n, words) uint64, bits padded with zeros to whole words."""
    bits = np.asarray(hashes, dtype=bool)
    pad = -bits.shape[1] % 64
    bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.packbits(bits, axis=1).view(np.uint64)


def _hamming_rows(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Hamming distances of rows ``start:stop`` to every row: (stop - start, n)."""
    return np.bitwise_count(packed[start:stop, None, :] ^ packed[None, :, :]).sum(axis=-1, dtype=np.int64)


# Rows of the pairwise distances held at once: memory grows with the number of photos, not with its square.
ROWS_PER_BLOCK = 256


class UnionFind:
    """Disjoint sets over ``0..n-1``, with path halving."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        """The representative of ``i``'s set."""
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[int]:
        """A group id per element: the smallest index in its set."""
        return [self.find(i) for i in range(len(self.parent))]


def near_duplicate_pairs(
    phashes: np.ndarray, dhashes: np.ndarray, max_phash: int = 10, max_dhash: int = 12
) -> list[tuple[int, int, int, int]]:
    """Pairs ``(i, j, phash distance, dhash distance)`` close under BOTH hashes.

    Requiring both keeps look-alike but different eyes apart: one hash alone merges too much.
    """
    pp, pd = _packed(phashes), _packed(dhashes)
    found = []
    for start in range(0, len(pp), ROWS_PER_BLOCK):
        stop = min(start + ROWS_PER_BLOCK, len(pp))
        dp, dd = _hamming_rows(pp, start, stop), _hamming_rows(pd, start, stop)
        close = (dp <= max_phash) & (dd <= max_dhash)
        close &= np.arange(len(pp))[None, :] > np.arange(start, stop)[:, None]  # each pair once, i < j
        for r, j in zip(*np.nonzero(close), strict=True):
            found.append((start + int(r), int(j), int(dp[r, j]), int(dd[r, j])))
    return found
