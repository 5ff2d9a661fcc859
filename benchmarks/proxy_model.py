"""A stand-in model for when the trained one has not landed yet: the training architecture, exported as serving expects.

It has the real graph interface (logits, embedding, ood_distance, cam) and the real compute, so
timings are representative; its predictions are not (random or unfinished weights, a dummy OOD).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def build_proxy_model(directory: Path, run: Path | None = None, backbone: str = "mobilenet_v2") -> Path:
    """Export the training model (with ``run``'s weights if given) to ``directory``/model.onnx + model.json."""
    import torch

    from cataract_inference.manifest import Manifest, write_manifest
    from cataract_inference.model_source import sha256_of
    from cataract_training.backbones import BACKBONES, CataractNet
    from cataract_training.export import FeatureGaussian, OodModel, ServingGraph, export_onnx

    size = 224
    if run is not None:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        backbone, size = config["backbone"], int(config["size"])
    net = CataractNet(backbone, n_classes=2, pretrained=False)
    if run is not None:
        net.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    info = BACKBONES[backbone]
    weights = f"those of run {run.name}" if run is not None else "random (a benchmark proxy)"
    dim = info.feat_dim
    ood = OodModel(np.zeros(dim), np.eye(dim)[:, :8].copy(), np.ones(8), 1.0)
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(ServingGraph(net, ood, FeatureGaussian.placeholder(net.mid_dim)), size, directory / "model.onnx")
    manifest = Manifest.model_validate(
        {
            "name": f"proxy-{backbone}",
            "version": "0.0.0-proxy",
            "created": datetime.now(UTC).isoformat(),
            "sha256": sha256_of(directory / "model.onnx"),
            "classes": ["cataract", "normal"],
            "input": {"size": size, "resize": "letterbox", "mean": list(info.mean), "std": list(info.std)},
            "outputs": {"logits": "logits", "embedding": "embedding", "ood_distance": "ood_distance", "cam": "cam"},
            # A gate that passes drawn eyes: the benchmark measures the full path, not refusals.
            "gate": {"min_side": 16, "min_brightness": 0.0, "max_brightness": 1.0, "min_contrast": 0.0},
            # The run and backbone, so the PyTorch comparisons build this network and no other (common.torch_target).
            "metrics": {"note": "a benchmark proxy; no metrics"}
            | ({"training_run": {"run": run.name}} if run is not None else {}),
            "backbone": {"architecture": info.architecture, "weights": weights, "licence": info.licence},
        }
    )
    write_manifest(manifest, directory / "model.json")
    return directory
