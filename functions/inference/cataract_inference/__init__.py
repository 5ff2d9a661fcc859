"""Cataract screening inference: decode, preprocess, ONNX session, post-process, and the Lambda/HTTP layer."""
