"""int8 variant of the serving graph: static QDQ quantization of the trunk, heads left in float.

The recipe (measured on the MobileNetV2 run, see docs/training.md):

1. ``quant_pre_process``: symbolic shape inference and onnxruntime's graph optimisation.
2. Cross-layer equalisation with bias absorption on every Conv that feeds a single 1×1 Conv with
   nothing in between (a linear bottleneck feeding an expansion). Exact in float: each channel is
   shifted to its centre and scaled to a common range, the next Conv undoes it. Without it, two
   narrow-range channels read by ×100 weights made the per-tensor activation scale too coarse.
3. ``quantize_static``, QDQ, per-channel 7-bit weights (``reduce_range``: identical results with and
   without VNNI), uint8 activations (the u8·s8 fast path; int8 activations measured 1.15× only),
   MinMax over the calibration photos, for Conv, Add and Clip, so activations stay int8 from block
   to block.
4. Left in float: every node that is not an ancestor of the last feature map (embedding pooling,
   logits, OOD distance, CAM, mid-level taps and distance; release then refits the distances'
   Gaussians on the quantized trunk's features, ``export.refit_gate_heads``) and the first
   ``float_leading_convs`` convolutions (MobileNetV2's stem and first block: ImageNet layers with
   near-dead channels that cost most of the accuracy when quantized, and no time).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "input"
QUANTIZED_OPS = ("Conv", "Add", "Clip")
ACTIVATIONS = ("Clip", "Relu")


@dataclass(frozen=True)
class Recipe:
    """The knobs of the int8 recipe; the defaults are the measured best."""

    per_channel: bool = True
    equalise: bool = True
    float_leading_convs: int = 3
    calibration_batch: int = 8
    method: str = "MinMax"  # or "Percentile", "Entropy" (onnxruntime's CalibrationMethod names)
    percentile: float = 99.999
    # 7-bit weights: u8·s7 pairs cannot saturate the 16-bit sums of AVX2's u8·s8 path (CPUs without
    # VNNI), so every x86 CPU computes the same integers. Measured: full-range weights moved logits by
    # up to 1.0 and ood_distance by up to 46% on an emulated AVX2 CPU; 7-bit weights, not at all.
    reduce_range: bool = True

    def describe(self, n_photos: int) -> dict[str, Any]:
        """The recipe as recorded in the export report."""
        return {
            "format": "QDQ",
            "weights": ("7-bit" if self.reduce_range else "int8")
            + (" per-channel" if self.per_channel else " per-tensor"),
            "activations": "uint8",
            "op_types": list(QUANTIZED_OPS),
            "calibration_photos": n_photos,
            **asdict(self),
        }


class TensorReader:
    """An onnxruntime ``CalibrationDataReader`` over preprocessed photos."""

    def __init__(self, tensors: np.ndarray, batch: int = 8) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            {INPUT_NAME: tensors[i : i + batch]} for i in range(0, len(tensors), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch, or ``None`` when done."""
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - onnxruntime may call it; one pass is enough
        """Not supported: a reader is used once."""


def trunk_nodes(model: Any) -> set[str]:
    """Names of the nodes the last feature map depends on (the trunk); everything else is a head."""
    nodes = list(model.graph.node)
    pool = next(n for n in nodes if "embedding" in n.output)  # the embedding's pooling reads the last map
    producer = {out: n for n in nodes for out in n.output}
    todo = [t for t in pool.input if t in producer]
    seen: set[str] = set()
    while todo:
        node = producer[todo.pop()]
        if node.name not in seen:
            seen.add(node.name)
            todo.extend(t for t in node.input if t in producer)
    return seen


def float_nodes(model: Any, leading_convs: int) -> list[str]:
    """Nodes kept in float: the heads, and the first ``leading_convs`` Conv nodes with their activations."""
    trunk = trunk_nodes(model)
    keep = [n.name for n in model.graph.node if n.name not in trunk]
    convs = [n for n in model.graph.node if n.op_type == "Conv"][:leading_convs]
    outs = {n.output[0] for n in convs}
    keep += [n.name for n in convs]
    keep += [n.name for n in model.graph.node if n.op_type in ACTIVATIONS and n.input[0] in outs]
    return keep


def _linear_pairs(model: Any) -> list[tuple[Any, Any]]:
    """(producer, consumer) Convs where the producer's output feeds only a 1×1, ungrouped Conv."""
    init = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 3 or n.output[0] in outputs:
            continue
        nxt = readers.get(n.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or len(nxt[0].input) < 3:
            continue
        weight = init.get(nxt[0].input[1])
        grouped = any(a.name == "group" and a.i != 1 for a in nxt[0].attribute)
        if weight is not None and list(weight.dims[2:]) == [1, 1] and not grouped and n.input[1] in init:
            pairs.append((n, nxt[0]))
    return pairs


def _channel_ranges(model: Any, names: list[str], tensors: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel min and max of the named NCHW tensors over ``tensors``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    for i in range(0, len(tensors), 16):
        for name, value in zip(names, sess.run(names, {INPUT_NAME: tensors[i : i + 16]}), strict=True):
            a, b = value.min(axis=(0, 2, 3)), value.max(axis=(0, 2, 3))
            lo[name] = np.minimum(lo.get(name, a), a)
            hi[name] = np.maximum(hi.get(name, b), b)
    return {n: (lo[n], hi[n]) for n in names}


def equalise(model: Any, tensors: np.ndarray) -> list[str]:
    """Centre and rescale the channels between linear Conv→1×1 Conv pairs, in place; the producers' names.

    x' = (x - mid) * s per channel (producer weights and bias), and the consumer takes W / s and
    b + W @ mid, so the float function is unchanged while every channel spans the same range.
    """
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    pairs = _linear_pairs(model)
    ranges = _channel_ranges(model, [p.output[0] for p, _ in pairs], tensors)
    arr = {
        name: numpy_helper.to_array(init[name]).astype(np.float64)
        for p, c in pairs
        for name in (*p.input[1:3], *c.input[1:3])
    }
    for p, c in pairs:
        lo, hi = ranges[p.output[0]]
        mid = (lo + hi) / 2.0
        half = np.maximum((hi - lo) / 2.0, 1e-6)
        scale = half.max() / half
        w1, b1, w2, b2 = (arr[n] for n in (*p.input[1:3], *c.input[1:3]))
        new = {
            p.input[1]: w1 * scale.reshape(-1, 1, 1, 1),
            p.input[2]: (b1 - mid) * scale,
            c.input[1]: w2 / scale.reshape(1, -1, 1, 1),
            c.input[2]: b2 + w2[:, :, 0, 0] @ mid,
        }
        for name, value in new.items():
            init[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return [p.name for p, _ in pairs]


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, recipe: Recipe = Recipe()) -> dict[str, Any]:
    """Write the int8 variant of the serving graph ``fp32`` to ``out``; the recipe as a report dict.

    ``calibration``: preprocessed training photos (never validation ones), as serving preprocesses them.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx").resolve()
    source = Path(fp32).resolve()
    # When symbolic shape inference fails, onnxruntime saves its partial model, with a 14 MB external-data file,
    # into the working folder (the user's, or a checkout's root): let it write into a scratch folder instead.
    with tempfile.TemporaryDirectory(prefix="quant-pre-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(source), str(pre))
        except Exception as exc:  # onnxruntime raises a bare Exception for it
            if "symbolic shape inference" not in str(exc):
                raise
            # EfficientNet-Lite0's "same" padding is computed from the input's shape at run time, which symbolic
            # shape inference cannot follow; ONNX's own shape inference (kept) is all the quantizer needs.
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    equalised = equalise(model, calibration) if recipe.equalise else []
    onnx.save(model, str(pre))
    excluded = float_nodes(model, recipe.float_leading_convs)
    # Whole batches only: onnxruntime's histogram calibrators cannot stack a shorter last batch.
    usable = max(recipe.calibration_batch, len(calibration) - len(calibration) % recipe.calibration_batch)
    calibration = calibration[:usable]
    quantize_static(
        str(pre),
        str(out),
        TensorReader(calibration, recipe.calibration_batch),
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=recipe.reduce_range,
        op_types_to_quantize=list(QUANTIZED_OPS),
        calibrate_method=getattr(CalibrationMethod, recipe.method),
        nodes_to_exclude=excluded,
        # Keep Clip nodes in the file: onnxruntime fuses them into the quantized Conv at load time, and
        # the file stays a faithful float graph when the Q/DQ pairs are read as fake quantization.
        # (CalibMaxIntermediateOutputs is not used: in onnxruntime 1.32 MinMax drops, not folds, those batches.)
        extra_options={"QDQKeepRemovableActivations": True, "CalibPercentile": recipe.percentile},
    )
    pre.unlink(missing_ok=True)
    return recipe.describe(len(calibration)) | {"equalised": equalised, "float_nodes": len(excluded)}
