"""Synthetic eye-like photos for the training tests (no real photos are ever committed)."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def draw_eye(seed: int, cataract: bool, size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A cartoon eye: skin, sclera, iris and a pupil that is dark (normal) or milky (cataract)."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, (rng.randint(150, 230), rng.randint(110, 180), rng.randint(90, 150)))
    d = ImageDraw.Draw(img)
    cx, cy = w // 2 + rng.randint(-w // 8, w // 8), h // 2 + rng.randint(-h // 8, h // 8)
    ew, eh = rng.randint(w // 4, w // 2 - 4), rng.randint(h // 5, h // 3)
    d.ellipse((cx - ew, cy - eh, cx + ew, cy + eh), fill=(240, 240, 235))
    r = rng.randint(eh // 2 + 2, eh)
    iris = (rng.randint(40, 140), rng.randint(40, 120), rng.randint(20, 90))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=iris)
    pr = max(2, r // 2)
    pupil = (rng.randint(180, 230),) * 3 if cataract else (rng.randint(0, 30),) * 3
    d.ellipse((cx - pr, cy - pr, cx + pr, cy + pr), fill=pupil)
    for _ in range(rng.randint(3, 8)):  # a few random specks so photos differ in texture
        x, y = rng.randrange(w), rng.randrange(h)
        d.rectangle((x, y, x + 3, y + 3), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.filter(ImageFilter.SMOOTH)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, n_per_class: int = 10, seed: int = 0) -> Path:
    """ROOT/cataract/*.png and ROOT/normal/*.png, all distinct."""
    for label in ("cataract", "normal"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            s = seed * 10_000 + (0 if label == "cataract" else 5_000) + i
            (root / label / f"{label}_{i}.png").write_bytes(png_bytes(draw_eye(s, label == "cataract")))
    return root
