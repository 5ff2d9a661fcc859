"""int8 against fp32: latency in one process, and accuracy, sensitivity and head drift on the run's validation split.

Both variants come from the same ``cataract-train export`` of a run (``runs/<run>/export/{fp32,int8}``), each
with its own manifest (temperature and threshold), and run through serving's classifier and session options.
Without that run folder (a fresh clone), ``rebuild`` quantizes the measured fp32 model itself by training's recipe.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import interleaved

RECIPE_KEYS = ("format", "weights", "activations", "op_types", "method", "calibration_photos", "float_leading_convs")


@dataclass(frozen=True)
class Pair:
    """An fp32 and an int8 model folder (``model.onnx`` and ``model.json`` each) and where they came from."""

    fp32: Path
    int8: Path
    origin: str  # one sentence for the report: whose export, or how it was rebuilt, and the recipe
    split: Path | None  # the run's split.json (names of its train and validation photos), when it is here


class CannotRebuild(Exception):
    """No int8 variant can be made here; the message says why."""


def from_export(fp32_dir: Path, int8_dir: Path) -> Pair:
    """The pair a run's ``cataract-train export`` wrote (``runs/<run>/export/{fp32,int8}``)."""
    run = fp32_dir.parents[1]
    where = fp32_dir.parent.relative_to(fp32_dir.parents[2])
    split = run / "split.json"
    return Pair(fp32_dir, int8_dir, f"From `{where}` (training's export step): {recipe(run)}.", split)


def rebuild(model_dir: Path, data_root: Path, work: Path) -> Pair:
    """Quantize the fp32 model in ``model_dir`` as ``cataract-train export`` does, into ``work/int8``.

    For a clone without the model's run folder: the same recipe on the same calibration photos (the training
    photos of the run's split, committed under ``training/splits/``, preprocessed as serving does today), and the
    gate heads refitted on the quantized features. The int8 manifest takes the temperature and threshold the export
    fitted for its int8 variant (``metrics.variants.int8``), else the fp32 ones; its gate is the default one (its
    distances are new). Whether the result is the export's own int8 file is checked against what the export
    recorded (the refitted gate heads' medians) and said in ``Pair.origin``. Raises ``CannotRebuild`` when the model
    is not fp32, its split or photos are not here, or the rebuild itself fails (a benchmark section, not the run).
    """
    from cataract_inference.manifest import GateThresholds, load_manifest, write_manifest
    from cataract_inference.model_source import sha256_of

    manifest = load_manifest(model_dir / "model.json")
    if manifest.precision != "fp32":
        raise CannotRebuild(f"the measured model is already {manifest.precision}")
    try:  # training's modules import torch: a serving-only install cannot rebuild
        from cataract_training import data, export, gate, quantize
    except ImportError as exc:
        raise CannotRebuild(f"rebuilding int8 needs the training install ({exc})") from exc
    split_path = gate.find_split(model_dir, None)
    if split_path is None:
        raise CannotRebuild("no split of the model's training run is here (runs/<run>/split.json or training/splits/)")
    train = json.loads(split_path.read_text(encoding="utf-8"))["train"]
    missing = [k for k in train if not (data_root / k).is_file()]
    if missing:
        raise CannotRebuild(
            f"{len(missing)} of the {len(train)} training photos of {split_path} are not under {data_root} "
            f"(e.g. {missing[0]}), so the calibration could not be the export's"
        )
    out = work / "int8"
    out.mkdir(parents=True, exist_ok=True)
    try:
        tensors = np.stack([data.serving_tensor(data_root / k, manifest.input) for k in train]).astype(np.float32)
        report = quantize.quantize_int8(model_dir / "model.onnx", out / "model.onnx", tensors)
        refit = export.refit_gate_heads(out / "model.onnx", tensors)
    except Exception as exc:  # an unreadable photo, a graph the recipe cannot take: int8 is unmeasured, not the run
        raise CannotRebuild(f"the rebuild failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    fitted = (manifest.metrics.get("variants") or {}).get("int8") or {}
    calibration = {k: fitted.get(k) for k in ("temperature", "threshold")}
    if not all(isinstance(v, int | float) for v in calibration.values()):
        calibration = {}  # both or neither: one fit's temperature with another's threshold means nothing
    update = {"sha256": sha256_of(out / "model.onnx"), "precision": "int8", "gate": GateThresholds()}
    write_manifest(manifest.model_copy(update=update | calibration), out / "model.json")
    whose = "the export's for int8" if calibration else "fp32's"
    origin = (
        f"Rebuilt here (no export of the model's run is here): the measured fp32 file quantized by training's recipe "
        f"on the {len(train)} training photos of run `{gate.run_name(split_path)}`'s split, temperature and threshold "
        f"{whose}: {recipe_text(report)}. {_faithfulness(refit, fitted.get('gate_heads_refit'))}"
    )
    return Pair(model_dir, out, origin, split_path)


def _faithfulness(refit: dict[str, Any], recorded: Any) -> str:
    """Whether a rebuild is the export's int8 file, judged by the refitted gate heads' medians on the calibration
    photos: they follow every quantized weight and activation range, so equal medians mean the same calibration."""
    if not isinstance(recorded, dict):
        return "The export recorded no gate refit to compare with, so whether this is its int8 file is unknown."
    if refit == recorded:
        return "Its refitted gate heads match the export's record: the same calibration as the export's int8 file."
    ours = ", ".join(f"{k} {v['before']}→{v['after']}" for k, v in refit.items())
    theirs = ", ".join(f"{k} {v['before']}→{v['after']}" for k, v in recorded.items() if isinstance(v, dict))
    return (
        f"Not the export's int8 file: its gate refit medians ({ours}) differ from the export's ({theirs}), so its "
        "calibration saw other tensors (the photos, or serving's preprocessing of them, changed since the export)."
    )


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


def validation(
    folders: dict[str, Path],
    split_path: Path,
    data_root: Path,
    transform: Callable[[bytes], bytes] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per variant, on the validation split (each photo through ``transform`` first, when given): accuracy and
    sensitivity at its manifest's threshold, each photo's label and positive probability, and the raw outputs."""
    from cataract_inference.classifier import load_classifier
    from cataract_inference.imaging import load_for_model

    split = json.loads(split_path.read_text(encoding="utf-8"))
    keys = [k for k in split["val"] if (data_root / k).is_file()]
    photos = [(data_root / k).read_bytes() for k in keys]
    if transform is not None:
        photos = [transform(photo) for photo in photos]
    truth = np.array([Path(k).parent.name for k in keys])
    out: dict[str, dict[str, Any]] = {}
    for name, folder in folders.items():
        clf = load_classifier(folder, intra_op_threads=2)
        labels, probabilities, raw = [], [], []
        for photo in photos:
            outputs = clf.run(load_for_model(photo, clf.manifest.input, clf.limits)[1][None])
            calibrated = clf.calibrated(outputs["logits"])[0]
            labels.append(clf.decide(calibrated)[0])
            probabilities.append(float(calibrated[clf.manifest.positive_index]))
            raw.append(outputs)
        pred = np.array(labels)
        pos = truth == clf.manifest.positive_class
        out[name] = {
            "n": len(keys),
            "accuracy": 100.0 * float((pred == truth).mean()),
            "sensitivity": 100.0 * float((pred[pos] == truth[pos]).mean()),
            "positives": int(pos.sum()),
            "labels": pred,
            "probabilities": np.array(probabilities),
            "outputs": {k: np.concatenate([r[k] for r in raw]) for k in raw[0]},
        }
    return out


def shifts() -> dict[str, Callable[[bytes], bytes]]:
    """Ways photos from other sources differ from the training source's, applied to its validation photos: training's
    own robustness degradations (size, compression, blur), a warmer white balance and a darker exposure."""
    from cataract_training.evaluate import DEGRADATIONS, recoloured

    warmer, darker = recoloured((1.12, 1.0, 0.85)), recoloured((0.67, 0.67, 0.67))
    return {**DEGRADATIONS, "warmer_white_balance": warmer, "darker_by_a_third": darker}


def agreement(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """How far int8's answers move from fp32's on the same photos: decisions that differ, the largest change in
    the positive probability, and each variant's accuracy."""
    return {
        "n": float(reference["n"]),
        "fp32 accuracy": reference["accuracy"],
        "int8 accuracy": other["accuracy"],
        "decisions that differ": float((reference["labels"] != other["labels"]).sum()),
        "max probability change": float(np.abs(reference["probabilities"] - other["probabilities"]).max()),
    }


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
    return recipe_text(q) if q else "recipe not recorded"


def recipe_text(quantization: dict[str, Any]) -> str:
    """An int8 recipe report (``quantize.quantize_int8``'s) in one line."""
    return ", ".join(f"{k}={quantization[k]}" for k in RECIPE_KEYS if k in quantization)
