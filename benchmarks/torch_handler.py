"""A PyTorch-based Lambda handler, for the cold-start comparison: imports torch + torchvision and builds the model.

Run by the same runtime client as the real function (``python -m awslambdaric
benchmarks.torch_handler.lambda_handler``). BENCH_TORCH_RUN names a training run whose ``config.json``
gives the backbone and input size and whose ``model.pt`` it loads; without one it builds
BENCH_TORCH_BACKBONE (default mobilenet_v2) at BENCH_TORCH_SIZE px (default 224) with random weights.
Mean and std are the backbone's, from the training code's table.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision  # noqa: F401 - a PyTorch handler imports it for its model and transforms
from PIL import Image

from cataract_training.backbones import BACKBONES, CataractNet

torch.set_num_threads(1)
_RUN = os.environ.get("BENCH_TORCH_RUN")
if _RUN:
    # The run's own recipe: its checkpoint only loads into the backbone it was trained as.
    _CONFIG = json.loads((Path(_RUN) / "config.json").read_text(encoding="utf-8"))
    _BACKBONE, _SIZE = str(_CONFIG["backbone"]), int(_CONFIG["size"])
else:
    _BACKBONE = os.environ.get("BENCH_TORCH_BACKBONE") or "mobilenet_v2"
    _SIZE = int(os.environ.get("BENCH_TORCH_SIZE") or 224)
_NET = CataractNet(_BACKBONE, n_classes=2, pretrained=False)
if _RUN and (Path(_RUN) / "model.pt").is_file():
    _NET.load_state_dict(torch.load(Path(_RUN) / "model.pt", map_location="cpu", weights_only=True))
_NET.eval()
_MEAN = torch.tensor(BACKBONES[_BACKBONE].mean).view(3, 1, 1)
_STD = torch.tensor(BACKBONES[_BACKBONE].std).view(3, 1, 1)


@torch.inference_mode()
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Decode the JSON body's base64 image, resize, run the network, return probabilities."""
    payload = json.loads(event["body"])
    img = Image.open(io.BytesIO(base64.b64decode(payload["image"]))).convert("RGB").resize((_SIZE, _SIZE))
    x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) - _MEAN) / _STD
    p = torch.softmax(_NET(x[None])[0], -1)
    return {"statusCode": 200, "body": json.dumps({"cataract": float(p[0]), "normal": float(p[1])})}
