"""Regenerate the sample events (`make events`). Their images are drawn eyes, never patient photos.

A drawing is not a photo: what the model says about these is a smoke test of the plumbing, not a
clinical claim. Drawn "normal" eyes are ambiguous to the model, and more so at a threshold that favours
sensitivity: 364 of seeds 30-399 read as cataract at the shipped 0.209. So the normal sample's seed is
the one it reads as most normal (P(cataract) 0.159); the tests hold both labels.

To try your own photo, write its event outside the repository (it is health data):
`cataract-screen make-event photo.jpg -o /tmp/my-eye.json`.
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode

HERE = Path(__file__).resolve().parent
CATARACT_SEED, NORMAL_SEED = 7, 234
# The deploy check's probe is the cataract sample's drawing: the bundled gate accepts it as an eye.
PROBE = HERE.parent / "functions" / "deploy_check" / "probe_eye.jpg"


def probe_image() -> bytes:
    """The drawn eye the cataract samples carry, and the deploy check sends."""
    return encode(draw_eye("cataract", seed=CATARACT_SEED))


def _id(name: str) -> str:
    # Fixed per file, so regenerating rewrites nothing that did not change.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cataract-screening/events/{name}"))


def samples() -> dict[str, dict[str, Any]]:
    """Every sample event by file name."""
    cataract = probe_image()
    normal = encode(draw_eye("normal", seed=NORMAL_SEED))
    invalid = json.dumps({"image": "this is not base64!"})
    builders = {
        "rest-predict-cataract.json": lambda rid: events.predict_event(cataract, request_id=rid),
        "rest-predict-normal.json": lambda rid: events.predict_event(normal, request_id=rid),
        "rest-predict-explain.json": lambda rid: events.predict_event(cataract, explain=True, request_id=rid),
        "rest-predict-raw-jpeg.json": lambda rid: events.predict_event(normal, raw=True, request_id=rid),
        "rest-predict-invalid.json": lambda rid: events.rest_event(
            "/predict", "POST", body=invalid, content_type="application/json", request_id=rid
        ),
        "rest-health.json": lambda rid: events.rest_event("/health", request_id=rid),
        "rest-model.json": lambda rid: events.rest_event("/model", request_id=rid),
        "http-predict-cataract.json": lambda rid: events.predict_event(cataract, http_api=True, request_id=rid),
    }
    return {name: build(_id(name)) for name, build in builders.items()}


def main(argv: list[str] | None = None) -> None:
    """Write every sample event into ``--out`` (this folder by default)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: events/)")
    parser.add_argument("--probe", type=Path, default=PROBE, help=f"the deploy check's probe (default: {PROBE.name})")
    args = parser.parse_args(argv)
    for name, event in samples().items():
        (args.out / name).write_text(json.dumps(event, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out / name}")
    args.probe.write_bytes(probe_image())
    print(f"wrote {args.probe}")


if __name__ == "__main__":
    main()
