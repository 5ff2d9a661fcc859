"""A fast PNG encoder for 8-bit RGB pixels: one fixed filter in NumPy, then Huffman-only deflate.

Pillow's PNG encoder tries all five row filters on every row and keeps the best: for a 512 px heat
map that selection alone took 9 ms, more than the model's forward pass, before zlib ran. One fixed
filter (Average, computed for the whole image at once) and Huffman-only deflate measured 5.5 ms and
182 kB against Pillow's 16.3 ms and 215 kB at zlib level 1. zlib-ng writes the same Huffman-only
stream as the system zlib in less than half the time (2.4 against 5.2 ms), which brings one overlay
to 3.5 ms against Pillow's 17 ms. The output is a standard PNG that any decoder reads back exactly.
"""

from __future__ import annotations

import struct

import numpy as np
from zlib_ng import zlib_ng

SIGNATURE = b"\x89PNG\r\n\x1a\n"
AVERAGE_FILTER = 3


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib_ng.crc32(kind + payload))


def _average_filtered(pixels: np.ndarray) -> np.ndarray:
    """PNG filter type 3 for every row: each byte minus the mean of its left and upper neighbours."""
    height, width, channels = pixels.shape
    wide = pixels.astype(np.int16)
    predictor = np.zeros_like(wide)
    predictor[:, 1:] += wide[:, :-1]  # the same channel of the pixel to the left (0 at the left edge)
    predictor[1:] += wide[:-1]  # the byte above (0 on the first row)
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = AVERAGE_FILTER
    rows[:, 1:] = (wide - (predictor >> 1)).astype(np.uint8).reshape(height, -1)  # modulo 256, as PNG says
    return rows


def encode_rgb(pixels: np.ndarray) -> bytes:
    """``pixels`` (height, width, 3) uint8 as the bytes of a PNG file."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"expected a non-empty (height, width, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width, _ = pixels.shape
    # Huffman-only: after the filter, LZ77 matching buys ~10% of size for twice the time.
    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_HUFFMAN_ONLY)
    data = deflate.compress(_average_filtered(pixels).tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
