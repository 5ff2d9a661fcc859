"""Class-activation heat maps, from the graph's CAM output: no gradients, no torch.

The ONNX graph exports ``cam``: the classifier weights applied to the last convolutional feature
map. Turning it into a picture (upsample, colour, blend, PNG) happens only when a client asks.
"""

from __future__ import annotations

import base64

import numpy as np
from PIL import Image

from .imaging import center_crop_scaled_size, content_box
from .manifest import InputSpec
from .png_encoder import encode_rgb


def normalised_map(cam: np.ndarray) -> np.ndarray:
    """Positive evidence only, scaled to 0..1 (all zeros when there is none)."""
    cam = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    top = float(cam.max(initial=0.0))
    return cam / top if top > 0 else cam


def _jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: 0..1 to uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


# The colour map as a 256-entry palette: the heat is quantised to 8 bits, which the PNG holds anyway.
_JET_PALETTE = _jet(np.linspace(0.0, 1.0, 256, dtype=np.float32)).tobytes()


def map_to_image_grid(heat: np.ndarray, image_size: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """Undo the model's letterbox or crop: a model-grid map as a map over the photo (H, W)."""
    width, height = image_size
    size = spec.size
    grid = Image.fromarray(heat.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    if spec.resize == "letterbox":
        grid = grid.crop(content_box(width, height, spec))
    elif spec.resize == "center_crop":
        # The crop saw only the centre; outside it there is no evidence either way.
        full_w, full_h = center_crop_scaled_size(width, height, spec)
        full = Image.new("F", (full_w, full_h), 0.0)
        full.paste(grid, ((full_w - size) // 2, (full_h - size) // 2))
        grid = full
    return np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay_png(
    img: Image.Image,
    cam: np.ndarray,
    spec: InputSpec,
    *,
    max_side: int = 512,
    alpha: float = 0.45,
    region: tuple[int, int, int, int] | None = None,
) -> str:
    """The heat map blended over the photo, as a base64 PNG (longest side at most ``max_side``).

    ``region`` is the box of ``img`` (left, top, right, bottom) that the model saw, when not the whole photo (a
    half that decided): the map is drawn there only.
    """
    photo = img
    scale = max_side / max(img.size)
    if scale < 1.0:  # shrink only, as thumbnail() would, but without first copying the full image
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        photo = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if region is None:
        heat = map_to_image_grid(normalised_map(cam), photo.size, spec)
    else:
        # The region in the (possibly shrunk) photo's pixels, at least one pixel each way.
        sx, sy = photo.width / img.width, photo.height / img.height
        left, top = round(region[0] * sx), round(region[1] * sy)
        right = max(left + 1, min(photo.width, round(region[2] * sx)))
        bottom = max(top + 1, min(photo.height, round(region[3] * sy)))
        heat = np.zeros((photo.height, photo.width), dtype=np.float32)
        heat[top:bottom, left:right] = map_to_image_grid(normalised_map(cam), (right - left, bottom - top), spec)
    levels = (np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # photo * (1 - w) + colour * w with w = alpha * heat, in Pillow's C loops: a palette lookup for the
    # colour, a table for the weight, one composite. The float version took 3-5 ms at 512 px; this ~1 ms.
    colour = Image.frombuffer("P", photo.size, levels, "raw", "P", 0, 1)
    colour.putpalette(_JET_PALETTE)
    mask = Image.frombuffer("L", photo.size, levels, "raw", "L", 0, 1).point([round(alpha * v) for v in range(256)])
    base = photo if photo.mode == "RGB" else photo.convert("RGB")
    blended = Image.composite(colour.convert("RGB"), base, mask)
    return base64.b64encode(encode_rgb(np.asarray(blended))).decode("ascii")
