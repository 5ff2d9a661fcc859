"""Images the tests make themselves: every format and mode the decoder must handle, and hostile ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    """``img`` saved as ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A smooth, non-uniform test image in ``mode``."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # One compressed row of zeros; a real bomb would inflate to the full declared size.
    body = zlib.compress(b"\x00" * (1 + 3 * min(width, 1024)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    """A JPEG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(img, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif(frames: int = 3, size: tuple[int, int] = (40, 30)) -> bytes:
    """An animated GIF whose first frame is red."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", size, colours[i % 3]) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()
