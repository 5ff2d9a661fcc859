"""Minimal ICC v2 RGB profiles (matrix and one gamma curve), written here: the machine has no ICC files."""

from __future__ import annotations

import struct

import numpy as np

_D50 = np.array([0.96422, 1.0, 0.82521])
_D65 = np.array([0.95047, 1.0, 1.08883])
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
DISPLAY_P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))


def columns_d50(primaries: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The RGB -> XYZ matrix of ``primaries`` under D65, adapted to the ICC's D50 (Bradford)."""
    xy = np.array(primaries)
    m = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]])
    m = m * np.linalg.solve(m, _D65)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ _D50) / (_BRADFORD @ _D65)) @ _BRADFORD
    return adapt @ m


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in values)


def _desc(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + b"\0" * 78


def rgb_profile(
    description: str,
    primaries: tuple[tuple[float, float], ...],
    gamma: float,
    extra_tags: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """An ICC profile for RGB values with these primaries (D65 white) and a pure power-law curve, plus
    ``extra_tags`` (signature, data) as they are."""
    matrix = columns_d50(primaries)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", _desc(description)),
        (b"wtpt", _xyz(_D50)),
        (b"rXYZ", _xyz(matrix[:, 0])),
        (b"gXYZ", _xyz(matrix[:, 1])),
        (b"bXYZ", _xyz(matrix[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0test\0"),
        *extra_tags,
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(padded))
        body += padded
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"none"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + b"".join(_s15(v) for v in _D50)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body
