"""Hostile images at the decode limits: the time and peak memory of one request each, in a fresh process.

`python -m benchmarks.hostile MODEL_DIR FILE MEDIA_TYPE` serves FILE once through the handler (after one small
warm-up request) and prints one JSON line: status, error code, milliseconds, RSS before the request and the
process's peak. `write_images(folder)` writes the set: 40 MP (6324×6324) images in each pixel layout the decoder
converts, with a plain RGB PNG as the reference, plus the shapes of two CPU bombs.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 6324  # 6324² ≈ 40 MP, the default MAX_IMAGE_PIXELS
REFERENCE = "RGB PNG (the reference)"


def _encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def write_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Write the hostile set into ``folder``: name -> (file, media type)."""
    from tests.support.images import bmp_rle8, progressive_jpeg_with_scans

    size = (SIDE, SIDE)
    makers = {
        REFERENCE: (lambda: _encoded(Image.new("RGB", size), "PNG", compress_level=9), "image/png"),
        "RGBA PNG": (lambda: _encoded(Image.new("RGBA", size), "PNG", compress_level=9), "image/png"),
        "LA PNG": (lambda: _encoded(Image.new("LA", size), "PNG", compress_level=9), "image/png"),
        "16-bit grey PNG": (lambda: _encoded(Image.new("I;16", size), "PNG", compress_level=9), "image/png"),
        "float grey TIFF": (
            lambda: _encoded(Image.new("F", size), "TIFF", compression="tiff_adobe_deflate"),
            "image/tiff",
        ),
        "lossless RGBA WebP": (lambda: _encoded(Image.new("RGBA", size), "WEBP", lossless=True), "image/webp"),
        # Not hostile at all: an ordinary lossy photo, and the worst accepted peak (the WebP animation decoder).
        "lossy RGB WebP": (lambda: _encoded(Image.new("RGB", size, (120, 90, 80)), "WEBP", quality=80), "image/webp"),
        "progressive JPEG of 3,000+ scans": (lambda: progressive_jpeg_with_scans(3000), "image/jpeg"),
        "run-length-encoded BMP": (bmp_rle8, "image/bmp"),
    }
    written: dict[str, tuple[Path, str]] = {}
    for i, (name, (make, media)) in enumerate(makers.items()):
        path = folder / f"hostile-{i}.bin"
        path.write_bytes(make())
        written[name] = (path, media)
    return written


def main(model_dir: str, image_path: str, media_type: str) -> None:
    """Serve one warm-up request, then the image once; print the JSON line."""
    from benchmarks.latency import bench_context, load_handler
    from benchmarks.memory import peak_rss_bytes
    from cataract_inference import events

    handler = load_handler(Path(model_dir))
    small = _encoded(Image.fromarray(np.full((200, 300, 3), 120, np.uint8)), "PNG")
    handler.lambda_handler(events.predict_event(small), bench_context())
    data = Path(image_path).read_bytes()
    event = events.predict_event(data, raw=True, media_type=media_type)
    before = peak_rss_bytes()
    started = time.perf_counter()
    response = handler.lambda_handler(event, bench_context())
    elapsed = (time.perf_counter() - started) * 1000.0
    body = json.loads(response["body"])
    mb = 2**20  # MiB: what Lambda's MemorySize ("MB") counts in
    print(
        json.dumps(
            {
                "bytes": len(data),
                "status": response["statusCode"],
                "code": (body.get("error") or {}).get("code", body.get("label")),
                "ms": round(elapsed, 1),
                "peak_before_mb": round(before / mb, 1),
                "peak_mb": round(peak_rss_bytes() / mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
