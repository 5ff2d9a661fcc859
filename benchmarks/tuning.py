"""ONNX Runtime settings on one tensor: threads, spinning, graph optimisation, a pre-optimised model."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import interleaved


def options(threads: int | None, level: str, spin: bool) -> Any:
    """Session options with ``threads`` intra-op threads (``None``: ORT's default), a graph level, and spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def compare(model_path: Path, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """session.run per configuration (interleaved), and session creation times (ms, 5 each) per way of loading."""
    import onnxruntime as ort

    from cataract_inference.classifier import session_options

    configs = {
        "serving: 1 thread, ENABLE_ALL, no spin": session_options(1),
        "ORT defaults (all cores, spinning)": None,
        "1 thread, ENABLE_BASIC": options(1, "ORT_ENABLE_BASIC", False),
        "1 thread, optimisation off": options(1, "ORT_DISABLE_ALL", False),
        "1 thread, spinning on": options(1, "ORT_ENABLE_ALL", True),
        "2 threads, no spin": options(2, "ORT_ENABLE_ALL", False),
    }
    sessions = {
        name: ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        if opts is not None
        else ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        for name, opts in configs.items()
    }
    size = sessions["serving: 1 thread, ENABLE_ALL, no spin"].get_inputs()[0].shape[-1]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    # The pause parks the default session's spinning pool before the next candidate is timed.
    runs = interleaved(
        {k: functools.partial(s.run, None, {"input": x}) for k, s in sessions.items()}, repeats, pause_s=0.01
    )

    creation: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        offline = options(1, "ORT_ENABLE_EXTENDED", False)  # portable fusions only, as ORT advises offline
        offline.optimized_model_filepath = str(pre)
        ort.InferenceSession(str(model_path), sess_options=offline, providers=["CPUExecutionProvider"])
        ways = {
            "raw model, ENABLE_ALL at load (serving)": (model_path, session_options(1)),
            "pre-optimised model (EXTENDED offline), ENABLE_ALL at load": (pre, session_options(1)),
            "pre-optimised model, optimisation off at load": (pre, options(1, "ORT_DISABLE_ALL", False)),
        }
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(5):
            for name, (path, opts) in ways.items():
                t0 = time.perf_counter()
                ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                times[name].append((time.perf_counter() - t0) * 1000.0)
        creation = times
    return runs, creation
