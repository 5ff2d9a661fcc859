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


def progressive_jpeg_with_scans(extra_scans: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A progressive JPEG from Pillow (about 10 scans) with its last scan repeated ``extra_scans`` times:
    the shape of a scan bomb, where every scan walks every block of the image."""
    data = encoded(gradient(size), "JPEG", progressive=True, quality=90)
    last_sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[last_sos:eoi] * extra_scans + data[eoi:]


def jpeg_with_empty_segments(count: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG with ``count`` empty APP1 segments (4 bytes each) after its SOI: cheap to send, slow to parse."""
    data = encoded(gradient(size), "JPEG")
    return data[:2] + b"\xff\xe1\x00\x02" * count + data[2:]


def bmp_rle8(size: tuple[int, int] = (16, 8)) -> bytes:
    """An 8-bit run-length-encoded BMP: each row one run of palette index 1, then end-of-line."""
    width, height = size
    body = (bytes([width, 1]) + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(dib) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


def tiff_with_huge_strip_offset() -> bytes:
    """An 8x8 grey TIFF whose StripOffsets is a LONG8 (BigTIFF's type 16) of 2**64 - 1."""
    short = struct.Struct("<HH")
    entries = [
        (256, 3, short.pack(8, 0)),  # width
        (257, 3, short.pack(8, 0)),  # height
        (258, 3, short.pack(8, 0)),  # bits per sample
        (259, 3, short.pack(1, 0)),  # no compression
        (262, 3, short.pack(1, 0)),  # black is zero
        (273, 16, None),  # strip offsets: LONG8, stored after the IFD
        (277, 3, short.pack(1, 0)),  # samples per pixel
        (278, 3, short.pack(8, 0)),  # rows per strip
        (279, 4, struct.pack("<I", 64)),  # strip byte counts
    ]
    after_ifd = 8 + 2 + 12 * len(entries) + 4
    data = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        data += struct.pack("<HHI", tag, kind, 1) + (value if value is not None else struct.pack("<I", after_ifd))
    return data + b"\x00" * 4 + struct.pack("<Q", 2**64 - 1) + bytes(64)


def tiled_tiff(side: int, tile: int, big: bool = False) -> bytes:
    """An uncompressed grey ``side`` x ``side`` TIFF (or BigTIFF) cut into ``tile`` px tiles, all of which point
    at the same bytes: a few bytes a tile, however many tiles it declares."""
    tiles = (-(-side // tile)) ** 2
    count, entry = ("<Q", "<HHQQ") if big else ("<H", "<HHII")
    head = 16 if big else 8
    fields = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    fields += [(322, 4, 1, tile), (323, 4, 1, tile)]
    ifd_size = struct.calcsize(count) + (len(fields) + 2) * struct.calcsize(entry) + (8 if big else 4)
    pixels = head + ifd_size
    offsets = pixels + tile * tile
    counts = offsets + 4 * tiles
    # One value is kept in the entry itself; more, in an array the entry points at.
    if tiles == 1:
        fields += [(324, 4, 1, pixels), (325, 4, 1, tile * tile)]
    else:
        fields += [(324, 4, tiles, offsets), (325, 4, tiles, counts)]
    header = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 8)
    ifd = struct.pack(count, len(fields)) + b"".join(struct.pack(entry, *f) for f in fields) + bytes(8 if big else 4)
    body = bytes(range(256)) * (tile * tile // 256 + 1)
    arrays = b"" if tiles == 1 else struct.pack("<I", pixels) * tiles + struct.pack("<I", tile * tile) * tiles
    return header + ifd + body[: tile * tile] + arrays


def striped_tiff(side: int, strips: int, decoy_tile: bool = False) -> bytes:
    """An uncompressed grey ``side`` px wide TIFF of ``strips`` one-row strips, all of which point at the same row:
    eight bytes a strip, however many it declares. ``decoy_tile`` adds a TileOffsets entry of one tile after the
    StripOffsets, as a crafted file may, to hide the strip count behind a small one."""
    fields = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    fields += [(277, 3, 1, 1), (278, 4, 1, 1)]  # one sample per pixel, one row per strip
    ifd_size = 2 + (len(fields) + 2 + int(decoy_tile)) * 12 + 4
    pixels = 8 + ifd_size
    offsets = pixels + side
    counts = offsets + 4 * strips
    fields += [(273, 4, strips, offsets), (279, 4, strips, counts)]
    if decoy_tile:
        fields.append((324, 4, 1, pixels))  # after StripOffsets (273) and StripByteCounts (279), in tag order
    ifd = struct.pack("<H", len(fields)) + b"".join(struct.pack("<HHII", *f) for f in fields) + bytes(4)
    row = (bytes(range(256)) * (side // 256 + 1))[:side]
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + ifd
        + row
        + struct.pack("<I", pixels) * strips
        + struct.pack("<I", side) * strips
    )


def jpeg_with_malformed_exif(size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG whose EXIF says "rotate by 90 degrees" beside a Make tag typed DOUBLE: Pillow reads the
    orientation, then fails to re-serialise the block after applying it."""
    ifd = bytes.fromhex("4d4d002a000000080002010f000c000000010000002601120003000000010006000000000000")
    return encoded(gradient(size), "JPEG", quality=95, exif=b"Exif\x00\x00" + ifd + bytes(8))


def png_with_truncated_exif(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG whose eXIf chunk stops right after the TIFF header."""
    return encoded(gradient(size), "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00")


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def baseline_jpeg_with_scans(rounds: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A baseline (not progressive) YCbCr JPEG whose scans each carry one component and no data, repeated
    ``rounds`` times: libjpeg buffers the whole image after a one-component first scan, and reads every scan."""
    width, height = size
    table = _segment(0xDB, b"\x00" + b"\x01" * 64)
    frame = _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3)))
    bits = bytes([1] + [0] * 15)
    huffman = _segment(0xC4, b"\x00" + bits + b"\x00" + b"\x10" + bits + b"\x00")
    scans = b"".join(_segment(0xDA, bytes([1, c, 0x00, 0, 63, 0])) for c in (1, 2, 3)) * rounds
    return b"\xff\xd8" + table + frame + huffman + scans + b"\xff\xd9"


def lossless_jpeg(size: tuple[int, int]) -> bytes:
    """An 8-bit grey lossless JPEG (SOF3, predictor 1) of one flat value: every difference codes as one 0 bit."""
    width, height = size
    frame = _segment(0xC3, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))
    huffman = _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    scan = _segment(0xDA, bytes([1, 1, 0x00, 1, 0, 0]))
    return b"\xff\xd8" + frame + huffman + scan + bytes((width * height + 7) // 8) + b"\xff\xd9"


def png_with_exif(img: Image.Image, exif: bytes) -> bytes:
    """``img`` as a PNG with ``exif`` (a TIFF-structured block) in an eXIf chunk."""
    png = encoded(img, "PNG")
    chunk = b"eXIf" + exif
    return png[:33] + struct.pack(">I", len(exif)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def exif_with_orientation(orientation: int, rationals: int = 0) -> bytes:
    """A little-endian EXIF block: an orientation tag, and a tag of ``rationals`` signed rationals beside it."""
    entries = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    entries += struct.pack("<HHII", 0x9286, 10, rationals, 8 + 2 + 24 + 4)
    return b"II*\x00" + struct.pack("<IH", 8, 2) + entries + bytes(4) + struct.pack("<ii", 1, 3) * rationals
