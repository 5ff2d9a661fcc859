"""Training feeds the model exactly what serving feeds it."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cataract_inference.imaging import load_for_model, preprocess
from cataract_inference.manifest import InputSpec
from cataract_training import augment, data
from cataract_training.train import FitConfig


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("resize", ["letterbox", "squash", "center_crop"])
def test_validation_tensors_are_serving_tensors(eye_folder: Path, resize: str) -> None:
    # What fit validates, calibrates and exports on is `prepare`'s tensors: each must be what serving computes.
    from cataract_training.train import prepare

    cfg = FitConfig(data=str(eye_folder), size=64, resize=resize)  # type: ignore[arg-type]
    prepared = prepare(cfg, progress=False)
    spec = cfg.spec()
    assert spec.resize == resize and len(prepared.index) == len(prepared.tensors) == 24
    for i, tensor in zip(prepared.index, prepared.tensors, strict=True):
        served = load_for_model(prepared.audit.samples[i].path.read_bytes(), spec)[1]
        assert np.array_equal(tensor, served)


def test_training_path_without_augmentation_matches_serving(eye_folder: Path, tmp_path: Path) -> None:
    spec = FitConfig(data=str(eye_folder), size=64).spec()
    paths = sorted(eye_folder.rglob("*.png"))[:3]
    jpg = tmp_path / "photo.jpg"
    jpg.write_bytes(_jpeg(Image.open(paths[0]).convert("RGB").resize((300, 200))))
    for path in [*paths, jpg]:
        img = data.load_pil(path, None, fill=spec.fill_rgb)  # what training decodes
        no_ops: dict[str, Any] = {k: 0.0 for k in augment.AugmentConfig().to_dict() if k.endswith("_p")}
        off = augment.AugmentConfig(**no_ops)
        trained = preprocess(augment.augment(img, random.Random(0), off, spec.fill_rgb), spec)
        served = load_for_model(path.read_bytes(), spec)[1]
        assert trained.dtype == served.dtype == np.float32
        assert trained.shape == served.shape == (3, 64, 64)
        if path.suffix == ".png":  # JPEG draft decoding in serving may pick a smaller DCT scale
            assert np.array_equal(trained, served)


def test_augmentation_is_seeded_and_changes_the_image(eye_folder: Path) -> None:
    img = data.load_pil(next(eye_folder.rglob("*.png")))
    a = augment.augment(img, random.Random(7))
    b = augment.augment(img, random.Random(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    variants = {np.asarray(augment.augment(img, random.Random(s))).tobytes() for s in range(8)}
    assert len(variants) == 8
    assert a.mode == "RGB"


@pytest.mark.parametrize("size", [(330, 110), (110, 330), (600, 290)])
def test_random_crops_of_a_two_eye_photo_keep_both_eyes(size: tuple[int, int]) -> None:
    # A photo of both eyes is labelled cataract when one is; a crop of the clear eye alone would teach the model
    # that a clear eye is a cataract. The photo's two ends stand for the eyes.
    off: dict[str, Any] = {k: 0.0 for k in augment.AugmentConfig().to_dict() if k.endswith("_p")}
    crop = augment.AugmentConfig(**{**off, "crop_p": 1.0})
    w, h = size
    photo = Image.new("RGB", size, (128, 128, 128))
    end = (w // 6, h) if w > h else (w, h // 6)
    photo.paste(Image.new("RGB", end, (255, 0, 0)), (0, 0))
    photo.paste(Image.new("RGB", end, (0, 0, 255)), (w - end[0], h - end[1]))
    sizes = set()
    for seed in range(200):
        out = np.asarray(augment.augment(photo, random.Random(seed), crop))
        sizes.add(out.shape)
        assert ((out == (255, 0, 0)).all(axis=2)).any() and ((out == (0, 0, 255)).all(axis=2)).any(), seed
    assert len(sizes) > 20  # it still crops: only never an eye away


def test_random_crops_of_one_eye_photos_still_reframe_both_ways() -> None:
    off: dict[str, Any] = {k: 0.0 for k in augment.AugmentConfig().to_dict() if k.endswith("_p")}
    crop = augment.AugmentConfig(**{**off, "crop_p": 1.0})
    photo = Image.new("RGB", (300, 200))
    shapes = {augment.augment(photo, random.Random(seed), crop).size for seed in range(50)}
    assert any(w < 300 for w, _ in shapes) and any(h < 200 for _, h in shapes)


def test_anti_shortcut_ops_degrade_both_classes(eye_folder: Path) -> None:
    """Blur removes high-frequency energy and down-up scaling removes detail, whatever the class."""
    off: dict[str, Any] = {k: 0.0 for k in augment.AugmentConfig().to_dict() if k.endswith("_p")}
    blur = augment.AugmentConfig(**{**off, "blur_p": 1.0, "blur_radius": (1.5, 2.0)})
    rescale = augment.AugmentConfig(**{**off, "rescale_p": 1.0, "rescale_side": (24, 24)})

    def energy(im: Image.Image) -> float:
        a = np.asarray(im.convert("L"), dtype=np.float32)
        return float(np.abs(np.diff(a, axis=1)).mean())

    for label in ("cataract", "normal"):
        base = np.asarray(data.load_pil(next((eye_folder / label).glob("*.png"))).resize((240, 180)), np.float32)
        grain = np.random.default_rng(0).normal(0, 12, base.shape)  # sensor noise: fine detail to lose
        img = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
        assert energy(augment.augment(img, random.Random(0), blur)) < 0.8 * energy(img)
        small = augment.augment(img, random.Random(0), rescale)
        assert small.size == img.size
        # what survives is what a 24 px photo holds: shrinking again loses (almost) nothing more
        again = small.resize((24, 18), Image.Resampling.BOX).resize(img.size, Image.Resampling.BILINEAR)
        orig_again = img.resize((24, 18), Image.Resampling.BOX).resize(img.size, Image.Resampling.BILINEAR)
        diff = np.abs(np.asarray(small, np.float32) - np.asarray(img, np.float32)).mean()
        assert diff > 1.0
        assert np.abs(np.asarray(again, np.float32) - np.asarray(orig_again, np.float32)).mean() < diff


@pytest.mark.parametrize(
    ("resize", "size", "shorter_at_least", "longer_at_least"),
    [
        ("letterbox", 224, 0, 320),  # the shipped model: the 320 px cache, as before
        ("letterbox", 448, 0, 448),  # a 320 px cache would be enlarged to 448 by the letterbox
        ("center_crop", 224, 256, 0),  # the shorter side is scaled to 224 / 0.875 = 256 first
        ("squash", 224, 224, 0),
    ],
)
def test_the_training_cache_never_holds_less_than_the_models_resize_needs(
    tmp_path: Path, resize: str, size: int, shorter_at_least: int, longer_at_least: int
) -> None:
    """Serving decodes the full photo and shrinks it; training must not enlarge a smaller cached copy instead."""
    from cataract_training import data

    path = tmp_path / "wide.jpg"
    Image.new("RGB", (1600, 600), (120, 90, 60)).save(path, quality=90)  # 8:3, as a photo of both eyes can be
    spec = InputSpec(size=size, resize=resize)
    cached = data.load_pil(path, 320, spec=spec)
    assert min(cached.size) >= shorter_at_least and max(cached.size) >= longer_at_least
    assert max(cached.size) == data.cached_side(1600, 600, spec, 320) < 1600  # still a cache, not the photo


def test_fit_caches_photos_for_a_center_crop_model_without_enlarging_them(tmp_path: Path) -> None:
    """`prepare` (what fit and cv train on) passes the model's input spec to the cache, not only the cache side."""
    from synthetic_eyes import draw_eye

    from cataract_training.train import prepare

    for label in ("cataract", "normal"):
        (tmp_path / label).mkdir()
        for i in range(6):
            eye = draw_eye(100 * i + (0 if label == "cataract" else 50), label == "cataract", size=(1000, 400))
            eye.save(tmp_path / label / f"{label}_{i}.png")
    prep = prepare(FitConfig(data=str(tmp_path), resize="center_crop"), progress=False)
    # 5:2 photos: a 320 px cache would be 320x128, enlarged to 640x256 by the crop's first resize.
    assert all(min(img.size) >= 256 for img in prep.images), [img.size for img in prep.images]
