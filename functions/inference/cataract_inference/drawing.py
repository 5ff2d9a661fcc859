"""Drawn eyes for demos, events and tests: the project's own images, free to redistribute.

A drawing is not a photo. Whatever the model says about one is not a clinical claim, and the
model is never tuned to them; they exist so that events and tests need no patient photos.
Flat-coloured drawings are refused by the gradability gate (their mid-level features are unlike any
photo's), so each drawing gets a "photo finish": skin-like texture, lens vignetting and defocus.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURE_SCALES = (1, 4, 16)  # pixel noise, pores, blotches
TEXTURE_AMPLITUDE = 16.0
VIGNETTE = 0.5
DEFOCUS = 2.0


def draw_eye(
    kind: str = "normal", size: tuple[int, int] = (480, 320), seed: int = 0, *, centre: tuple[float, float] = (0.5, 0.5)
) -> Image.Image:
    """An eye on skin: a dark pupil for ``normal``, a clouded grey-white lens for ``cataract``.

    ``centre`` places the iris as a fraction of the width and height.
    """
    if kind not in ("normal", "cataract"):
        raise ValueError(f"kind must be 'normal' or 'cataract', not {kind!r}")
    rng = random.Random(seed)
    width, height = size
    skin = (rng.randint(170, 225), rng.randint(120, 170), rng.randint(95, 140))
    img = Image.new("RGB", size, skin)
    draw = ImageDraw.Draw(img)
    cx, cy = width * centre[0], height * centre[1]
    ew, eh = width * 0.42, height * 0.30
    draw.ellipse(
        (cx - ew, cy - eh, cx + ew, cy + eh), fill=(236, 232, 225), outline=(90, 60, 50), width=max(2, width // 120)
    )
    r_iris = min(ew, eh) * 0.95
    iris = rng.choice([(70, 110, 160), (95, 70, 40), (80, 120, 80), (60, 50, 35)])
    draw.ellipse((cx - r_iris, cy - r_iris, cx + r_iris, cy + r_iris), fill=iris)
    for _ in range(40):  # iris striations
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        shade = tuple(max(0, c - rng.randint(10, 40)) for c in iris)
        draw.line((cx, cy, cx + dx * r_iris, cy + dy * r_iris), fill=shade, width=2)
    r_pupil = r_iris * rng.uniform(0.38, 0.48)
    if kind == "normal":
        draw.ellipse((cx - r_pupil, cy - r_pupil, cx + r_pupil, cy + r_pupil), fill=(12, 10, 10))
    else:
        lens = Image.new("L", size, 0)
        ImageDraw.Draw(lens).ellipse(
            (cx - r_pupil * 1.15, cy - r_pupil * 1.15, cx + r_pupil * 1.15, cy + r_pupil * 1.15), fill=255
        )
        lens = lens.filter(ImageFilter.GaussianBlur(r_pupil * 0.25))
        cloud = Image.new("RGB", size, (205, 210, 215))
        img.paste(cloud, mask=lens)
        draw = ImageDraw.Draw(img)
        for _ in range(25):  # spoke-like opacities
            a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
            draw.line((cx, cy, cx + a * r_pupil, cy + b * r_pupil), fill=(240, 242, 245), width=2)
    glint = r_pupil * 0.25
    draw.ellipse(
        (cx + r_pupil * 0.3, cy - r_pupil * 0.6, cx + r_pupil * 0.3 + glint, cy - r_pupil * 0.6 + glint),
        fill=(255, 255, 255),
    )
    for i in range(30):  # lashes along the upper lid
        t = i / 29
        x = cx - ew + 2 * ew * t
        y = cy - eh * (1 - (2 * t - 1) ** 2) ** 0.5
        draw.line((x, y, x + rng.uniform(-8, 8), y - rng.uniform(10, 22)), fill=(30, 20, 15), width=2)
    return photo_finish(img, seed)


def photo_finish(img: Image.Image, seed: int = 0) -> Image.Image:
    """Multi-scale texture, a darker rim (vignetting) and defocus blur, so a drawing reads like a photo."""
    rng = np.random.default_rng(seed)
    width, height = img.size
    pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    noise = np.zeros((height, width), dtype=np.float32)
    for scale in TEXTURE_SCALES:
        coarse = rng.normal(0.0, 1.0, (max(1, height // scale), max(1, width // scale))).astype(np.float32)
        noise += np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    pixels += TEXTURE_AMPLITUDE * noise[..., None] / math.sqrt(len(TEXTURE_SCALES))
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.sqrt(((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2)
    pixels *= (1.0 - VIGNETTE * np.clip(radius - 0.3, 0.0, None))[..., None]
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(DEFOCUS))


def encode(img: Image.Image, fmt: str = "JPEG", **params: int) -> bytes:
    """``img`` encoded as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" and not params else params))
    return buffer.getvalue()
