"""Cataract screening inference: decode, preprocess, ONNX session, post-process, and the Lambda/HTTP layer."""

import os

# ONNX Runtime's Linux wheels send usage telemetry to Microsoft from a sample of processes and write a device id
# under $HOME (read-only on Lambda: a warning on every cold start). Off unless the operator sets it; it only
# counts when set before onnxruntime is imported, which every path here does after importing this package.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
