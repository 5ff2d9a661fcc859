"""Augmentation for phone and web photos of eyes, on PIL images, before THE preprocessing.

Besides the usual framing, geometry and colour changes, three operations are there to defeat the
shortcut this kind of data invites (one class photographed larger and sharper than the other):
random down-then-up scaling, blur and JPEG re-compression, applied with the same odds to every class,
so resolution and sharpness stop predicting the label.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cataract_inference.classifier import SPLIT_ASPECT
from cataract_inference.imaging import DEFAULT_FILL


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each operation."""

    crop_p: float = 0.8
    crop_scale: tuple[float, float] = (0.45, 1.0)  # fraction of the area kept
    crop_ratio: tuple[float, float] = (0.6, 1.7)  # width / height of the crop
    pad_p: float = 0.25  # zoom out: the eye smaller in the frame, as in face shots
    pad_max: float = 0.35
    hflip_p: float = 0.5
    rotate_p: float = 0.6
    rotate_deg: float = 20.0
    colour_p: float = 0.8
    brightness: float = 0.35
    contrast: float = 0.35
    saturation: float = 0.4
    hue: float = 0.04
    grey_p: float = 0.05
    rescale_p: float = 0.6  # the anti-shortcut trio
    rescale_side: tuple[int, int] = (48, 224)
    blur_p: float = 0.35
    blur_radius: tuple[float, float] = (0.3, 2.0)
    jpeg_p: float = 0.6
    jpeg_quality: tuple[int, int] = (25, 92)
    sharpen_p: float = 0.15

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for the run's config."""
        return asdict(self)


def _random_crop(img: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    w, h = img.size
    if max(w, h) >= SPLIT_ASPECT * min(w, h):
        # Often both eyes, one of them perhaps clear: a crop of either eye alone would keep the photo's label
        # (cataract) on a clear eye. Such photos keep their whole long side; only the short side is cut.
        keep = rng.uniform(*cfg.crop_scale) ** 0.5
        if w >= h:
            ch = max(1, round(h * keep))
            top = rng.randint(0, h - ch)
            return img.crop((0, top, w, top + ch))
        cw = max(1, round(w * keep))
        left = rng.randint(0, w - cw)
        return img.crop((left, 0, left + cw, h))
    for _ in range(10):
        area = w * h * rng.uniform(*cfg.crop_scale)
        ratio = rng.uniform(*cfg.crop_ratio)
        cw = round((area * ratio) ** 0.5)
        ch = round((area / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            left = rng.randint(0, w - cw)
            top = rng.randint(0, h - ch)
            return img.crop((left, top, left + cw, top + ch))
    return img


def _pad(img: Image.Image, cfg: AugmentConfig, rng: random.Random, fill: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    px = round(w * rng.uniform(0, cfg.pad_max))
    py = round(h * rng.uniform(0, cfg.pad_max))
    colour = fill if rng.random() < 0.5 else tuple(rng.randint(0, 255) for _ in range(3))
    canvas = Image.new("RGB", (w + 2 * px, h + 2 * py), colour)
    canvas.paste(img, (rng.randint(0, 2 * px), rng.randint(0, 2 * py)))
    return canvas


def _colour(img: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)),
    ]
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    if cfg.hue > 0:
        hsv = img.convert("HSV")
        h, s, v = hsv.split()
        shift = round(rng.uniform(-cfg.hue, cfg.hue) * 255)
        h = h.point(lambda x: (x + shift) % 256)
        img = Image.merge("HSV", (h, s, v)).convert("RGB")
    return img


def _rescale(img: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    w, h = img.size
    side = rng.randint(*cfg.rescale_side)
    if side >= max(w, h):
        return img
    scale = side / max(w, h)
    down = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), rng.choice(_RESAMPLERS))
    return down.resize((w, h), rng.choice(_RESAMPLERS))


def _jpeg(img: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(*cfg.jpeg_quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


_RESAMPLERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def augment(
    img: Image.Image,
    rng: random.Random,
    cfg: AugmentConfig = AugmentConfig(),
    fill: tuple[int, int, int] = DEFAULT_FILL,
) -> Image.Image:
    """One random variant of an RGB image; the result still goes through ``imaging.preprocess``."""
    if rng.random() < cfg.crop_p:
        img = _random_crop(img, cfg, rng)
    if rng.random() < cfg.pad_p:
        img = _pad(img, cfg, rng, fill)
    if rng.random() < cfg.hflip_p:
        img = ImageOps.mirror(img)
    if rng.random() < cfg.rotate_p:
        img = img.rotate(
            rng.uniform(-cfg.rotate_deg, cfg.rotate_deg),
            Image.Resampling.BILINEAR,
            expand=rng.random() < 0.5,
            fillcolor=fill,
        )
    if rng.random() < cfg.colour_p:
        img = _colour(img, cfg, rng)
    if rng.random() < cfg.grey_p:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < cfg.rescale_p:
        img = _rescale(img, cfg, rng)
    if rng.random() < cfg.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_radius)))
    elif rng.random() < cfg.sharpen_p:
        img = img.filter(ImageFilter.SHARPEN)
    if rng.random() < cfg.jpeg_p:
        img = _jpeg(img, cfg, rng)
    return img
