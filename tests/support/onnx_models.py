"""Tiny ONNX models the tests build for themselves, with the real graph interface.

The graph pools the normalised image to a 4x4 grid of 3 channels ("features"), then:
``embedding`` is their mean, ``logits`` score brightness (bright → cataract, dark → normal),
``cam`` applies the same weights per cell, and ``ood_distance`` is the distance of the embedding
from zero. Predictions therefore follow the input in a way tests can reason about.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cataract_inference.manifest import Manifest, write_manifest
from cataract_inference.model_source import sha256_of


def tiny_graph(
    size: int = 32, *, with_extras: bool = True, n_classes: int = 2, input_name: str = "input"
) -> onnx.ModelProto:
    """An ONNX model with the serving interface, small enough to build in milliseconds."""
    grid = 4
    kernel = size // grid
    w = np.zeros((3, n_classes), dtype=np.float32)
    w[:, 0] = 1.0
    w[:, 1] = -1.0
    nodes = [
        helper.make_node(
            "AveragePool", [input_name], ["features"], kernel_shape=[kernel, kernel], strides=[kernel, kernel]
        ),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        helper.make_node("MatMul", ["embedding", "W"], ["logits"]),
    ]
    initialisers = [numpy_helper.from_array(w, "W")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])]
    if with_extras:
        conv_w = w.T.reshape(n_classes, 3, 1, 1).copy()
        initialisers.append(numpy_helper.from_array(conv_w, "Wc"))
        nodes += [
            helper.make_node("Conv", ["features", "Wc"], ["cam"]),
            helper.make_node("ReduceSumSquare", ["embedding"], ["sq"], axes=[1], keepdims=0),
            helper.make_node("Sqrt", ["sq"], ["ood_distance"]),
        ]
        outputs += [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("ood_distance", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", n_classes, grid, grid]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
        outputs,
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_tiny_model(
    directory: Path,
    *,
    size: int = 32,
    with_extras: bool = True,
    gate: dict[str, Any] | None = None,
    **manifest_fields: Any,
) -> Path:
    """Write ``model.onnx`` and a matching ``model.json`` into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.onnx"
    onnx.save(tiny_graph(size, with_extras=with_extras), model_path)
    fields: dict[str, Any] = {
        "name": "tiny-test-model",
        "version": "0.0.1-test",
        "created": datetime.now(UTC).isoformat(),
        "sha256": sha256_of(model_path),
        "classes": ["cataract", "normal"],
        "input": {"size": size, "resize": "letterbox"},
        "outputs": (
            {"logits": "logits", "embedding": "embedding", "ood_distance": "ood_distance", "cam": "cam"}
            if with_extras
            else {"logits": "logits"}
        ),
        "temperature": 1.0,
        "threshold": 0.5,
        "gate": gate
        if gate is not None
        else {"min_side": 8, "min_brightness": 0.0, "max_brightness": 1.0, "min_contrast": 0.0},
        "metrics": {"note": "a test model; no metrics"},
    }
    fields.update(manifest_fields)
    write_manifest(Manifest.model_validate(fields), directory / "model.json")
    return directory


def rewrite_manifest(directory: Path, **changes: Any) -> None:
    """Change fields of an existing ``model.json`` in place (to break it on purpose)."""
    path = directory / "model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
