"""Regenerate the sample events (`make events`). Their images are drawn eyes, never patient photos.

A drawing is not a photo: what the model says about these is a smoke test of the plumbing, not a
clinical claim. To try your own photo: `cataract-screen make-event photo.jpg -o events/mine.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from cataract_inference import events
from cataract_inference.drawing import draw_eye, encode

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Write every sample event into this folder."""
    cataract = encode(draw_eye("cataract", seed=7))
    normal = encode(draw_eye("normal", seed=11))
    samples = {
        "rest-predict-cataract.json": events.predict_event(cataract),
        "rest-predict-normal.json": events.predict_event(normal),
        "rest-predict-explain.json": events.predict_event(cataract, explain=True),
        "rest-predict-raw-jpeg.json": events.predict_event(normal, raw=True, media_type="image/jpeg"),
        "rest-predict-invalid.json": events.rest_event(
            "/predict", "POST", body=json.dumps({"image": "this is not base64!"}), content_type="application/json"
        ),
        "rest-health.json": events.rest_event("/health"),
        "rest-model.json": events.rest_event("/model"),
        "http-predict-cataract.json": events.predict_event(cataract, http_api=True),
    }
    for name, event in samples.items():
        (HERE / name).write_text(json.dumps(event, indent=2) + "\n", encoding="utf-8")
        print(f"wrote events/{name}")


if __name__ == "__main__":
    main()
