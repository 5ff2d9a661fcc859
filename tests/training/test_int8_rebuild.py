"""The benchmark's int8 rebuild: a model folder without its run folder is quantized by training's recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from synthetic_eyes import make_folder

from benchmarks import int8
from benchmarks.common import BUNDLED_MODEL_DIR
from cataract_inference.classifier import load_classifier
from cataract_inference.imaging import load_for_model
from cataract_inference.manifest import GateThresholds, load_manifest, write_manifest
from cataract_inference.model_source import sha256_of
from cataract_training import export, quantize
from cataract_training.backbones import CataractNet

SIZE = 64
RUN = "20261201-120000-mobilenet_v2"


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV2 serving graph at 64 px (float), made once for the module."""
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    net = CataractNet("mobilenet_v2", pretrained=True).eval()
    emb = np.random.default_rng(0).normal(size=(50, 1280))
    graph = export.ServingGraph(net, export.fit_ood(emb, k=8), export.FeatureGaussian.placeholder(net.mid_dim))
    export.export_onnx(graph, SIZE, path)
    return path


@pytest.fixture
def clone(tmp_path: Path, fp32_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A model folder naming run RUN, that run's split.json under ./runs, and the photos the split names."""
    data = make_folder(tmp_path / "photos", n_per_class=10)
    keys = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    split = {"train": [k for k in keys if not k.endswith(("_0.png", "_1.png"))]}
    split["val"] = [k for k in keys if k not in split["train"]]
    monkeypatch.chdir(tmp_path)  # find_split looks in ./runs first
    (tmp_path / "runs" / RUN).mkdir(parents=True)
    (tmp_path / "runs" / RUN / "split.json").write_text(json.dumps(split), encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(fp32_onnx.read_bytes())
    bundled = load_manifest(BUNDLED_MODEL_DIR / "model.json")
    manifest = bundled.model_copy(
        update={
            "sha256": sha256_of(model / "model.onnx"),
            "input": bundled.input.model_copy(update={"size": SIZE}),
            "temperature": 2.0,
            "threshold": 0.4,
            "gate": GateThresholds(max_ood_distance=1e6),
            "metrics": {"training_run": {"run": RUN}, "variants": {"int8": {"temperature": 1.5, "threshold": 0.3}}},
        }
    )
    write_manifest(manifest, model / "model.json")
    return {"model": model, "data": data, "split": tmp_path / "runs" / RUN / "split.json", "work": tmp_path / "w"}


def test_rebuild_quantizes_the_model_itself_and_serves(clone: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, tuple] = {}

    def recorded(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: Any) -> Any:
            calls[name] = args
            return real(*args)

        monkeypatch.setattr(module, name, wrapper)

    recorded(quantize, "quantize_int8")
    recorded(export, "refit_gate_heads")
    pair = int8.rebuild(clone["model"], clone["data"], clone["work"])
    # Calibrated on the split's training photos, in its order, preprocessed as served; the gate heads refitted on the
    # int8 file with the same tensors (as release does).
    spec = load_manifest(clone["model"] / "model.json").input
    train = json.loads(clone["split"].read_text(encoding="utf-8"))["train"]
    expected = np.stack([load_for_model((clone["data"] / k).read_bytes(), spec)[1] for k in train])
    fp32_path, int8_path, calibration = calls["quantize_int8"]
    assert fp32_path == clone["model"] / "model.onnx" and int8_path == pair.int8 / "model.onnx"
    np.testing.assert_array_equal(calibration, expected)
    assert calls["refit_gate_heads"][0] == pair.int8 / "model.onnx"
    np.testing.assert_array_equal(calls["refit_gate_heads"][1], expected)
    assert pair.fp32 == clone["model"] and pair.split == clone["split"]
    ops = {node.op_type for node in onnx.load(str(pair.int8 / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    manifest = load_manifest(pair.int8 / "model.json")
    assert manifest.precision == "int8" and manifest.sha256 == sha256_of(pair.int8 / "model.onnx")
    # The export's int8 temperature and threshold, not fp32's; the fp32 gate's caps described other distances.
    assert (manifest.temperature, manifest.threshold) == (1.5, 0.3)
    assert manifest.gate == GateThresholds()
    assert "16 training photos" in pair.origin and RUN in pair.origin and "7-bit per-channel" in pair.origin
    assert "recorded no gate refit to compare with" in pair.origin  # the fixture's export recorded none
    load_classifier(pair.int8, intra_op_threads=1)  # serving accepts it: the sha256 is the file's
    val = int8.validation({"fp32": pair.fp32, "int8": pair.int8}, pair.split, clone["data"])
    assert val["fp32"]["n"] == val["int8"]["n"] == 4
    assert np.ptp(val["fp32"]["probabilities"]) > 0  # four photos, four answers
    # A shift replaces each photo before either variant sees it: here all four by one photo, so one answer.
    one = (clone["data"] / json.loads(pair.split.read_text(encoding="utf-8"))["val"][0]).read_bytes()
    moved = int8.validation({"fp32": pair.fp32}, pair.split, clone["data"], lambda _: one)
    assert moved["fp32"]["n"] == 4 and np.ptp(moved["fp32"]["probabilities"]) == 0
    assert moved["fp32"]["probabilities"][0] == pytest.approx(val["fp32"]["probabilities"][0], abs=1e-6)


def test_rebuild_keeps_fp32_calibration_when_the_export_recorded_none_for_int8(clone: dict[str, Path]) -> None:
    manifest = load_manifest(clone["model"] / "model.json")
    write_manifest(
        manifest.model_copy(update={"metrics": {"training_run": {"run": RUN}}}), clone["model"] / "model.json"
    )
    pair = int8.rebuild(clone["model"], clone["data"], clone["work"])
    rebuilt = load_manifest(pair.int8 / "model.json")
    assert (rebuilt.temperature, rebuilt.threshold) == (2.0, 0.4)
    assert "temperature and threshold fp32's" in pair.origin


def test_rebuild_refuses_when_a_calibration_photo_is_missing(clone: dict[str, Path]) -> None:
    (clone["data"] / "normal" / "normal_5.png").unlink()
    with pytest.raises(int8.CannotRebuild, match=r"1 of the 16 training photos .* normal/normal_5\.png"):
        int8.rebuild(clone["model"], clone["data"], clone["work"])


def test_rebuild_refuses_a_model_without_its_split(clone: dict[str, Path]) -> None:
    clone["split"].unlink()
    with pytest.raises(int8.CannotRebuild, match="no split of the model's training run is here"):
        int8.rebuild(clone["model"], clone["data"], clone["work"])


def test_rebuild_refuses_a_model_that_is_already_int8(clone: dict[str, Path]) -> None:
    manifest = load_manifest(clone["model"] / "model.json")
    write_manifest(manifest.model_copy(update={"precision": "int8"}), clone["model"] / "model.json")
    with pytest.raises(int8.CannotRebuild, match="already int8"):
        int8.rebuild(clone["model"], clone["data"], clone["work"])


def test_rebuild_says_whether_it_is_the_exports_int8_file(
    clone: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged by the refitted gate heads' medians the export recorded: equal only for the same calibration."""
    refits: list[dict[str, Any]] = []
    real = export.refit_gate_heads

    def recording(*args: Any) -> dict[str, Any]:
        refits.append(real(*args))
        return refits[-1]

    monkeypatch.setattr(export, "refit_gate_heads", recording)
    int8.rebuild(clone["model"], clone["data"], clone["work"])
    manifest = load_manifest(clone["model"] / "model.json")
    metrics = {**manifest.metrics, "variants": {"int8": {"gate_heads_refit": refits[0]}}}  # as the export records
    write_manifest(manifest.model_copy(update={"metrics": metrics}), clone["model"] / "model.json")
    # The same photos again, into the same work folder (used twice is fine): the export's file.
    assert "match the export's record" in int8.rebuild(clone["model"], clone["data"], clone["work"]).origin

    # A calibration photo that changed since the export: another file, and the report says so.
    (clone["data"] / "cataract" / "cataract_5.png").write_bytes(
        (clone["data"] / "normal" / "normal_5.png").read_bytes()
    )
    origin = int8.rebuild(clone["model"], clone["data"], clone["work"]).origin
    assert "Not the export's int8 file" in origin and "changed since the export" in origin


def test_a_rebuild_that_fails_is_a_reason_not_a_crash(clone: dict[str, Path]) -> None:
    (clone["data"] / "normal" / "normal_5.png").write_bytes(b"not a photo")
    with pytest.raises(int8.CannotRebuild, match=r"the rebuild failed \(NotAnImageError: "):
        int8.rebuild(clone["model"], clone["data"], clone["work"])
