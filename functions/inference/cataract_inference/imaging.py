"""Safe image decoding and THE preprocessing, shared by serving and training.

Decoding refuses what could hurt the process (decompression bombs, exotic codecs) before the
pixels are read, and turns every accepted input into an upright 8-bit RGB image. ``preprocess``
turns that image into the model's input tensor; training calls the very same function.
"""

from __future__ import annotations

import functools
import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .manifest import InputSpec
from .settings import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE

# The decoders we accept (JPEG covers MPO, which phones write). Anything else is refused
# before Pillow tries its other plugins.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Magic numbers of image formats we recognise but do not read, so the client hears "convert it".
_KNOWN_UNSUPPORTED: tuple[tuple[bytes, int, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"%PDF", 0, "PDF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "SVG/XML"),
)

# Magic numbers of the formats we read: data that starts like one but that Pillow cannot open is a corrupt image
# (400), not something other than an image (415). BMP's two letters are too weak a sign to count.
_ACCEPTED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WebP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)

_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WebP": "image/webp",
    "TIFF": "image/tiff",
}


def _accepted_format(data: bytes) -> str | None:
    """Which format we read ``data`` starts as, by its magic number (BMP left out); ``None`` for another."""
    for magic, at, name in _ACCEPTED_MAGIC:
        if data[at : at + len(magic)] == magic and (name != "WebP" or data[:4] == b"RIFF"):
            return name
    return None


def sniff_media_type(data: bytes) -> str | None:
    """The media type ``data`` starts as, by its magic number, among the formats we read; ``None`` for another."""
    name = _accepted_format(data)
    if name is not None:
        return _MEDIA_TYPES[name]
    return "image/bmp" if data[:2] == b"BM" and len(data) >= 26 else None


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(ValueError):
    """An input that cannot be turned into an image. ``code`` and ``status`` map to the API."""

    code = "invalid_image"
    status = 400


class NotAnImageError(ImageError):
    code = "not_an_image"
    status = 415


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"
    status = 415


class CorruptImageError(ImageError):
    code = "corrupt_image"
    status = 400


class ImageTooLargeError(ImageError):
    code = "image_too_large"
    status = 413


@dataclass(frozen=True)
class DecodeLimits:
    """Refuse images whose declared size exceeds these, before decoding any pixel.

    ``max_scans`` bounds a JPEG's scans: each one walks every block of the image, so a few hundred
    kilobytes of empty scans at 40 MP would keep the decoder busy past Lambda's timeout. Progressive
    encoders write about 10 (libjpeg's default script) and rarely more than 20; a baseline frame has at
    most one scan per component, but libjpeg reads as many as a file holds (270 kB of them: 98 s).

    ``max_jpeg_segments`` bounds the marker segments before a JPEG's first scan, which Pillow parses one
    at a time in Python: 4 bytes each, so 4 MB of empty APP1 markers held it for 1.7 s. Cameras write a
    handful; even an ICC profile split into its most chunks (255) fits.

    ``max_tiff_blocks`` bounds the strips or tiles of a TIFF's first image, for which Pillow builds a
    Python object each while opening it: 4 MB of 4x4 tiles held it for 5 s and 380 MB. A scanner's one row
    a strip at 12000 rows fits, as do 256 px tiles at any size the side limit allows. The decoder inflates
    one whole tile beside the image, however small the image, so a tile is held to ``max_side`` and
    ``max_pixels`` too: a 16x16 TIFF in one 16384 px tile took 800 MB.
    """

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_scans: int = 100
    max_jpeg_segments: int = 1_000
    max_tiff_blocks: int = 65_536


DEFAULT_LIMITS = DecodeLimits()
DEFAULT_FILL = InputSpec().fill_rgb  # the default normalisation's zero: what padding and transparency become


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB image and what we knew of the original."""

    image: Image.Image
    original_size: tuple[int, int]
    format: str
    reduced: bool = False  # decoded at a reduced JPEG scale: sharper pixels exist in the file


# ISO base media files (HEIF, AVIF) name what they hold in their first box's brands: the major brand, then
# a list of compatible ones (an iPhone's HEIC may say "mif1" first and "heic" later).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"mif2", b"msf1", b"MiHE"})
UNSUPPORTED_ADVICE = {
    "HEIC": "on an iPhone, choose Settings > Camera > Formats > Most Compatible, or share the photo as JPEG",
}


def _heif_kind(data: bytes) -> str | None:
    if data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[0:4], "big")
    # Size 1: a 64-bit size follows and the brands start 8 bytes later; size 0: the box runs to the end.
    start, end = (16, 512) if size == 1 else (8, 512 if size == 0 else min(size, 512))
    box = data[start:end]
    brands = {box[0:4], *(box[i : i + 4] for i in range(8, len(box) - 3, 4))}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIC"
    return None


def _sniff_unsupported(data: bytes) -> str | None:
    kind = _heif_kind(data)
    if kind is not None:
        return kind
    head = data[:64].lstrip() if data[:1] in (b" ", b"\n", b"\r", b"\t") else data[:64]
    for magic, offset, name in _KNOWN_UNSUPPORTED:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """The markers of a JPEG's segments (and fill bytes) before its first scan, in order, with where each is.

    Walks segment headers only, skipping each payload by its length: a few steps for a camera's file.
    Stops at anything malformed, which is left to Pillow to judge.
    """
    if not data.startswith(b"\xff\xd8"):
        return
    pos, end = 2, len(data) - 4
    while pos <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        yield marker, pos
        if marker == 0xDA:  # start of scan: the image data begins
            return
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # a fill byte, or a marker with no length
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])


# Start-of-frame markers: 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC); those of arithmetic-coded JPEGs
# (SOF9-11, SOF13-15), and of lossless ones (SOF3, 7, 11, 15).
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ARITHMETIC_FRAMES = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_LOSSLESS_FRAMES = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
# Valid precisions Pillow's libjpeg cannot read (12-bit DCT, 2-16-bit lossless); any other value is corrupt.
_OTHER_PRECISIONS = frozenset(range(2, 17)) - {8}


@dataclass(frozen=True)
class _JpegHeader:
    """What a JPEG's segments before its first scan say, from one walk of their headers."""

    segments: int  # marker segments (and fill bytes) walked, up to one past the limit
    frames: frozenset[int]  # its start-of-frame markers
    precisions: frozenset[int]  # bits per sample its frames declare: Pillow's libjpeg reads 8 only
    # True unless the first scan carries every component of the frame (or the headers could not be read). After
    # a first scan of fewer components, libjpeg buffers the whole image and reads every scan in the file before
    # any output; after a whole first scan, further scans end the decode as corrupt at once.
    partial_first_scan: bool

    @property
    def arithmetic(self) -> bool:
        return bool(self.frames & _ARITHMETIC_FRAMES)

    @property
    def lossless(self) -> bool:
        return bool(self.frames & _LOSSLESS_FRAMES)


def _jpeg_header(data: bytes, limit: int) -> _JpegHeader | None:
    """The header of a JPEG (``None`` for anything else), walked for at most ``limit`` + 1 segments."""
    if not data.startswith(b"\xff\xd8"):
        return None
    segments, frames, precisions, components, scanned = 0, set(), set(), None, None
    for marker, pos in _jpeg_segments(data):
        segments += 1
        if segments > limit:
            break
        if marker in _FRAMES and pos + 9 < len(data):
            frames.add(marker)
            if (data[pos + 2] << 8) | data[pos + 3] >= 11:  # a whole frame header: its precision byte is one
                precisions.add(data[pos + 4])
            components = data[pos + 9]  # FF Cn, length, precision, height, width, then the component count
        elif marker == 0xDA and pos + 4 < len(data):
            scanned = data[pos + 4]  # FF DA, length, then the scan's component count
    partial = components is None or scanned is None or scanned < components
    return _JpegHeader(segments, frozenset(frames), frozenset(precisions), partial)


@dataclass(frozen=True)
class _TiffLayout:
    blocks: int  # strips or tiles
    tile: tuple[int, int] | None  # (width, length) of a tiled image's tiles


_TIFF_SCALARS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types a tile side may have


def _tiff_layout(data: bytes) -> _TiffLayout | None:
    """How the first image of a TIFF (or BigTIFF) is cut up; ``None`` if not a TIFF or unreadable.

    Reads the header and the first directory's entries only, never the offsets themselves.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 42:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        count_fmt, entry_fmt, head = "H", "HHI", 2
    elif version == 43:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        count_fmt, entry_fmt, head = "Q", "HHQ", 8
    else:
        return None
    entry_size = 12 if version == 42 else 20
    value_at = 8 if version == 42 else 12  # the value field, where a single short or long is kept
    if ifd + head > len(data):
        return None
    (entries,) = struct.unpack_from(order + count_fmt, data, ifd)
    blocks, sides = 0, {}
    for i in range(min(entries, (len(data) - ifd - head) // entry_size)):
        at = ifd + head + i * entry_size
        tag, kind, count = struct.unpack_from(order + entry_fmt, data, at)
        if tag in (273, 324):  # StripOffsets, TileOffsets
            blocks = max(blocks, count)
        elif tag in (322, 323) and count == 1 and kind in _TIFF_SCALARS:  # TileWidth, TileLength
            fmt = _TIFF_SCALARS[kind]
            if version == 42 and fmt == "Q":
                continue
            sides[tag] = struct.unpack_from(order + fmt, data, at + value_at)[0]
    tile = (sides[322], sides[323]) if 322 in sides and 323 in sides else None
    return _TiffLayout(blocks, tile)


def _check_tiff(layout: _TiffLayout | None, size: tuple[int, int], limits: DecodeLimits) -> None:
    """Refuse a TIFF whose tiles exceed the limits: the decoder inflates a tile whole, however small the image."""
    if layout is None or layout.tile is None:
        return
    (tile_w, tile_h), (width, height) = layout.tile, size
    if tile_w > limits.max_side or tile_h > limits.max_side or tile_w * tile_h > limits.max_pixels:
        raise ImageTooLargeError(
            f"the TIFF is {width}x{height} in {tile_w}x{tile_h} tiles, each decoded whole; the limit is "
            f"{limits.max_side} px a side and {limits.max_pixels} pixels (re-save it, or send JPEG or PNG)"
        )


def _too_many_pixels(limits: DecodeLimits) -> ImageTooLargeError:
    # Pillow's own bomb check (twice its 89.5 MP default) can come first; its message quoted Pillow's limit, not ours.
    return ImageTooLargeError(
        f"the image declares too many pixels; the limit is {limits.max_side} px a side and {limits.max_pixels} pixels"
    )


def _open(data: bytes, limits: DecodeLimits) -> tuple[Image.Image, _JpegHeader | None]:
    """The opened image, not yet decoded, and its JPEG header if it is one; refuses what the limits do not allow."""
    if not data:
        raise NotAnImageError("the image is empty")
    tiff = _tiff_layout(data)
    blocks = 0 if tiff is None else tiff.blocks
    if blocks > limits.max_tiff_blocks:
        raise ImageTooLargeError(
            f"the TIFF is cut into {blocks} strips or tiles; the limit is {limits.max_tiff_blocks} (re-save it, or "
            "send JPEG or PNG)"
        )
    jpeg = _jpeg_header(data, limits.max_jpeg_segments)
    if jpeg is not None and jpeg.segments > limits.max_jpeg_segments:
        raise ImageTooLargeError(
            f"the JPEG has over {limits.max_jpeg_segments} marker segments before its image data (re-save it)"
        )
    if jpeg is not None and jpeg.precisions & _OTHER_PRECISIONS:
        bits = max(jpeg.precisions & _OTHER_PRECISIONS)
        raise UnsupportedFormatError(
            f"{bits}-bit JPEG images are not supported (only 8-bit, as cameras and phones write); send an 8-bit "
            "JPEG, or PNG"
        )
    try:
        # Our own limits (below) refuse before any pixel is read. Pillow's warning is left alone: turning it
        # into an error here meant changing the process-wide warning filters on every call, which threads
        # of `serve` undid for each other, and it refused a configured limit above 89.5 MP.
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        other = _sniff_unsupported(data)
        if other is not None:
            advice = f" ({UNSUPPORTED_ADVICE[other]})" if other in UNSUPPORTED_ADVICE else ""
            raise UnsupportedFormatError(f"{other} images are not supported; send JPEG, PNG or WebP{advice}") from exc
        looks_like = _accepted_format(data)
        if looks_like is not None:
            raise CorruptImageError(
                f"the image header is corrupt: it starts as a {looks_like} but cannot be read"
            ) from exc
        raise NotAnImageError("the data is not an image we can read (JPEG, PNG, WebP, BMP, GIF, TIFF)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(limits) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's plugins raise many types on hostile headers
        raise CorruptImageError(f"the image header is corrupt: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError("the image declares an empty size")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height}; the limit is {limits.max_side} px a side and {limits.max_pixels} pixels"
        )
    if img.format == "BMP" and img.tile and img.tile[0][0] == "bmp_rle":
        # Pillow decodes RLE bitmaps in pure Python: seconds and hundreds of MB from a 14 kB file.
        raise UnsupportedFormatError("RLE-compressed BMP images are not supported; send JPEG, PNG or WebP")
    if img.format == "TIFF":
        _check_tiff(tiff, (width, height), limits)
    # Counted only where libjpeg reads every scan: progressive files, and baseline ones whose first scan is
    # partial (270 kB of empty scans at 40 MP: 98 s). Not every JPEG: the count takes 1 ms per MB.
    partial = jpeg is None or jpeg.partial_first_scan
    if img.format in ("JPEG", "MPO") and (img.info.get("progressive") or partial):
        # Every scan starts with an SOS marker, and entropy-coded data cannot hold one (0xFF is stuffed).
        scans = data.count(b"\xff\xda")
        if scans > limits.max_scans:
            raise ImageTooLargeError(f"the JPEG has {scans} scans; the limit is {limits.max_scans} (re-save it)")
    return img, jpeg


def _to_rgb(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "L", "1") and "transparency" in img.info:
        # A colour key (PNG tRNS): that colour is transparent, and becomes the fill as alpha does.
        return _composite_onto(img, fill)
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_onto(img, fill)
    return img.convert("RGB")


# Rows are converted this many pixels at a time, so that a 40 MP image never has several full-size
# working copies (float64, or RGBA) alive at once.
_BLOCK_PIXELS = 1 << 20


def _rows_per_block(width: int) -> int:
    return max(1, _BLOCK_PIXELS // max(1, width))


def _composite_onto(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """An image with alpha composited onto ``fill``, a strip of rows at a time.

    The pixels are what one ``alpha_composite`` of the whole image gives (it is per pixel); the
    working set is one strip instead of three full-size RGBA copies (≈ 480 MB at 40 MP).
    """
    out = Image.new("RGB", img.size)
    rows = _rows_per_block(img.width)
    for top in range(0, img.height, rows):
        box = (0, top, img.width, min(img.height, top + rows))
        strip = img.crop(box)
        rgba = strip if strip.mode == "RGBA" else strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*fill, 255))
        out.paste(Image.alpha_composite(background, rgba).convert("RGB"), box[:2])
    return out


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8-bit RGB: 16-bit data spans 0..65535, 'I' and 'F' their own range.

    Converted a block of rows at a time, with the same float64 arithmetic as one whole-image pass: a
    40 MP image no longer needs three float64 copies of itself (≈ 1 GB).
    """
    src = np.asarray(img)
    brightest = src.max(initial=0)
    # One NaN or +inf pixel, and the scale chosen below made the whole photo black; -inf, and every pixel it is.
    if not (np.isfinite(brightest) and np.isfinite(src.min(initial=0))):
        raise CorruptImageError("the image's float pixels include NaN or infinity; send it as 8- or 16-bit")
    if img.mode.startswith("I;16") or brightest > 255:
        top = 65535.0
    elif img.mode == "F" and 0 < brightest <= 1.0:
        top = 1.0  # float images are usually stored as 0..1; read as 0..255 they would be black
    else:
        top = 255.0
    out = np.empty(src.shape, dtype=np.uint8)
    rows = _rows_per_block(src.shape[1])
    for start in range(0, src.shape[0], rows):
        block = src[start : start + rows].astype(np.float64)
        np.multiply(block, 255.0 / top, out=block)
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = block  # the unsafe float-to-uint8 cast, as astype(np.uint8)
    del src  # a full-size copy of the wide pixels: gone before the RGB image is made
    return Image.fromarray(out).convert("RGB")


def _draft(img: Image.Image, target_size: int | None, longest_side: int | None) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps the requested sides."""
    if target_size is not None:
        img.draft("RGB", (target_size, target_size))
    elif longest_side is not None:
        width, height = img.size
        scale = longest_side / max(width, height)
        if scale < 1.0:
            # Pillow keeps both sides at least this box: the photo's own shape, its longer side exact.
            img.draft("RGB", (max(1, math.floor(width * scale)), max(1, math.floor(height * scale))))


def decode_image(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    target_size: int | None = None,
    longest_side: int | None = None,
    fill: tuple[int, int, int] = DEFAULT_FILL,
) -> DecodedImage:
    """Decode ``data`` into an upright 8-bit RGB image.

    ``target_size`` lets JPEG decode at a reduced scale (DCT draft mode) while keeping both sides
    at least that large; it only ever drops resolution the model would throw away. ``longest_side``
    does the same for a picture shown at most that large (the heat map): only the longer side is kept
    at least that long. ``fill`` is the colour transparent pixels are composited onto.
    """
    if target_size is not None and longest_side is not None:
        raise ValueError("give target_size or longest_side, not both")
    img, jpeg = _open(data, limits)
    original_size = img.size
    fmt = img.format or "unknown"
    try:
        if fmt in ("JPEG", "MPO"):
            if not (jpeg and jpeg.lossless):  # libjpeg cannot scale a lossless JPEG (no DCT): its draft failed
                _draft(img, target_size, longest_side)
            if jpeg and jpeg.arithmetic:
                # libjpeg's arithmetic decoder cannot resume mid-stream: fed in Pillow's 64 kB blocks, a valid
                # file over 64 kB failed as corrupt. The whole file at once (it is in memory already).
                img.decodermaxblock = max(img.decodermaxblock, len(data))  # type: ignore[attr-defined]
        img.load()
        reduced = img.size != original_size
        img = _upright(img)
        # EXIF rotations by 90 degrees swap the sides of the original too.
        if img.size[0] != img.size[1] and (img.size[0] < img.size[1]) != (original_size[0] < original_size[1]):
            original_size = (original_size[1], original_size[0])
        rgb = _to_rgb(img, fill)
        profile = img.info.get("icc_profile")
        if isinstance(profile, bytes) and img.mode in ("RGB", "RGBA", "P"):
            rgb = _to_srgb(rgb, profile)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(limits) from exc
    except (MemoryError, ImageError):  # ours already say what is wrong
        raise
    except Exception as exc:  # hostile pixel data reaches C decoders and Python plugins alike
        raise CorruptImageError(f"the image data is truncated or corrupt: {exc}") from exc
    return DecodedImage(image=rgb, original_size=original_size, format=fmt, reduced=reduced)


@functools.cache
def _srgb_profile() -> Any:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# Display P3 and Adobe RGB profiles are 0.5-4 kB: a matrix and three curves.
MAX_PROFILE_BYTES = 64 * 1024
_MATRIX_TAGS = frozenset({b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC"})
_LUT_TAG_PREFIXES = (b"A2B", b"B2A", b"D2B", b"B2D")


def _matrix_profile(profile: bytes) -> bool:
    """True for a small matrix-and-curves RGB profile, the only kind converted.

    lcms prefers a profile's lookup-table tags, whose processing elements may all point at the same bytes:
    8 bytes each, about 1.4 ms each to build. A crafted 81 kB profile held one decode for 15 s.
    """
    if len(profile) > MAX_PROFILE_BYTES or len(profile) < 132:
        return False
    count = int.from_bytes(profile[128:132], "big")
    table = profile[132 : 132 + 12 * count]
    if count > 64 or len(table) < 12 * count:
        return False
    tags = {table[i : i + 4] for i in range(0, len(table), 12)}
    return tags >= _MATRIX_TAGS and not any(tag.startswith(_LUT_TAG_PREFIXES) for tag in tags)


@functools.lru_cache(maxsize=16)
def _srgb_transform(profile: bytes, mode: str) -> Any:
    """A transform from ``profile`` to sRGB for ``mode`` pixels, or ``None``: already sRGB, not a matrix RGB
    profile for RGB pixels (CMYK, grey and lookup-table profiles are left as they are), or a profile lcms
    cannot read (ignored then, as browsers ignore it)."""
    from PIL import ImageCms

    if not _matrix_profile(profile):
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space = source.profile.xcolor_space.strip()
        if mode != "RGB" or space != "RGB" or "srgb" in (source.profile.profile_description or "").lower():
            return None
        return ImageCms.buildTransform(source, _srgb_profile(), mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None


def _to_srgb(img: Image.Image, profile: bytes) -> Image.Image:
    """An RGB ``img`` in sRGB, the colours the model was trained on, converted in place: phones tag their photos
    with wider spaces (iPhones: Display P3), whose raw values are more saturated than the same colours in sRGB."""
    transform = _srgb_transform(profile, img.mode)
    if transform is not None:
        from PIL import ImageCms

        ImageCms.applyTransform(img, transform, inPlace=True)
    return img


_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF orientation; a malformed EXIF block is ignored, as viewers ignore it.

    The pixels decoded fine, so a broken tag is no reason to refuse the photo. Not ``ImageOps.exif_transpose``:
    it then rewrote the whole EXIF block in Python, which nothing here reads (a crafted 4 MB block: 7 s).
    """
    try:
        # getexif() also finds an orientation kept only in XMP, as exif_transpose does.
        method = _ORIENTATIONS.get(img.getexif().get(0x0112, 1))
    except MemoryError:
        raise
    except Exception:  # struct.error, AttributeError, ... from a bad tag type
        return img
    return img if method is None else img.transpose(method)


def resize_for_model(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize (and pad or crop) an RGB image to ``spec.size`` square, as the manifest says."""
    size = spec.size
    resample = _RESAMPLE[spec.interpolation]
    width, height = img.size
    if spec.resize == "squash":
        return img.resize((size, size), resample, reducing_gap=3.0)
    if spec.resize == "center_crop":
        # Only the kept square is resampled (its box in the photo's own pixels): scaled whole first, a 12000x1
        # photo became 3,072,000x256 px, 3 GB, to keep 224x224 of it.
        scaled_w, scaled_h = center_crop_scaled_size(width, height, spec)
        left, top = (scaled_w - size) // 2, (scaled_h - size) // 2
        x, y = width / scaled_w, height / scaled_h
        box = (left * x, top * y, (left + size) * x, (top + size) * y)
        return img.resize((size, size), resample, box=box, reducing_gap=3.0)
    left, top, right, bottom = content_box(width, height, spec)
    resized = img.resize((right - left, bottom - top), resample, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), spec.fill_rgb)
    canvas.paste(resized, (left, top))
    return canvas


def decode_side(spec: InputSpec) -> int:
    """The shortest side a decode may shrink a photo to before the model's resize: any smaller, and that resize
    would enlarge what a full decode had. ``center_crop`` scales the shorter side to ``size / crop_fraction``
    first; ``letterbox`` and ``squash`` need both sides at ``size`` at most."""
    if spec.resize == "center_crop":
        return max(spec.size, round(spec.size / spec.crop_fraction))
    return spec.size


def center_crop_scaled_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """The size a ``width`` x ``height`` photo is scaled to before ``center_crop`` takes the centre square."""
    size = spec.size
    short = decode_side(spec)
    scale = short / min(width, height)
    return (max(size, round(width * scale)), max(size, round(height * scale)))


def center_crop_box(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """The part of a ``width`` x ``height`` photo that ``center_crop`` keeps, in the photo's own pixels."""
    scaled_w, scaled_h = center_crop_scaled_size(width, height, spec)
    keep_w = max(1, round(spec.size * width / scaled_w))
    keep_h = max(1, round(spec.size * height / scaled_h))
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return (left, top, left + keep_w, top + keep_h)


def content_box(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` photo lies in the model's input square: (left, top, right, bottom).

    The whole square unless the photo is letterboxed, when the padding around it is left out.
    """
    size = spec.size
    if spec.resize != "letterbox":
        return (0, 0, size, size)
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    left, top = (size - new[0]) // 2, (size - new[1]) // 2
    return (left, top, left + new[0], top + new[1])


def normalise(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A ``spec.size`` square RGB image as a normalised float32 CHW array."""
    scale = np.asarray([1.0 / (255.0 * s) for s in spec.std], dtype=np.float32)[:, None, None]
    bias = np.asarray([-m / s for m, s in zip(spec.mean, spec.std, strict=True)], dtype=np.float32)[:, None, None]
    # One multiply straight from the uint8 pixels into a CHW float32 buffer, then one add in place:
    # the same float32 arithmetic as (x * scale + bias), without the HWC float copy and the
    # transposing copy (1.3 ms -> 0.15 ms at 224 px).
    chw = np.asarray(img).transpose(2, 0, 1)
    out = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, scale, out=out, casting="unsafe")
    out += bias
    return out


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """THE preprocessing: an RGB image to the model's float32 CHW input. Training reuses it."""
    if img.mode != "RGB":
        img = _to_rgb(img, spec.fill_rgb)
    return normalise(resize_for_model(img, spec), spec)


def load_for_model(
    data: bytes, spec: InputSpec, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[DecodedImage, np.ndarray]:
    """Decode bytes and preprocess them for the model, the way serving does."""
    decoded = decode_image(data, limits, target_size=decode_side(spec), fill=spec.fill_rgb)
    return decoded, preprocess(decoded.image, spec)
