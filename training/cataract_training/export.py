"""Export: the ONNX graph serving expects and its parity with torch (the int8 variant is in ``quantize``).

Graph interface (serving relies on it): input ``input`` float32 [N,3,S,S], outputs ``logits`` [N,2],
``embedding`` [N,D], ``ood_distance`` [N] (Mahalanobis distance from the training embeddings,
computed in the graph), ``cam`` [N,2,h,w] (class activation maps) and ``mid_distance`` [N]
(Mahalanobis distance of mid-level trunk features from the training photos; the gate's eye detector).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import CataractNet

OUTPUT_NAMES = ("logits", "embedding", "ood_distance", "cam", "mid_distance")
OPSET = 18


@dataclass(frozen=True)
class OodModel:
    """A probabilistic-PCA Gaussian of training embeddings: mean, top-k axes and their variances.

    Covariance = V diag(lam) V^T + sigma2 (I - V V^T): the top ``k`` directions are estimated, the
    rest share one shrunk variance. Its Mahalanobis distance is cheap in the graph and well-posed
    when there are fewer photos than dimensions.
    """

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (D, k)
    variances: np.ndarray  # (k,)
    residual_variance: float

    def distance(self, emb: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance, in NumPy (the reference for the graph)."""
        diff = np.asarray(emb, dtype=np.float64) - self.mean
        proj = diff @ self.axes
        resid = diff - proj @ self.axes.T
        d2 = (proj**2 / self.variances).sum(1) + (resid**2).sum(1) / self.residual_variance
        return np.sqrt(np.maximum(d2, 0.0))


def fit_ood(emb: np.ndarray, k: int = 32) -> OodModel:
    """Fit the PPCA Gaussian on clean (non-augmented) training embeddings."""
    emb = np.asarray(emb, dtype=np.float64)
    n, d = emb.shape
    k = max(1, min(k, n - 1, d - 1))
    mean = emb.mean(0)
    centred = emb - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    eig = s**2 / max(1, n - 1)
    residual = float(eig[k:].sum() / max(1, d - k))  # the discarded variance, spread over the other dims
    residual = max(residual, 1e-6 * float(eig[0]))
    return OodModel(
        mean=mean, axes=vt[:k].T.copy(), variances=np.maximum(eig[:k], residual), residual_variance=residual
    )


@dataclass(frozen=True)
class FeatureGaussian:
    """A full-covariance Gaussian of pooled mid-level features, stored as its mean and a whitening matrix.

    ``distance(x) = |(x - mean) @ whitener|``, the Mahalanobis distance under the covariance shrunk
    towards a scaled identity (there are fewer photos than some feature counts allow a stable inverse for).
    """

    mean: np.ndarray  # (D,)
    whitener: np.ndarray  # (D, D): L with L L^T = inverse covariance

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance, in NumPy (the reference for the graph)."""
        z = (np.asarray(feats, dtype=np.float64) - self.mean) @ self.whitener
        return np.sqrt((z * z).sum(1))

    @classmethod
    def placeholder(cls, dim: int) -> FeatureGaussian:
        """Zero mean, identity covariance: for graphs exported only to be timed or tested, never to gate."""
        return cls(mean=np.zeros(dim), whitener=np.eye(dim))


def fit_feature_gaussian(feats: np.ndarray, shrinkage: float = 0.1) -> FeatureGaussian:
    """Fit the mid-level Gaussian on clean training photos' pooled features (Ledoit-Wolf-style fixed shrinkage)."""
    feats = np.asarray(feats, dtype=np.float64)
    n, d = feats.shape
    if n < 2 or d < 1:
        raise ValueError(f"need at least 2 photos with features to fit the mid-level Gaussian, got {feats.shape}")
    mean = feats.mean(0)
    cov = np.cov(feats - mean, rowvar=False).reshape(d, d)
    scale = max(float(np.trace(cov)) / d, 1e-12)
    cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(d)
    whitener = np.linalg.cholesky(np.linalg.inv(cov))
    return FeatureGaussian(mean=mean, whitener=whitener)


class ServingGraph(nn.Module):
    """The trained network plus the OOD distance, CAM and mid-level distance heads, as one graph."""

    # Registered by name in __init__ (GATE_HEAD_INITIALIZERS); declared so that their type is known.
    mid_mean: torch.Tensor
    mid_whitener: torch.Tensor
    ood_mean: torch.Tensor
    ood_axes: torch.Tensor
    ood_inv_var: torch.Tensor
    ood_inv_res: torch.Tensor

    def __init__(self, net: CataractNet, ood: OodModel, mid: FeatureGaussian) -> None:
        super().__init__()
        self.net = net
        arrays = gate_head_arrays(ood, mid)
        for name in GATE_HEAD_INITIALIZERS:
            self.register_buffer(name, torch.tensor(arrays[name], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, emb, fmap, mid = self.net.forward_serving(x)
        diff = emb - self.ood_mean
        proj = diff @ self.ood_axes
        # The residual is formed explicitly: |diff|^2 - |proj|^2 would cancel badly in float32.
        resid = diff - proj @ self.ood_axes.t()
        d2 = (proj * proj * self.ood_inv_var).sum(1) + (resid * resid).sum(1) * self.ood_inv_res
        ood = torch.sqrt(torch.clamp(d2, min=0.0))
        w, b = self.net.head.weight, self.net.head.bias
        cam = torch.einsum("kc,nchw->nkhw", w, fmap) + b[None, :, None, None]
        z = (mid - self.mid_mean) @ self.mid_whitener
        mid_distance = torch.sqrt((z * z).sum(1))
        return logits, emb, ood, cam, mid_distance


# The ServingGraph buffers, as they are named in the exported file. Registration order fixes the
# initializers' order in the file, hence its bytes and sha256: keep it.
GATE_HEAD_INITIALIZERS = ("mid_mean", "mid_whitener", "ood_mean", "ood_axes", "ood_inv_var", "ood_inv_res")


def gate_head_arrays(ood: OodModel, mid: FeatureGaussian) -> dict[str, np.ndarray]:
    """The distance heads' constants, as ``ServingGraph`` stores them (float32)."""
    return {
        "ood_mean": ood.mean,
        "ood_axes": ood.axes,
        "ood_inv_var": 1.0 / ood.variances,
        "ood_inv_res": np.asarray(1.0 / ood.residual_variance),
        "mid_mean": mid.mean,
        "mid_whitener": mid.whitener,
    }


def gate_features(path: Path, tensors: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The embedding and the pooled mid-level features an ONNX serving graph computes for ``tensors``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    mid_name = next(n.input[0] for n in model.graph.node if n.op_type == "Sub" and "mid_mean" in n.input[1:])
    model.graph.output.append(onnx.helper.make_tensor_value_info(mid_name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    emb, mid = [], []
    for i in range(0, len(tensors), batch):
        e, m = sess.run(["embedding", mid_name], {"input": tensors[i : i + batch]})
        emb.append(e)
        mid.append(m)
    return np.concatenate(emb), np.concatenate(mid)


def refit_gate_heads(path: Path, train_tensors: np.ndarray) -> dict[str, Any]:
    """Refit the OOD and mid-level Gaussians of the ONNX file at ``path`` on its own features, in place.

    A quantized trunk computes slightly different features than the float one the Gaussians were
    fitted on; refitted on what the shipped bytes compute, the distances mean what they say again.
    The heads themselves stay float. Returns each distance's median on ``train_tensors``, before and after.
    """
    import onnx
    from onnx import numpy_helper

    before = onnx_outputs(path, train_tensors)
    emb, mid = gate_features(path, train_tensors)
    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    # Same number of principal axes as the graph was built with, so every constant keeps its shape.
    arrays = gate_head_arrays(fit_ood(emb, k=int(init["ood_axes"].dims[1])), fit_feature_gaussian(mid))
    old_axes = numpy_helper.to_array(init["ood_axes"])
    # The exporter folds ``ood_axes.t()`` into a constant of its own: find it by value, and refit it too.
    folded = [
        name
        for name, i in init.items()
        if tuple(i.dims) == old_axes.T.shape and np.array_equal(numpy_helper.to_array(i), old_axes.T)
    ]
    if len(folded) != 1:
        raise ValueError(f"{path}: expected one folded transpose of ood_axes in the graph, found {len(folded)}")
    arrays[folded[0]] = arrays["ood_axes"].T
    for name in (*GATE_HEAD_INITIALIZERS, folded[0]):
        old = numpy_helper.to_array(init[name])
        value = np.ascontiguousarray(arrays[name], dtype=np.float32).reshape(old.shape)
        init[name].CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(path))
    after = onnx_outputs(path, train_tensors)
    return {
        f"{head}_median_on_train": {
            "before": round(float(np.median(before[head])), 3),
            "after": round(float(np.median(after[head])), 3),
        }
        for head in ("ood_distance", "mid_distance")
    }


def export_onnx(graph: ServingGraph, size: int, path: Path) -> None:
    """Write ``graph`` as ONNX with a dynamic batch dimension (TorchScript exporter, opset 18)."""
    graph.eval()
    dummy = torch.zeros(2, 3, size, size)
    axes = {"input": {0: "N"}, **{name: {0: "N"} for name in OUTPUT_NAMES}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))


def _session(path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_outputs(path: Path, tensors: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """All outputs of an ONNX file for a stack of input tensors."""
    sess = _session(path)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    for i in range(0, len(tensors), batch):
        for name, value in zip(
            OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {"input": tensors[i : i + batch]}), strict=True
        ):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


@torch.no_grad()
def torch_outputs(graph: ServingGraph, tensors: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """The same outputs from torch, for parity checks."""
    graph.eval()
    parts: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    for i in range(0, len(tensors), batch):
        for name, value in zip(OUTPUT_NAMES, graph(torch.from_numpy(tensors[i : i + batch])), strict=True):
            parts[name].append(value.numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


# How far the float ONNX graph may stray from PyTorch on the same tensors: measured ≤ 3e-6 on the logits and
# ≤ 2e-4 on the distances (both backbones, batch 1-5); a graph past this computes something else.
FP32_LOGITS_TOLERANCE = 1e-3


def check_fp32_parity(found: dict[str, Any]) -> None:
    """Refuse a float export that disagrees with the PyTorch network it came from (``parity``'s report)."""
    if found["max_abs_logits"] > FP32_LOGITS_TOLERANCE or found["argmax_agreement"] < 1.0:
        raise ValueError(
            f"the exported ONNX graph disagrees with PyTorch on the validation photos (logits differ by up to "
            f"{found['max_abs_logits']:.3g}, the limit is {FP32_LOGITS_TOLERANCE:g}; the predicted class agrees on "
            f"{found['argmax_agreement']:.1%}): the export is broken, so nothing was written; check the torch and "
            "onnx versions against pyproject.toml"
        )


def parity(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max absolute difference per output, and how often the predicted class agrees."""
    out: dict[str, Any] = {f"max_abs_{n}": float(np.abs(reference[n] - other[n]).max()) for n in OUTPUT_NAMES}
    out["argmax_agreement"] = float((reference["logits"].argmax(1) == other["logits"].argmax(1)).mean())
    out["n"] = len(reference["logits"])
    return out
