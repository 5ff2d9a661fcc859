"""Safe decoding and the shared preprocessing."""

from __future__ import annotations

import io
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cataract_inference import imaging, settings
from cataract_inference.manifest import InputSpec
from tests.support.images import (
    animated_gif,
    baseline_jpeg_with_scans,
    bmp_rle8,
    encoded,
    exif_with_orientation,
    gradient,
    jpeg_with_empty_segments,
    jpeg_with_malformed_exif,
    jpeg_with_orientation,
    lossless_jpeg,
    png_with_declared_size,
    png_with_exif,
    png_with_truncated_exif,
    progressive_jpeg_with_scans,
    striped_tiff,
    tiff_with_huge_strip_offset,
    tiled_tiff,
)

SPEC = InputSpec(size=32)


def _arithmetic(data: bytes) -> bool:
    header = imaging._jpeg_header(data, imaging.DEFAULT_LIMITS.max_jpeg_segments)
    return header is not None and header.arithmetic


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    decoded = imaging.decode_image(encoded(gradient(), fmt))
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)
    assert decoded.format == fmt


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = gradient(mode=mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    decoded = imaging.decode_image(encoded(img, fmt))
    assert decoded.image.mode == "RGB"
    arr = np.asarray(decoded.image)
    assert arr.std() > 10, "content must survive the conversion"


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    decoded = imaging.decode_image(encoded(img, "PNG"))
    out = np.asarray(decoded.image)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert 100 < out.mean() < 155, "a full-range ramp stays a full-range ramp"


def test_transparency_is_composited_onto_the_fill_colour() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    decoded = imaging.decode_image(encoded(img, "PNG"), fill=(1, 2, 3))
    assert decoded.image.getpixel((5, 5)) == (1, 2, 3)


def test_palette_with_transparency() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    img.info["transparency"] = 0
    decoded = imaging.decode_image(encoded(img, "PNG", transparency=0), fill=(9, 9, 9))
    assert decoded.image.getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize(("mode", "key", "kept"), [("RGB", (250, 250, 250), (10, 20, 30)), ("L", 250, (40, 40, 40))])
def test_a_colour_key_is_transparent_like_alpha(mode: str, key: object, kept: tuple[int, int, int]) -> None:
    # A PNG tRNS chunk on an RGB or grey image: that colour was once served as it is, not as the fill.
    img = Image.new(mode, (20, 20), key)  # type: ignore[arg-type]
    img.paste(Image.new(mode, (10, 10), kept if mode == "RGB" else kept[0]), (0, 0))
    decoded = imaging.decode_image(encoded(img, "PNG", transparency=key), fill=(9, 9, 9))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((15, 15)) == (9, 9, 9) and decoded.image.getpixel((5, 5)) == kept


def test_animated_gif_uses_the_first_frame() -> None:
    decoded = imaging.decode_image(animated_gif())
    r, g, b = np.asarray(decoded.image)[5, 5].astype(int)
    assert r > 200 and g < 50 and b < 50


# Where the stored top-left corner ends up once upright (EXIF 2.32, Orientation): (on the left, at the top).
_UPRIGHT_CORNER = {
    1: (True, True),
    2: (False, True),  # mirrored left to right
    3: (False, False),  # turned 180 degrees
    4: (True, False),  # mirrored top to bottom
    5: (True, True),  # mirrored along the main diagonal: the top-left corner stays put
    6: (False, True),  # turned 90 degrees clockwise
    7: (False, False),  # mirrored along the other diagonal
    8: (True, False),  # turned 90 degrees anticlockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # a red block at the top left of the stored pixels
    data = jpeg_with_orientation(img, orientation)
    decoded = imaging.decode_image(data)
    size = (60, 40) if orientation <= 4 else (40, 60)  # 5 to 8 swap the sides
    assert decoded.image.size == size
    assert decoded.original_size == size
    red = np.asarray(decoded.image)[..., 0] > 128
    ys, xs = np.nonzero(red)
    corner = (xs.mean() < size[0] / 2, ys.mean() < size[1] / 2)
    assert corner == _UPRIGHT_CORNER[orientation]
    # Pillow's own exif_transpose, which the decoder avoids for speed, as a second reference: the same pixels.
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(reference))


def test_large_jpeg_decodes_in_draft_mode_but_stays_large_enough() -> None:
    data = encoded(gradient((3000, 2000)), "JPEG", quality=85)
    decoded = imaging.decode_image(data, target_size=224)
    assert decoded.original_size == (3000, 2000)
    assert 224 <= min(decoded.image.size) < 1000
    assert decoded.reduced
    full = imaging.decode_image(data)
    assert full.image.size == (3000, 2000)
    assert not full.reduced


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3000, 2000), (750, 500)), ((2000, 3000), (500, 750)), ((1024, 683), (512, 342)), ((4000, 300), (1000, 75))],
)
def test_preview_decodes_at_the_smallest_scale_that_keeps_the_longer_side(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    # The heat map is shown at most 512 px long: only its longer side has to survive the DCT scaling.
    data = encoded(gradient(size), "JPEG", quality=85)
    decoded = imaging.decode_image(data, longest_side=512)
    assert decoded.image.size == expected
    assert decoded.original_size == size
    assert max(imaging.decode_image(data, target_size=512).image.size) > max(expected)  # both sides: a finer scale


def test_preview_leaves_small_and_non_jpeg_images_whole() -> None:
    for fmt, size in (("JPEG", (600, 400)), ("PNG", (1600, 1200))):
        decoded = imaging.decode_image(encoded(gradient(size), fmt), longest_side=512)
        assert decoded.image.size == size
        assert not decoded.reduced


def test_target_size_and_longest_side_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        imaging.decode_image(encoded(gradient((64, 64)), "JPEG"), target_size=32, longest_side=32)


def test_declared_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_with_declared_size(60_000, 60_000)
    # Refused from the header: reading any pixel (Image.load) would fail the test, not merely slow it.
    monkeypatch.setattr(imaging.Image.Image, "load", lambda *a, **k: pytest.fail("pixels were decoded"))
    with pytest.raises(imaging.ImageTooLargeError) as info:
        imaging.decode_image(bomb)
    assert info.value.status == 413
    # 3.6 GP: Pillow's own bomb check comes first, and its message quoted its limit (178956970), not the service's.
    limits = imaging.DecodeLimits()
    assert str(info.value) == (
        f"the image declares too many pixels; the limit is {limits.max_side} px a side and {limits.max_pixels} pixels"
    )


def test_limits_are_configurable() -> None:
    with pytest.raises(imaging.ImageTooLargeError):
        imaging.decode_image(
            encoded(gradient((200, 100)), "PNG"), imaging.DecodeLimits(max_pixels=10_000, max_side=500)
        )
    with pytest.raises(imaging.ImageTooLargeError):
        imaging.decode_image(encoded(gradient((200, 100)), "PNG"), imaging.DecodeLimits(max_side=150))


def test_each_side_limit_holds_and_a_photo_exactly_at_the_limits_passes() -> None:
    with pytest.raises(imaging.ImageTooLargeError):  # a tall photo: the height alone is over the limit
        imaging.decode_image(png_with_declared_size(10, 20_000))
    at_limits = imaging.DecodeLimits(max_pixels=20_000, max_side=200)
    assert imaging.decode_image(encoded(gradient((200, 100)), "PNG"), at_limits).image.size == (200, 100)


def test_a_pixel_limit_above_pillows_warning_is_honoured() -> None:
    # 95 MP: over Pillow's 89.5 MP warning, under its error. The IDAT holds one row, so decoding fails fast.
    data = png_with_declared_size(10_000, 9_500)
    limits = imaging.DecodeLimits(max_pixels=100_000_000, max_side=20_000)
    with warnings.catch_warnings(record=True) as seen:
        with pytest.raises(imaging.CorruptImageError):  # past the size checks, into the pixel data
            imaging.decode_image(data, limits)
        with pytest.raises(imaging.ImageTooLargeError):
            imaging.decode_image(data)  # the default limit still refuses it before decoding
    assert {w.category for w in seen} == {Image.DecompressionBombWarning}


def test_the_pixel_setting_stops_where_pillow_refuses() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    assert settings.PILLOW_PIXEL_CEILING == 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encoded(gradient((128, 128)), fmt)
    with pytest.raises(imaging.CorruptImageError) as info:
        imaging.decode_image(data[: len(data) // 2])
    assert info.value.status == 400


def test_a_progressive_jpeg_decodes_but_a_scan_bomb_is_refused_before_decoding() -> None:
    ordinary = progressive_jpeg_with_scans(0)
    assert 1 < ordinary.count(b"\xff\xda") <= 20, "Pillow writes libjpeg's progressive script"
    assert imaging.decode_image(ordinary).image.size == (64, 48)
    bomb = progressive_jpeg_with_scans(150)
    with pytest.raises(imaging.ImageTooLargeError, match="scans") as info:
        imaging.decode_image(bomb)
    assert info.value.status == 413
    assert imaging.decode_image(bomb, imaging.DecodeLimits(max_scans=200)).image.size == (64, 48)


def test_a_jpeg_of_thousands_of_empty_segments_is_refused_before_pillow_parses_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = jpeg_with_empty_segments(1_100_000)  # 4.4 MB: Pillow took 1.7 s to walk its headers
    with monkeypatch.context() as patched:
        patched.setattr(imaging.Image, "open", lambda *a, **k: pytest.fail("Pillow was handed the segment bomb"))
        with pytest.raises(imaging.ImageTooLargeError, match="marker segments") as info:
            imaging.decode_image(bomb)
    assert info.value.status == 413
    assert imaging.decode_image(jpeg_with_empty_segments(100)).image.size == (64, 48)


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_a_tiff_cut_into_too_many_tiles_is_refused_before_pillow_opens_it(
    monkeypatch: pytest.MonkeyPatch, big: bool
) -> None:
    bomb = tiled_tiff(1040, 4, big)  # 67,600 tiles in 0.5 MB: Pillow builds an object for each while opening
    with monkeypatch.context() as patched:
        patched.setattr(imaging.Image, "open", lambda *a, **k: pytest.fail("Pillow was handed the tile bomb"))
        with pytest.raises(imaging.ImageTooLargeError, match="67600 strips or tiles") as info:
            imaging.decode_image(bomb)
    assert info.value.status == 413
    assert imaging.decode_image(tiled_tiff(64, 16, big)).image.size == (64, 64)  # 16 tiles: an ordinary TIFF


@pytest.mark.parametrize("decoy", [False, True], ids=["strips", "strips-then-one-tile"])
def test_a_tiff_cut_into_too_many_strips_is_refused_before_pillow_opens_it(
    monkeypatch: pytest.MonkeyPatch, decoy: bool
) -> None:
    # Strips cost Pillow as much as tiles do. A small TileOffsets after the StripOffsets must not hide them:
    # the larger count is the one held to the limit.
    bomb = striped_tiff(1000, 100_000, decoy_tile=decoy)  # 100,000 strips in 0.8 MB
    with monkeypatch.context() as patched:
        patched.setattr(imaging.Image, "open", lambda *a, **k: pytest.fail("Pillow was handed the strip bomb"))
        with pytest.raises(imaging.ImageTooLargeError, match="100000 strips or tiles") as info:
            imaging.decode_image(bomb)
    assert info.value.status == 413
    assert imaging.decode_image(striped_tiff(64, 64)).image.size == (64, 64)  # 64 strips: an ordinary TIFF


def test_a_float_tiff_stored_as_0_to_1_is_not_read_as_black() -> None:
    ramp = np.linspace(0.0, 1.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    out = np.asarray(imaging.decode_image(encoded(Image.fromarray(ramp, mode="F"), "TIFF")).image)[..., 0]
    assert out.min() == 0 and out.max() >= 254
    assert 100 < out.mean() < 155, "a 0..1 ramp becomes a full-range ramp"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_a_pixel_that_is_not_a_number_is_refused_not_read_as_black(bad: float) -> None:
    # One NaN pixel made the brightest value NaN, the 0..1 scale was not chosen, and the whole photo came out black
    # (ungradable: "too dark, not an eye"), which says nothing true about the photo.
    ramp = np.linspace(0.0, 1.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    ramp[10, 10] = bad
    with pytest.raises(imaging.CorruptImageError) as info:
        imaging.decode_image(encoded(Image.fromarray(ramp, mode="F"), "TIFF"))
    assert info.value.status == 400
    assert str(info.value).startswith("the image's float pixels include NaN or infinity"), "said once, not re-wrapped"


def test_metadata_rich_jpegs_are_not_mistaken_for_segment_bombs() -> None:
    """EXIF with a thumbnail, XMP-sized comments and an ICC profile in the most chunks a viewer would write."""
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    exif[0x0112] = 1
    icc = bytes(range(256)) * 4_000  # ~1 MB: Pillow splits it into 16 APP2 chunks
    for progressive in (False, True):
        data = encoded(gradient(), "JPEG", exif=exif.tobytes(), icc_profile=icc, progressive=progressive)
        assert data.count(b"\xff\xe2") >= 16
        assert imaging.decode_image(data).image.size == (64, 48)


def test_a_run_length_encoded_bmp_is_refused_as_unsupported() -> None:
    data = bmp_rle8()
    with Image.open(io.BytesIO(data)) as img:  # Pillow would read it, in pure Python
        assert img.tile[0][0] == "bmp_rle"
    with pytest.raises(imaging.UnsupportedFormatError, match="RLE") as info:
        imaging.decode_image(data)
    assert info.value.status == 415


def test_an_out_of_range_tiff_offset_is_corrupt_not_a_crash() -> None:
    with pytest.raises(imaging.CorruptImageError) as info:  # Pillow raises OverflowError
        imaging.decode_image(tiff_with_huge_strip_offset())
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("data", "size"),
    [(jpeg_with_malformed_exif(), (48, 64)), (png_with_truncated_exif(), (64, 48))],
    ids=["jpeg-bad-tag-type-still-turned", "png-truncated-exif-raises"],
)
def test_malformed_exif_is_ignored_and_the_photo_decodes(data: bytes, size: tuple[int, int]) -> None:
    """A viewer shows these photos, and so do we. Reading the PNG's EXIF raises (struct.error), which the decoder
    must swallow; the JPEG's reads, but Pillow's exif_transpose, which we once used, failed re-serialising its
    DOUBLE-typed Make tag, and the orientation beside it must still turn the photo."""
    decoded = imaging.decode_image(data)
    assert decoded.image.size == size  # the JPEG's orientation 6 still turns it upright
    assert decoded.original_size == size


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_greyscale_converts_in_blocks_exactly_as_in_one_pass(mode: str) -> None:
    """Row blocks bound the float64 working set; the pixels must equal the whole-image formula."""
    rng = np.random.default_rng(7)
    rows = (imaging._BLOCK_PIXELS // 1000) * 2 + 7  # three blocks, the last one short
    top = {"I;16": 65535, "I": 70000, "F": 300.0}[mode]
    values = rng.uniform(-5 if mode == "F" else 0, top, size=(rows, 1000))
    values[0, :5] = [0, 257, 257 * 100, 65535 % top, top]  # exact multiples, where float rounding bites
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    img = Image.fromarray(values.astype(dtype))
    assert img.mode == mode
    src = np.asarray(img, dtype=np.float64)
    scale = 65535.0 if mode == "I;16" or src.max() > 255 else 255.0
    expected = np.clip(src * (255.0 / scale), 0, 255).astype(np.uint8)
    out = np.asarray(imaging._wide_to_rgb(img))
    assert out.shape == (rows, 1000, 3)
    np.testing.assert_array_equal(out[..., 0], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "PA"])
def test_alpha_composites_in_strips_exactly_as_in_one_pass(mode: str) -> None:
    """Strips bound the RGBA working set; the pixels must equal one alpha_composite of the whole image."""
    rng = np.random.default_rng(11)
    width = 1000
    rows = (imaging._BLOCK_PIXELS // width) * 2 + 5  # three strips, the last one short
    rgba = Image.fromarray(rng.integers(0, 256, size=(rows, width, 4), dtype=np.uint8), "RGBA")
    img = rgba.convert("P") if mode == "PA" else rgba.convert(mode)
    if mode == "PA":
        img = Image.merge("PA", (img, rgba.getchannel("A")))
    whole = img if mode == "RGBA" else img.convert("RGBA")
    expected = Image.alpha_composite(Image.new("RGBA", img.size, (1, 2, 3, 255)), whole).convert("RGB")
    out = imaging._composite_onto(img, (1, 2, 3))
    assert out.mode == "RGB" and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("data", [b"hello, world", b"\x00" * 100, b'{"image": 1}', b"GIF89"])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(imaging.NotAnImageError) as info:
        imaging.decode_image(data)
    assert info.value.status == 415


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: _flipped(encoded(gradient(), "PNG"), 8 + 4 + 4 + 13), "PNG"),  # the IHDR chunk's CRC
        (lambda: (j := encoded(gradient(), "JPEG"))[:2] + b"\xff\xc0\x00\x05\x00\x00" + j[2:], "JPEG"),  # a bad SOF
        (lambda: b"GIF89a" + b"\x00" * 20, "GIF"),
        (lambda: b"II*\x00" + b"\xff" * 20, "TIFF"),
    ],
    ids=["png-header-crc", "jpeg-sof", "gif", "tiff"],
)
def test_a_known_format_whose_header_cannot_be_read_is_corrupt_not_other(make: Callable[[], bytes], kind: str) -> None:
    """400 corrupt_image, as the README says of a corrupt image: the client sent a photo, only a broken one."""
    with pytest.raises(imaging.CorruptImageError) as info:
        imaging.decode_image(make())
    assert (info.value.status, info.value.code) == (400, "corrupt_image")
    assert f"starts as a {kind}" in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_sniff_media_type_names_each_format_we_read(fmt: str) -> None:
    assert imaging.sniff_media_type(encoded(gradient(), fmt)) == f"image/{fmt.lower()}"


@pytest.mark.parametrize("data", [b"", b"BM", b"RIFF\x10\x00\x00\x00WAVEfmt ", b"hello", b"%PDF-1.7"])
def test_sniff_media_type_names_nothing_else(data: bytes) -> None:
    assert imaging.sniff_media_type(data) is None


def test_riff_that_is_not_webp_is_not_an_image() -> None:
    with pytest.raises(imaging.NotAnImageError):
        imaging.decode_image(b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x00" * 16)


def test_empty_bytes_are_not_an_image() -> None:
    with pytest.raises(imaging.NotAnImageError):
        imaging.decode_image(b"")


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (_ftyp(b"heic", b"mif1", b"heic"), "HEIC"),
        (_ftyp(b"mif1", b"mif1", b"heic"), "HEIC"),  # an iPhone's major brand can be the generic one
        (_ftyp(b"msf1", b"iso8", b"hevc"), "HEIC"),  # a HEIF sequence (Live Photo, burst)
        (_ftyp(b"heix"), "HEIC"),
        (b"\x00\x00\x00\x01ftyp" + (24).to_bytes(8, "big") + b"heic\x00\x00\x00\x00mif1", "HEIC"),  # 64-bit size
        (b"\x00\x00\x00\x00ftypmif1\x00\x00\x00\x00heic", "HEIC"),  # size 0: to the end of the file
        (_ftyp(b"avif", b"mif1", b"miaf"), "AVIF"),
        (_ftyp(b"mif1", b"avif", b"mif1"), "AVIF"),
        (_ftyp(b"avis", b"avif", b"msf1"), "AVIF"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51\x00\x2f", "JPEG 2000"),
        (b"%PDF-1.7", "PDF"),
        (b"8BPS\x00\x01", "PSD"),
    ],
)
def test_known_unsupported_formats_are_named(head: bytes, name: str) -> None:
    with pytest.raises(imaging.UnsupportedFormatError, match=name):
        imaging.decode_image(head + b"\x00" * 64)


_SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (_SVG, "SVG"),
        (b'<?xml version="1.0" encoding="UTF-8"?>\n' + _SVG, "SVG/XML"),
        # Editors and templating leave blank lines or indentation before the markup.
        (b"\n\n  " + _SVG, "SVG"),
        (b"\r\n\t" + b'<?xml version="1.0"?>' + _SVG, "SVG/XML"),
    ],
    ids=["svg", "xml-declaration", "leading-whitespace", "whitespace-then-xml-declaration"],
)
def test_an_svg_is_refused_as_unsupported_not_as_garbage(data: bytes, name: str) -> None:
    with pytest.raises(imaging.UnsupportedFormatError) as info:
        imaging.decode_image(data)
    assert (info.value.status, info.value.code) == (415, "unsupported_format")
    assert str(info.value).startswith(f"{name} images are not supported")


def test_a_heic_refusal_says_how_to_get_a_jpeg_from_an_iphone() -> None:
    with pytest.raises(imaging.UnsupportedFormatError, match="Most Compatible"):
        imaging.decode_image(_ftyp(b"mif1", b"heic") + b"\x00" * 64)


def test_an_mp4_is_not_mistaken_for_heif() -> None:
    with pytest.raises(imaging.NotAnImageError):
        imaging.decode_image(_ftyp(b"isom", b"iso2", b"mp41") + b"\x00" * 64)


@pytest.mark.parametrize("target_size", [None, 224])
def test_an_arithmetic_coded_jpeg_over_64_kb_decodes(target_size: int | None) -> None:
    # libjpeg's arithmetic decoder cannot resume between Pillow's 64 kB reads: such files failed as corrupt.
    import jpeglib  # writes arithmetic JPEGs (dev extra, which the suite installs)

    rng = np.random.default_rng(0)
    pixels = np.clip(np.asarray(gradient((900, 600)), dtype=np.float64) + rng.normal(0, 20, (600, 900, 3)), 0, 255)
    pixels = np.ascontiguousarray(pixels.astype(np.uint8))
    files = {}
    with tempfile.TemporaryDirectory() as folder, jpeglib.version("9e"):
        for name, flags in (("arithmetic", ["+ARITH_CODE"]), ("huffman", [])):
            jpeglib.from_spatial(pixels).write_spatial(f"{folder}/{name}.jpg", qt=90, flags=flags)
            files[name] = Path(f"{folder}/{name}.jpg").read_bytes()
    assert len(files["arithmetic"]) > 100_000 and _arithmetic(files["arithmetic"])
    assert not _arithmetic(files["huffman"])
    # The entropy coding is lossless: the same coefficients, coded either way, decode to the same pixels.
    arithmetic = imaging.decode_image(files["arithmetic"], target_size=target_size).image
    assert np.array_equal(
        np.asarray(arithmetic), np.asarray(imaging.decode_image(files["huffman"], target_size=target_size).image)
    )
    assert not _arithmetic(encoded(Image.fromarray(pixels), "JPEG"))


def _with_precision(data: bytes, bits: int) -> bytes:
    """``data`` (a JPEG) with its start-of-frame declaring ``bits`` per sample, as a 12- or 16-bit file does."""
    pos = next(p for m, p in imaging._jpeg_segments(data) if m in imaging._FRAMES)
    return data[: pos + 4] + bytes([bits]) + data[pos + 5 :]


@pytest.mark.parametrize(
    ("make", "bits"),
    [(lambda: encoded(gradient((64, 48)), "JPEG"), 12), (lambda: lossless_jpeg((16, 16)), 16)],
    ids=["12-bit-baseline", "16-bit-lossless"],
)
def test_a_jpeg_of_more_than_8_bits_is_unsupported_not_corrupt(make: Callable[[], bytes], bits: int) -> None:
    # Valid files (medical and raw workflows write them) that Pillow's 8-bit libjpeg cannot read: they were
    # answered 400 "the image header is corrupt", which tells the sender the file is broken.
    with pytest.raises(imaging.UnsupportedFormatError, match=f"{bits}-bit JPEG images are not supported") as info:
        imaging.decode_image(_with_precision(make(), bits))
    assert info.value.status == 415
    assert imaging.decode_image(_with_precision(make(), 8)).image.size == Image.open(io.BytesIO(make())).size


def test_formats_we_do_not_accept_are_refused_even_if_pillow_reads_them() -> None:
    img = gradient((16, 16))
    data = encoded(img, "ICO")
    with pytest.raises(imaging.UnsupportedFormatError):
        imaging.decode_image(data)


@pytest.mark.parametrize("resize", ["letterbox", "squash", "center_crop"])
@pytest.mark.parametrize("size", [(64, 48), (30, 90), (7, 7)])
def test_preprocess_shape_and_dtype(resize: str, size: tuple[int, int]) -> None:
    spec = InputSpec(size=32, resize=resize)
    tensor = imaging.preprocess(gradient(size), spec)
    assert tensor.shape == (3, 32, 32)
    assert tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]


def test_normalisation_uses_the_manifest_mean_and_std() -> None:
    spec = InputSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    tensor = imaging.preprocess(Image.new("RGB", (16, 16), (255, 0, 128)), spec)
    assert np.allclose(tensor[0], (1.0 - 0.5) / 0.25)
    assert np.allclose(tensor[1], (0.0 - 0.5) / 0.5)
    assert np.allclose(tensor[2], (128 / 255 - 0.5) / 1.0, atol=1e-6)


def test_center_crop_resamples_only_the_square_it_keeps() -> None:
    # A 12000x1 photo (within the decode limits) was scaled whole to 3,072,000x256 px first: 3 GB for 224x224.
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from PIL import Image\n"
        "from cataract_inference.imaging import resize_for_model\n"
        "from cataract_inference.manifest import InputSpec\n"
        "spec = InputSpec(size=224, resize='center_crop')\n"
        "out = resize_for_model(Image.new('RGB', (12000, 1), (200, 100, 50)), spec)\n"
        "print(out.size, out.getpixel((0, 0)), out.getpixel((223, 223)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]  # under a 1 GiB address space
    assert done.stdout.split() == ["(224,", "224)", "(200,", "100,", "50)", "(200,", "100,", "50)"]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_center_crop_is_the_centre_of_the_whole_photo_scaled(interpolation: str) -> None:
    # Resampling the kept box alone gives what scaling the whole photo and cropping gave, within rounding.
    spec = InputSpec(size=64, resize="center_crop", interpolation=interpolation)
    photo = gradient((300, 200)).convert("RGB")
    scaled_w, scaled_h = imaging.center_crop_scaled_size(*photo.size, spec)
    left, top = (scaled_w - 64) // 2, (scaled_h - 64) // 2
    whole = photo.resize((scaled_w, scaled_h), imaging._RESAMPLE[interpolation], reducing_gap=3.0)
    expected = np.asarray(whole.crop((left, top, left + 64, top + 64)), np.int16)
    got = np.asarray(imaging.resize_for_model(photo, spec), np.int16)
    assert np.abs(got - expected).max() <= 2


def test_center_crop_keeps_the_centre_and_drops_the_sides() -> None:
    spec = InputSpec(size=32, resize="center_crop", crop_fraction=0.875, mean=(0, 0, 0), std=(1, 1, 1))
    img = Image.new("RGB", (128, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 24, 64))  # a band at each far side, outside a centred crop
    img.paste((255, 255, 255), (104, 0, 128, 64))
    img.paste((120, 120, 120), (60, 28, 68, 36))  # a grey dot at the centre
    rgb = imaging.resize_for_model(img, spec)
    assert np.asarray(rgb).max() < 200, "a side band leaked into the crop"
    centre = np.asarray(rgb)[14:18, 14:18]
    assert centre.mean() > 60, "the centre is not in the middle of the crop"


def test_squash_maps_the_whole_photo_onto_the_square_without_shifting_it() -> None:
    spec = InputSpec(size=32, resize="squash")
    img = Image.new("RGB", (128, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 64, 64))  # left half white
    rgb = np.asarray(imaging.resize_for_model(img, spec))
    assert rgb.shape == (32, 32, 3)
    assert rgb[:, :15].min() == 255 and rgb[:, 17:].max() == 0  # the edge lands at the middle column


def test_letterbox_pads_with_the_colour_that_normalises_to_zero() -> None:
    spec = InputSpec(size=32, resize="letterbox")
    tensor = imaging.preprocess(Image.new("RGB", (64, 16), (255, 255, 255)), spec)
    assert np.abs(tensor[:, 0, :]).max() < 0.02, "padding rows normalise to about zero"
    assert tensor[:, 16, :].min() > 1.5, "the image band keeps its value"


def test_load_for_model_equals_decode_then_preprocess() -> None:
    data = encoded(gradient((300, 200)), "JPEG")
    decoded, tensor = imaging.load_for_model(data, SPEC)
    again = imaging.preprocess(imaging.decode_image(data, target_size=SPEC.size, fill=SPEC.fill_rgb).image, SPEC)
    assert np.array_equal(tensor, again)
    assert decoded.original_size == (300, 200)


def _tagged(img: Image.Image, fmt: str, profile: bytes) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, icc_profile=profile, **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def test_a_display_p3_photo_is_converted_to_the_srgb_colours_the_model_knows() -> None:
    from tests.support.icc import DISPLAY_P3_PRIMARIES, SRGB_PRIMARIES, columns_d50, rgb_profile

    colour = (200, 60, 50)
    # What the stored values mean: P3 primaries, gamma 2.2; in sRGB, by the matrices alone (no lcms).
    linear = (np.array(colour) / 255.0) ** 2.2
    expected = _srgb_encode(np.linalg.solve(columns_d50(SRGB_PRIMARIES), columns_d50(DISPLAY_P3_PRIMARIES) @ linear))
    profile = rgb_profile("Display P3 (test)", DISPLAY_P3_PRIMARIES, 2.2)
    for fmt in ("PNG", "JPEG"):
        data = _tagged(Image.new("RGB", (64, 48), colour), fmt, profile)
        for decoded in (imaging.decode_image(data), imaging.decode_image(data, target_size=16)):
            got = np.array(decoded.image.getpixel((10, 10)), dtype=float)
            assert np.abs(got - expected).max() <= 2.0, (fmt, got, expected)
    assert abs(expected[0] - colour[0]) > 15, "the test colour must tell a converted photo from a raw one"


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_linear_profile_is_honoured_whatever_the_mode(mode: str) -> None:
    from tests.support.icc import SRGB_PRIMARIES, rgb_profile

    data = _tagged(
        Image.new(mode, (40, 30), (128, 128, 128, 255)[: len(mode)]), "PNG", rgb_profile("linear", SRGB_PRIMARIES, 1.0)
    )
    assert imaging.decode_image(data).image.getpixel((5, 5)) == pytest.approx((188, 188, 188), abs=1)


@pytest.mark.parametrize(
    ("mode", "profile_kind"),
    [("RGB", "srgb"), ("RGB", "garbage"), ("L", "linear"), ("RGB", "lut"), ("RGB", "large")],
)
def test_profiles_that_need_no_conversion_or_cannot_be_used_leave_the_pixels_as_stored(
    mode: str, profile_kind: str
) -> None:
    from tests.support.icc import SRGB_PRIMARIES, rgb_profile

    profile = {
        "srgb": rgb_profile("sRGB IEC61966-2.1", SRGB_PRIMARIES, 1.0),  # already sRGB, by its name: not converted
        "garbage": b"not an ICC profile" * 8,  # ignored, as browsers ignore it
        "linear": rgb_profile("linear", SRGB_PRIMARIES, 1.0),  # an RGB profile on grey pixels: not applicable
        # Lookup-table profiles are not converted: lcms would prefer the table, whose cost a crafted one sets.
        "lut": rgb_profile("linear", SRGB_PRIMARIES, 1.0, extra_tags=((b"D2B0", b"mpet" + b"\0" * 20),)),
        "large": rgb_profile("linear", SRGB_PRIMARIES, 1.0, extra_tags=((b"zzzz", b"\0" * 70_000),)),
    }[profile_kind]
    img = Image.new(mode, (40, 30), 128 if mode == "L" else (128, 128, 128))
    assert imaging.decode_image(_tagged(img, "PNG", profile)).image.getpixel((5, 5)) == (128, 128, 128)


def test_only_small_matrix_profiles_are_converted() -> None:
    # A lookup-table tag (A2B*, B2A*, D2B*, B2D*) is what lcms would build from, at a cost the file sets.
    from tests.support.icc import SRGB_PRIMARIES, rgb_profile

    assert imaging._matrix_profile(rgb_profile("matrix", SRGB_PRIMARIES, 2.2))
    for tag in (b"A2B0", b"B2A0", b"D2B0", b"B2D1"):
        assert not imaging._matrix_profile(rgb_profile("lut", SRGB_PRIMARIES, 2.2, extra_tags=((tag, b"\0" * 32),)))
    large = rgb_profile("large", SRGB_PRIMARIES, 2.2, extra_tags=((b"zzzz", b"\0" * imaging.MAX_PROFILE_BYTES),))
    assert not imaging._matrix_profile(large)
    assert not imaging._matrix_profile(b"\0" * 200)  # no matrix tags at all


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_preprocess_resamples_as_the_manifest_says(interpolation: str) -> None:
    # A model exported with bicubic must be fed bicubic tensors; every mode once resampled the same would pass.
    from cataract_inference.manifest import InputSpec

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8))
    spec = InputSpec(size=32, resize="squash", interpolation=interpolation)
    tensors = {
        name: imaging.normalise(photo.resize((32, 32), resample, reducing_gap=3.0), spec)
        for name, resample in (
            ("bilinear", Image.Resampling.BILINEAR),
            ("bicubic", Image.Resampling.BICUBIC),
            ("lanczos", Image.Resampling.LANCZOS),
        )
    }
    served = imaging.preprocess(photo, spec)
    assert [name for name, t in tensors.items() if np.array_equal(served, t)] == [interpolation]


def test_a_baseline_jpeg_of_many_scans_is_refused_like_a_progressive_one() -> None:
    # Only progressive files were counted: 270 kB of these scans at 40 MP held one request for 98 s.
    bomb = baseline_jpeg_with_scans(40)  # 120 scans
    assert not Image.open(io.BytesIO(bomb)).info.get("progressive")
    with pytest.raises(imaging.ImageTooLargeError, match="120 scans"):
        imaging.decode_image(bomb)
    assert imaging.decode_image(baseline_jpeg_with_scans(1)).image.size == (64, 48)  # one scan per component


def test_a_small_tiff_in_a_huge_tile_is_held_to_the_limits_as_its_tiles_decode() -> None:
    # The decoder inflates a whole tile: a 16x16 TIFF in one 16384 px tile took 800 MB past the 40 MP limit.
    limits = imaging.DecodeLimits(max_side=1000, max_pixels=40_000)
    for big in (False, True):
        with pytest.raises(imaging.ImageTooLargeError, match="16x16 in 256x256 tiles, each decoded whole"):
            imaging.decode_image(tiled_tiff(16, 256, big), limits)
    assert imaging.decode_image(tiled_tiff(16, 256)).image.size == (16, 16)  # within the default limits
    # Ordinary tiles, at the limits: the image's size rounded up to whole tiles (1024) is not what is held.
    at_limits = imaging.DecodeLimits(max_side=1000, max_pixels=1_000_000)
    assert imaging.decode_image(tiled_tiff(1000, 256), at_limits).image.size == (1000, 1000)


@pytest.mark.parametrize("size", [(512, 512), (1024, 768)])
def test_a_lossless_jpeg_is_decoded_without_a_draft(size: tuple[int, int]) -> None:
    # libjpeg cannot scale a lossless JPEG: a draft of one at or above 448 px failed as corrupt.
    decoded = imaging.decode_image(lossless_jpeg(size), target_size=224)
    assert decoded.image.size == size and not decoded.reduced
    assert np.asarray(decoded.image).std() == 0


def test_orientation_is_applied_without_rewriting_the_exif_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # exif_transpose re-serialised the whole block after turning the photo, in Python: a 4 MB block of
    # rationals took 7 s. Nothing reads the rewritten block, so it must not be written at all.
    monkeypatch.setattr(Image.Exif, "tobytes", lambda *a, **k: pytest.fail("the EXIF block was rewritten"))
    photo = png_with_exif(gradient((64, 48)), exif_with_orientation(6, rationals=1000))
    upright = imaging.decode_image(photo).image
    assert upright.size == (48, 64)
    expected = gradient((64, 48)).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(upright), np.asarray(expected))


@pytest.mark.parametrize(
    ("resize", "size", "photo", "shortest"),
    [
        # center_crop scales the shorter side to size / crop_fraction (256 px) first: a ⅛ or ¼ draft must not
        # take it below that, or the resize enlarges what a full decode had (640x480 drafted to 320x240).
        ("center_crop", 224, (640, 480), 256),
        ("center_crop", 224, (2592, 1944), 256),
        ("letterbox", 224, (3000, 2000), 224),
        ("squash", 224, (640, 480), 224),
    ],
)
def test_a_jpeg_draft_keeps_what_the_models_resize_needs(
    resize: str, size: int, photo: tuple[int, int], shortest: int
) -> None:
    spec = InputSpec(size=size, resize=resize)
    data = encoded(gradient(photo), "JPEG", quality=90)
    decoded, _ = imaging.load_for_model(data, spec)
    assert shortest <= min(decoded.image.size) < 2 * shortest  # drafted, but not below the resize's need
    assert imaging.decode_side(spec) == shortest


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {}), ("PNG", {"default_image": True}), ("TIFF", {})],
    ids=["gif", "webp", "apng", "apng-hidden-default", "tiff-pages"],
)
def test_an_animation_or_a_multi_page_file_is_screened_on_its_first_frame(fmt: str, options: dict[str, bool]) -> None:
    # As the README and the API's schema say: only the first frame or page, whatever follows it.
    first, second = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))
    buffer = io.BytesIO()
    first.save(buffer, fmt, save_all=True, append_images=[second], **options)
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) >= 2 - options.get("default_image", False)
    decoded = imaging.decode_image(buffer.getvalue()).image
    assert decoded.getpixel((5, 5)) == (0, 0, 0)


def test_a_progressive_jpeg_of_exactly_the_scan_limit_decodes_and_one_scan_more_is_refused() -> None:
    # The README: over 100 scans is image_too_large. Pillow writes 10; the last one is repeated to reach the limit.
    limit = imaging.DecodeLimits().max_scans
    assert limit == 100
    at_limit = progressive_jpeg_with_scans(limit - 10)
    assert at_limit.count(b"\xff\xda") == limit
    assert imaging.decode_image(at_limit).image.size == (64, 48)
    over = progressive_jpeg_with_scans(limit - 9)
    with pytest.raises(imaging.ImageTooLargeError, match=f"the JPEG has {limit + 1} scans") as info:
        imaging.decode_image(over)
    assert info.value.status == 413


def _segments_to_first_scan(data: bytes) -> int:
    """The marker segments of a JPEG after its SOI, up to and including its first SOS, walked by their lengths."""
    pos, count = 2, 0
    while data[pos] == 0xFF:
        count += 1
        if data[pos + 1] == 0xDA:
            return count
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise AssertionError("no scan")


def test_a_jpeg_of_exactly_the_segment_limit_decodes_and_one_segment_more_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = imaging.DecodeLimits().max_jpeg_segments
    assert limit == 1_000
    own = _segments_to_first_scan(jpeg_with_empty_segments(0))  # Pillow's APP0, tables, frame and scan
    at_limit = jpeg_with_empty_segments(limit - own)
    assert _segments_to_first_scan(at_limit) == limit
    assert imaging.decode_image(at_limit).image.size == (64, 48)
    over = jpeg_with_empty_segments(limit - own + 1)
    with monkeypatch.context() as patched:
        patched.setattr(imaging.Image, "open", lambda *a, **k: pytest.fail("Pillow was handed the segment bomb"))
        with pytest.raises(imaging.ImageTooLargeError, match="over 1000 marker segments") as info:
            imaging.decode_image(over)
    assert info.value.status == 413


def test_the_segment_walk_stops_one_segment_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limit bounds the work, not only the answer: a bomb's headers are read no further than one past it.
    walked = 0
    walk = imaging._jpeg_segments

    def counted(data: bytes) -> Iterator[tuple[int, int]]:
        nonlocal walked
        for segment in walk(data):
            walked += 1
            yield segment

    monkeypatch.setattr(imaging, "_jpeg_segments", counted)
    with pytest.raises(imaging.ImageTooLargeError, match="marker segments"):
        imaging.decode_image(jpeg_with_empty_segments(5_000), imaging.DecodeLimits(max_jpeg_segments=50))
    assert walked == 51


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_a_tiff_of_exactly_the_block_limit_decodes_and_one_block_more_is_refused(
    monkeypatch: pytest.MonkeyPatch, big: bool
) -> None:
    limit = imaging.DecodeLimits().max_tiff_blocks
    assert limit == 65_536 == (1024 // 4) ** 2
    assert imaging.decode_image(tiled_tiff(1024, 4, big)).image.size == (1024, 1024)  # 65,536 tiles
    with monkeypatch.context() as patched:
        patched.setattr(imaging.Image, "open", lambda *a, **k: pytest.fail("Pillow was handed the strip bomb"))
        with pytest.raises(imaging.ImageTooLargeError, match="65537 strips or tiles") as info:
            imaging.decode_image(striped_tiff(64, limit + 1))
    assert info.value.status == 413
    # And at a configured limit, strips alike: 64 one-row strips pass a limit of 64, 65 do not.
    limits = imaging.DecodeLimits(max_tiff_blocks=64)
    assert imaging.decode_image(striped_tiff(64, 64), limits).image.size == (64, 64)
    with pytest.raises(imaging.ImageTooLargeError, match="65 strips or tiles"):
        imaging.decode_image(striped_tiff(65, 65), limits)


def test_one_pixel_over_the_pixel_limit_is_refused() -> None:
    photo = encoded(gradient((200, 100)), "PNG")
    assert imaging.decode_image(photo, imaging.DecodeLimits(max_pixels=20_000, max_side=200)).image.size == (200, 100)
    with pytest.raises(imaging.ImageTooLargeError, match="the image is 200x100") as info:
        imaging.decode_image(photo, imaging.DecodeLimits(max_pixels=19_999, max_side=200))
    assert info.value.status == 413


def _with_tile(width: int, length: int) -> bytes:
    """A 16x16 grey TIFF in one tile declared ``width`` x ``length`` px (tiled_tiff's tiles are square)."""
    data = tiled_tiff(16, 16)
    for tag, side in ((322, width), (323, length)):
        entry = struct.pack("<HHII", tag, 4, 1, 16)
        assert data.count(entry) == 1
        data = data.replace(entry, struct.pack("<HHII", tag, 4, 1, side))
    return data


@pytest.mark.parametrize(("width", "length"), [(16, 16_384), (16_384, 16)], ids=["tall", "wide"])
def test_a_tiff_of_narrow_tiles_longer_than_the_side_limit_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, width: int, length: int
) -> None:
    # 262,144 pixels a tile is far under the pixel limit: only the tile's long side, 16384 px, is over the limit.
    Image.init()  # first: importing Pillow's plugins loads a prototype image (Palm's), which is no decode of ours
    monkeypatch.setattr(imaging.Image.Image, "load", lambda *a, **k: pytest.fail("pixels were decoded"))
    with pytest.raises(imaging.ImageTooLargeError, match=f"16x16 in {width}x{length} tiles") as info:
        imaging.decode_image(_with_tile(width, length))
    assert info.value.status == 413
