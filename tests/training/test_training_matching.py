"""Reframed copies (cropped, bordered, mirrored, recoloured) are found; different photos are not joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data as skimage_data  # the sample photos (dev extra, which the suite installs)

from cataract_training import audit, matching


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB")


def _reframed(img: Image.Image, *, mirrored: bool = True) -> Image.Image:
    """A stock-photo edit: cropped off-centre, mirrored (or not), warmer, scaled down, a black border added."""
    w, h = img.size
    out = img.crop((w // 8, h // 10, w - w // 5, h - h // 6))
    out = ImageOps.mirror(out) if mirrored else out
    out = ImageEnhance.Color(out).enhance(1.4)
    out = out.resize((out.width * 2 // 3, out.height * 2 // 3), Image.Resampling.BILINEAR)
    return ImageOps.expand(out, border=(0, 24), fill=(0, 0, 0))


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_a_reframed_copy_is_the_same_photo(name: str, mirrored: bool) -> None:
    original = matching.features(_photo(name))
    copy = matching.features(_reframed(_photo(name), mirrored=mirrored))
    assert matching.inliers(original, copy) >= matching.MIN_INLIERS
    assert matching.inliers(copy, original) >= matching.MIN_INLIERS


def test_different_photos_are_not_the_same() -> None:
    names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]
    feats = [matching.features(_photo(n)) for n in names]
    for i in range(len(feats)):
        for j in range(len(feats)):
            if i != j:
                assert matching.inliers(feats[i], feats[j]) < matching.MIN_INLIERS, (names[i], names[j])


def test_candidates_are_each_photos_nearest_by_colour() -> None:
    def flat(rgb: tuple[int, int, int]) -> matching.Features:
        return matching.features(Image.new("RGB", (64, 64), rgb))

    grey, greyish, red, reddish = flat((120, 120, 120)), flat((112, 118, 124)), flat((220, 30, 30)), flat((200, 20, 25))
    assert matching.candidate_pairs([grey, red, greyish, reddish], k=1) == [(0, 2), (1, 3)]
    assert matching.candidate_pairs([grey]) == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda im: ImageOps.mirror(ImageOps.grayscale(im).convert("RGB")),
        lambda im: ImageEnhance.Color(im).enhance(0.3).crop((20, 20, im.width - 20, im.height - 20)),
        lambda im: ImageOps.mirror(ImageEnhance.Brightness(im).enhance(0.5)),
    ],
    ids=["grey-mirrored", "desaturated-cropped", "darkened-mirrored"],
)
def test_a_recoloured_reframed_copy_is_a_candidate_by_layout(edit: Any) -> None:
    # Its colours put other photos nearer than its original (here the grey camera man and the grey text page),
    # so colour alone never asked the keypoints; its layout, mirrored or not, still matches.
    names = ["chelsea", "coffee", "astronaut", "camera", "text", "rocket"]
    photos = [_photo(n) for n in names]
    copy = matching.features(edit(photos[0]))
    pool = [matching.features(p) for p in photos] + [copy]
    by_colour = [float(np.minimum(copy.histogram, f.histogram).sum()) for f in pool[:-1]]
    assert int(np.argmax(by_colour)) != 0, "colour alone would have found it: not the case this test is for"
    assert (0, len(photos)) in matching.candidate_pairs(pool, k=1)
    assert matching.inliers(pool[0], copy) >= matching.MIN_INLIERS


def test_layout_candidates_need_a_real_correlation() -> None:
    # Noise correlates with nothing: no layout candidate, only the k colour ones.
    rng = np.random.default_rng(0)
    noise = [matching.features(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) for _ in range(6)]
    assert len(matching.candidate_pairs(noise, k=1)) <= 6


def test_a_flat_image_has_no_keypoints_and_matches_nothing() -> None:
    flat = matching.features(Image.new("RGB", (40, 30), (90, 90, 90)))
    assert len(flat.keypoints[0]) == 0
    assert matching.inliers(flat, matching.features(_photo("astronaut"))) == 0


def test_the_audit_groups_reframed_copies_that_hashes_miss(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for label in ("cataract", "normal"):
        (root / label).mkdir(parents=True)
    _photo("chelsea").save(root / "cataract/a.png")
    _reframed(_photo("chelsea")).save(root / "cataract/b.png")
    _photo("astronaut").save(root / "normal/c.png")
    _photo("coffee").save(root / "normal/d.png")
    hashes_only = audit.run_audit(root, progress=False, reframed=False)
    assert len(set(hashes_only.groups)) == 4, "the perceptual hashes alone see four photos"
    result = audit.run_audit(root, progress=False)
    groups = dict(zip(result.keys, result.groups, strict=True))
    assert groups["cataract/a.png"] == groups["cataract/b.png"]
    assert len(set(groups.values())) == 3
    rep = result.report
    assert rep["reframed_copies"]["pairs_joining_hash_groups"] == 1 and rep["distinct_photos"] == 3
    assert any(f.startswith("REFRAMED COPIES: 1 pairs") for f in rep["findings"])


def test_matching_is_deterministic() -> None:
    a, b = matching.features(_photo("coffee")), matching.features(_reframed(_photo("coffee")))
    assert len({matching.inliers(a, b) for _ in range(3)}) == 1
    assert np.array_equal(matching.features(_photo("coffee")).descriptors[0], a.descriptors[0])


def test_near_duplicate_pairs_by_blocks_are_the_pairs_of_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows a block at a time (memory linear in the photos): the same pairs as the full n x n comparison, across
    # block edges too.
    from cataract_training import hashing

    monkeypatch.setattr(hashing, "ROWS_PER_BLOCK", 7)
    rng = np.random.default_rng(1)
    ph, dh = rng.integers(0, 2, (40, 64)).astype(bool), rng.integers(0, 2, (40, 64)).astype(bool)
    for a, b in ((3, 30), (6, 7), (13, 14)):
        ph[b], dh[b] = ph[a], dh[a]
        ph[b, :4] ^= True  # 4 bits apart
    full_p = (ph[:, None, :] != ph[None, :, :]).sum(-1)
    full_d = (dh[:, None, :] != dh[None, :, :]).sum(-1)
    expected = [
        (i, j, int(full_p[i, j]), int(full_d[i, j]))
        for i in range(40)
        for j in range(i + 1, 40)
        if full_p[i, j] <= 10 and full_d[i, j] <= 12
    ]
    assert hashing.near_duplicate_pairs(ph, dh) == expected
    assert [(i, j) for i, j, _, _ in expected] == [(3, 30), (6, 7), (13, 14)]
    assert np.array_equal(hashing._hamming_rows(hashing._packed(ph), 0, len(ph)), full_p)
