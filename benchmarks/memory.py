"""Resident memory over 1,000 warm requests through the handler, in a fresh process.

`python -m benchmarks.memory MODEL_DIR SMALL.jpg PHONE.jpg` prints one JSON line: RSS after init, after warm-up (100
requests), at the end, and the peak (ru_maxrss).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import psutil

REQUESTS = 1_000
WARM_UP = 100


def peak_rss_bytes() -> int:
    """Peak resident bytes of this process image (VmHWM). Not ru_maxrss: Linux carries that across exec,
    so it would report the parent's peak (which made the 3000×2000 photo)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(model_dir: str, small_path: str, phone_path: str) -> None:
    """Load the handler, serve a mix of small, phone and bad requests, report memory.

    The photos are read from files the parent wrote: making a 3000×2000 photo here would put
    the generator's arrays (~1 GB) into this process's peak.
    """
    from benchmarks.latency import bench_context, load_handler
    from cataract_inference import events

    proc = psutil.Process()
    handler = load_handler(Path(model_dir))
    rss_init = proc.memory_info().rss
    small, phone = Path(small_path).read_bytes(), Path(phone_path).read_bytes()
    mix = [
        events.predict_event(small),
        events.predict_event(small, http_api=True),
        events.predict_event(phone),
        events.predict_event(small, explain=True),
        events.rest_event("/predict", "POST", body="{", content_type="application/json"),
        events.predict_event(b"not an image"),
    ]
    statuses: dict[int, int] = {}
    rss_warm = rss_init
    for i in range(REQUESTS):
        status = handler.lambda_handler(mix[i % len(mix)], bench_context())["statusCode"]
        statuses[status] = statuses.get(status, 0) + 1
        if i + 1 == WARM_UP:
            rss_warm = proc.memory_info().rss
    rss_end = proc.memory_info().rss
    peak = peak_rss_bytes()
    mb = 1e6  # the target's MB (the peak was 4.6% lower in MiB, which the table once called MB)
    print(
        json.dumps(
            {
                "requests": REQUESTS,
                "peak_bytes": peak,
                "growth_after_warm_up_bytes": rss_end - rss_warm,
                "rss_init_mb": round(rss_init / mb, 1),
                "rss_warm_mb": round(rss_warm / mb, 1),
                "rss_end_mb": round(rss_end / mb, 1),
                "peak_mb": round(peak / mb, 1),
                "growth_after_warm_up_mb": round((rss_end - rss_warm) / mb, 1),
                "statuses": statuses,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
