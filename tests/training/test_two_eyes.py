"""The both-eyes study: composites built as described, and its report counts what it says it counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cataract_inference.classifier import SPLIT_ASPECT
from cataract_training import two_eyes
from tests.support.onnx_models import build_tiny_model


def test_side_by_side_puts_each_photo_in_its_own_half() -> None:
    left, right = Image.new("RGB", (300, 200), (250, 0, 0)), Image.new("RGB", (100, 200), (0, 0, 250))
    canvas = two_eyes.side_by_side(left, right, 3.0, height=100)
    assert canvas.size == (300, 100)
    pixels = np.asarray(canvas)
    assert tuple(pixels[50, 75]) == (250, 0, 0) and tuple(pixels[50, 225]) == (0, 0, 250)
    assert pixels[:, :150, 2].max() < 200 and pixels[:, 150:, 0].max() < 200, "neither spills into the other half"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Bright photos as cataract, dark ones as normal (the tiny model scores brightness), all under 2:1."""
    for label, levels in (("cataract", range(170, 230, 6)), ("normal", range(20, 80, 6))):
        (tmp_path / "eyes" / label).mkdir(parents=True)
        for level in levels:
            photo = Image.new("RGB", (120, 90), (level, level, level))
            photo.paste((level // 2,) * 3, (50, 35, 70, 55))  # some detail
            photo.save(tmp_path / "eyes" / label / f"{level}.png")
    return tmp_path / "eyes"


def test_the_study_reports_every_ratio_and_kind_and_checks_its_companions(folder: Path, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    result = two_eyes.run(model, folder, chosen=["normal/20.png"])
    rows = result["composites"]
    assert {r["ratio"] for r in rows} == set(two_eyes.RATIOS)
    kinds = {r["kind"] for r in rows}
    assert any("random normal" in k for k in kinds) and any("normal/20.png" in k for k in kinds)
    assert any(k.startswith("normal + normal") for k in kinds)
    for r in rows:
        assert 0 <= r["served"] <= r["cases"] and 0 <= r["whole_only"] <= r["cases"]
        if "referral lost" in r["kind"]:
            # The served decision is the most suspicious view: it can only lose fewer referrals.
            assert r["served"] <= r["whole_only"]
    assert result["real"]["unseen"]["cataract"]["split"] == 0, f"no photo here is {SPLIT_ASPECT:g}:1"
    assert "| composite | ratio |" in result["markdown"]
    with pytest.raises(ValueError, match="not a photo under"):
        two_eyes.run(model, folder, chosen=["normal/missing.png"])


def test_the_study_refuses_a_folder_its_split_names_no_photo_of(folder: Path, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    split = tmp_path / "split.json"
    photos = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    split.write_text(json.dumps({"train": photos[::2], "val": photos[1::2]}))
    result = two_eyes.run(model, folder, split)  # the folder training read: its validation photos are found
    assert f"the {len(photos[1::2])} validation photos of" in result["markdown"]
    # The data set's root (ROOT/train/<class>/) is a layout training accepts, but the split's names are relative
    # to the folder it read: no photo of ROOT matches, which read before as "too few photos".
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train").symlink_to(folder, target_is_directory=True)
    with pytest.raises(ValueError, match=r"none of the photos under .*root is in the split of .*--data"):
        two_eyes.run(model, tmp_path / "root", split)


@pytest.mark.parametrize(("p", "referred"), [(0.2092596, True), (0.2092594, False), (0.20926, True)])
def test_the_study_refers_as_the_service_decides(p: float, referred: bool) -> None:
    # Serving rounds the probability to 6 decimals before the threshold; the study once compared it unrounded.
    assert two_eyes.refers(p, 0.20926) is referred
