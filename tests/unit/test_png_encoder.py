"""The heat map's PNG encoder: standard files that Pillow decodes back to exactly the pixels given."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from cataract_inference.png_encoder import encode_rgb


def decode(data: bytes) -> tuple[str, str, np.ndarray]:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.format or "", img.mode, np.asarray(img)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (37, 53), (341, 512)])
def test_random_pixels_round_trip_exactly(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    fmt, mode, back = decode(encode_rgb(pixels))
    assert (fmt, mode) == ("PNG", "RGB")
    np.testing.assert_array_equal(back, pixels)


def test_extremes_wrap_modulo_256_as_the_filter_requires() -> None:
    # Alternating 0 and 255 drives the Average filter's differences to both ends of the byte.
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[::2, ::2] = 255
    pixels[1::2, 1::2] = 255
    pixels[:, :, 1] = 255 - pixels[:, :, 1]
    np.testing.assert_array_equal(decode(encode_rgb(pixels))[2], pixels)


def test_a_real_overlay_sized_photo_compresses() -> None:
    y, x = np.mgrid[0:341, 0:512]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    data = encode_rgb(pixels)
    np.testing.assert_array_equal(decode(data)[2], pixels)
    assert len(data) < pixels.nbytes / 4  # smooth content: filtered and deflated, not stored


def test_chunks_carry_valid_crcs() -> None:
    data = encode_rgb(np.full((3, 4, 3), 7, dtype=np.uint8))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds = 8, []
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind, payload = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        assert crc == zlib.crc32(kind + payload), kind
        kinds.append(kind)
        offset += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
    ids=["grey", "rgba", "float", "empty"],
)
def test_anything_but_rgb_bytes_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb(pixels)
