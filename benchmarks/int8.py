"""int8 against fp32: latency in one process, and accuracy, sensitivity and head drift on the run's validation split.

Both variants come from the same ``cataract-train export`` of a run (``runs/<run>/export/{fp32,int8}``), each
with its own manifest (temperature and threshold), and run through serving's classifier and session options.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import interleaved


def sessions(folders: dict[str, Path], threads: int = 1) -> dict[str, Any]:
    """An ``InferenceSession`` per variant, all with serving's ``session_options`` (ENABLE_ALL, no spinning)."""
    import onnxruntime as ort

    from cataract_inference.classifier import session_options

    return {
        name: ort.InferenceSession(
            str(folder / "model.onnx"), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        for name, folder in folders.items()
    }


def latency(fp32_dir: Path, int8_dir: Path, tensor: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Bare ``session.run`` of both variants on one preprocessed photo, interleaved, one intra-op thread."""
    s = sessions({"fp32": fp32_dir, "int8": int8_dir})
    return interleaved(
        {f"{k} session.run": functools.partial(v.run, None, {"input": tensor}) for k, v in s.items()}, repeats
    )


def validation(folders: dict[str, Path], run: Path, data_root: Path) -> dict[str, dict[str, Any]]:
    """Per variant, on the validation split: accuracy and sensitivity at its manifest's threshold; raw outputs."""
    from cataract_inference.classifier import load_classifier
    from cataract_inference.imaging import load_for_model

    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    keys = [k for k in split["val"] if (data_root / k).is_file()]
    truth = np.array([Path(k).parent.name for k in keys])
    out: dict[str, dict[str, Any]] = {}
    for name, folder in folders.items():
        clf = load_classifier(folder, intra_op_threads=2)
        labels, raw = [], []
        for key in keys:
            outputs = clf.run(load_for_model((data_root / key).read_bytes(), clf.manifest.input, clf.limits)[1][None])
            labels.append(clf.decide(clf.calibrated(outputs["logits"])[0])[0])
            raw.append(outputs)
        pred = np.array(labels)
        pos = truth == clf.manifest.positive_class
        out[name] = {
            "n": len(keys),
            "accuracy": 100.0 * float((pred == truth).mean()),
            "sensitivity": 100.0 * float((pred[pos] == truth[pos]).mean()),
            "positives": int(pos.sum()),
            "outputs": {k: np.concatenate([r[k] for r in raw]) for k in raw[0]},
        }
    return out


def drift(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """How far int8's gate and explanation outputs move from fp32's: relative distance error, CAM correlation."""
    out: dict[str, float] = {}
    for name in ("ood_distance", "mid_distance"):
        if name in reference and name in other:
            rel = np.abs(other[name] - reference[name]) / np.maximum(np.abs(reference[name]), 1e-9)
            out[f"{name} median rel."] = float(np.median(rel))
            out[f"{name} max rel."] = float(rel.max())
    if "cam" in reference:
        a = reference["cam"].reshape(len(reference["cam"]), -1)
        b = other["cam"].reshape(len(a), -1)
        out["cam min correlation"] = float(min(np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)))
    out["logits max abs"] = float(np.abs(reference["logits"] - other["logits"]).max())
    return out


def recipe(run: Path) -> str:
    """The int8 recipe as the export report recorded it, in one line."""
    path = run / "export_report.json"
    if not path.is_file():
        return "recipe not recorded"
    q = json.loads(path.read_text(encoding="utf-8")).get("variants", {}).get("int8", {}).get("quantization", {})
    if not q:
        return "recipe not recorded"
    keys = ("format", "weights", "activations", "op_types", "method", "calibration_photos", "float_leading_convs")
    return ", ".join(f"{k}={q[k]}" for k in keys if k in q)
