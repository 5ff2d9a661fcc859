"""Warm latency: the Lambda handler against bare ``session.run``, the reference-style app, PyTorch eager, int8.

All candidates of one table run in this process, interleaved, on the same photo bytes.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the route's string annotations here

from benchmarks.common import Stats, in_blocks, interleaved, latency_table, quiet_environment
from cataract_inference.cli import LocalContext


def bench_context() -> LocalContext:
    """A Lambda context for the handler, with Lambda's one-vCPU memory size."""
    return LocalContext(function_name="cataract-screening-bench", memory_limit_in_mb=1769)


def load_handler(model_dir: Path, threads: int = 1) -> Any:
    """Import the real handler module on ``model_dir`` (the model loads at import, as on Lambda)."""
    quiet_environment()
    os.environ["MODEL_DIR"] = str(model_dir)
    os.environ["ORT_INTRA_OP_THREADS"] = str(threads)
    os.environ.pop("MODEL_S3_URI", None)
    from cataract_inference import settings

    settings.get_settings.cache_clear()
    sys.modules.pop("cataract_inference.handler", None)
    return importlib.import_module("cataract_inference.handler")


def call(handler_fn: Callable[..., dict[str, Any]], event: dict[str, Any]) -> dict[str, Any]:
    """Invoke a Lambda handler and insist on a 200 JSON response (a benchmark of errors is worthless)."""
    response = handler_fn(event, bench_context())
    if response["statusCode"] != 200:
        raise RuntimeError(f"benchmark request failed: {response['statusCode']} {response.get('body', '')[:300]}")
    return response


def reference_app(
    model_path: Path, size: int, mean: tuple[float, ...], std: tuple[float, ...], threads: int | None = None
) -> Any:
    """The reference project's way: FastAPI, ``ort.InferenceSession(path)`` with default options, a full
    decode and ``img.resize((size, size))``, behind the same Mangum adapter."""
    import onnxruntime as ort
    from fastapi import FastAPI
    from mangum import Mangum
    from PIL import Image

    if threads is None:
        session = ort.InferenceSession(str(model_path))  # default options: all cores, spinning
    else:
        opts = ort.SessionOptions()  # defaults, but as many threads as Lambda's vCPUs
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), sess_options=opts)
    input_name = session.get_inputs()[0].name
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        payload = await request.json()
        img = Image.open(io.BytesIO(base64.b64decode(payload["image"]))).convert("RGB")
        img = img.resize((size, size))
        x = ((np.asarray(img, dtype=np.float32) / 255.0 - m) / s).transpose(2, 0, 1)[None]
        logits = session.run(None, {input_name: x})[0][0]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        return {"probabilities": {"cataract": float(p[0]), "normal": float(p[1])}}

    return Mangum(app, lifespan="off")


def torch_model(run: Path | None, backbone: str = "mobilenet_v2") -> tuple[Any, str]:
    """The training network in eval mode, with the run's weights when there is a checkpoint."""
    import torch

    from cataract_training.backbones import CataractNet

    if run is not None:
        backbone = json.loads((run / "config.json").read_text(encoding="utf-8"))["backbone"]
    net = CataractNet(backbone, n_classes=2, pretrained=False)
    note = "random weights (no checkpoint)"
    if run is not None:
        net.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
        note = f"weights of {run.name}"
    net.eval()
    return net, note


def handler_breakdown(handler: Any, photos: dict[str, bytes], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per photo: bare ``session.run``, decode, preprocess, gate statistics, ``predict_bytes`` and the whole handler."""
    from cataract_inference import events, quality
    from cataract_inference.imaging import decode_image, decode_side, preprocess

    clf = handler.classifier
    spec = clf.manifest.input
    out: dict[str, dict[str, list[float]]] = {}
    for name, data in photos.items():
        event = events.predict_event(data)
        decoded = decode_image(data, clf.limits, target_size=decode_side(spec), fill=spec.fill_rgb)
        tensor = preprocess(decoded.image, spec)[None]
        out[name] = interleaved(
            {
                "bare session.run": functools.partial(clf.run, tensor),
                "decode (draft)": functools.partial(
                    decode_image, data, clf.limits, target_size=decode_side(spec), fill=spec.fill_rgb
                ),
                "preprocess": functools.partial(preprocess, decoded.image, spec),
                "gate statistics": functools.partial(
                    quality.tensor_stats, tensor[0], spec, decoded.image, decoded.original_size
                ),
                "predict_bytes": functools.partial(clf.predict_bytes, data),
                "handler": functools.partial(call, handler.lambda_handler, event),
            },
            repeats,
        )
    return out


def client_downscaling(handler: Any, phone: bytes, sides: tuple[int, ...], repeats: int) -> dict[str, list[float]]:
    """The handler on a phone photo as taken and as a client downscaled it before upload (same event shape)."""
    from benchmarks.common import downscaled
    from cataract_inference import events

    photos = {"as taken": phone} | {f"downscaled to {side} px, JPEG q92": downscaled(phone, side) for side in sides}
    evs = {f"{name} ({len(data) // 1024} KB)": events.predict_event(data) for name, data in photos.items()}
    return interleaved({name: functools.partial(call, handler.lambda_handler, e) for name, e in evs.items()}, repeats)


def explain_cost(handler: Any, photos: dict[str, bytes], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per photo: the handler without and with ``explain`` (the web page's request), and the heat map alone."""
    from cataract_inference import events
    from cataract_inference.imaging import load_for_model

    clf = handler.classifier
    spec = clf.manifest.input
    out: dict[str, dict[str, list[float]]] = {}
    for name, data in photos.items():
        decoded, tensor = load_for_model(data, spec, clf.limits)
        outputs = clf.run(tensor[None])
        plain, explained = events.predict_event(data), events.predict_event(data, explain=True)
        out[name] = interleaved(
            {
                "handler": functools.partial(call, handler.lambda_handler, plain),
                "handler, explain=true": functools.partial(call, handler.lambda_handler, explained),
                "heat map alone (Classifier.heatmap)": functools.partial(clf.heatmap, decoded, data, outputs),
            },
            repeats,
        )
    return out


def versus_reference(handler: Any, photos: dict[str, bytes], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Our handler against the reference-style app, both behind Mangum, same events."""
    from cataract_inference import events

    clf = handler.classifier
    spec = clf.manifest.input
    ref = reference_app(clf.artifact.model_path, spec.size, spec.mean, spec.std)
    ref1 = reference_app(clf.artifact.model_path, spec.size, spec.mean, spec.std, threads=1)
    out = {}
    for name, data in photos.items():
        event = events.predict_event(data)
        out[name] = interleaved(
            {
                "our handler": functools.partial(call, handler.lambda_handler, event),
                "reference-style app": functools.partial(call, ref, event),
                "reference-style app, 1 ORT thread": functools.partial(call, ref1, event),
            },
            repeats,
            # The default session's spinning workers keep a core busy after each run; without a pause they
            # slowed whichever candidate came next by 2-3x on a 2-core machine (ours: 16 ms -> 40 ms).
            pause_s=0.01,
        )
    return out


def handler_factory(
    model_dir: Path, threads: int, event: dict[str, Any], *, spin: bool | None = None
) -> Callable[[], Callable[[], Any]]:
    """For ``in_blocks``: builds the handler as ``ORT_INTRA_OP_THREADS=threads`` deploys it and returns a call of
    it on ``event``. ``spin=False`` swaps in a session whose helper threads sleep instead of spinning."""

    def build() -> Callable[[], Any]:
        handler = load_handler(model_dir, threads=threads)
        if spin is False:
            from benchmarks.tuning import options

            clf = handler.classifier
            clf.session = type(clf.session)(
                str(clf.artifact.model_path),
                sess_options=options(threads, "ORT_ENABLE_ALL", spin=False),
                providers=["CPUExecutionProvider"],
            )
        return lambda: call(handler.lambda_handler, event)

    return build


def at_two_threads(model_dir: Path, photos: dict[str, bytes], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Both apps with two ORT threads: our handler as ``ORT_INTRA_OP_THREADS=2`` deploys it (helpers spin), the
    same without spinning, and the reference-style app with ORT's defaults (as many threads as cores, spinning).

    Each block builds its app (and its thread pool) afresh and drops it, so one pool runs at a time.
    """
    from cataract_inference import events
    from cataract_inference.manifest import load_manifest

    def ours(threads: int, spin: bool | None, event: dict[str, Any]) -> Callable[[], Callable[[], Any]]:
        return handler_factory(model_dir, threads, event, spin=spin)

    spec = load_manifest(model_dir / "model.json").input

    def reference(event: dict[str, Any]) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            # Two threads, not ORT's default, which follows the machine's cores: "both 2 threads" on any machine.
            app = reference_app(model_dir / "model.onnx", spec.size, spec.mean, spec.std, threads=2)
            return lambda: call(app, event)

        return build

    out = {}
    try:
        for name, data in photos.items():
            event = events.predict_event(data)
            out[name] = in_blocks(
                {
                    "our handler, 1 thread (the default)": ours(1, None, event),
                    "our handler, 2 threads (ORT_INTRA_OP_THREADS=2: helpers spin)": ours(2, None, event),
                    "our handler, 2 threads, no spinning": ours(2, False, event),
                    "reference-style app (2 threads, ORT's default spinning)": reference(event),
                },
                rounds,
                per_block=10,
            )
    finally:
        os.environ["ORT_INTRA_OP_THREADS"] = "1"
    return out


def versus_torch(
    handler: Any, photos: dict[str, bytes], run: Path | None, repeats: int, backbone: str = "mobilenet_v2"
) -> tuple[dict[str, dict[str, list[float]]], str]:
    """ONNX Runtime against PyTorch eager (one thread each): the forward pass, and photo-to-probabilities.

    The network is ``run``'s, or ``backbone`` with random weights without one (see ``common.torch_target``).
    """
    import torch
    from PIL import Image

    from cataract_inference import events
    from cataract_inference.imaging import decode_image, decode_side, preprocess

    torch.set_num_threads(1)  # Lambda's one vCPU; ORT runs with one intra-op thread too
    net, note = torch_model(run, backbone)
    clf = handler.classifier
    spec = clf.manifest.input
    m = torch.tensor(spec.mean).view(3, 1, 1)
    s = torch.tensor(spec.std).view(3, 1, 1)

    @torch.inference_mode()
    def torch_photo(data: bytes) -> np.ndarray:
        # The obvious PyTorch path: full decode, resize, to tensor, forward.
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return torch.softmax(net(((x - m) / s)[None])[0], -1).numpy()

    @torch.inference_mode()
    def torch_forward(t: torch.Tensor) -> Any:
        return net(t)

    out = {}
    for name, data in photos.items():
        decoded = decode_image(data, clf.limits, target_size=decode_side(spec), fill=spec.fill_rgb)
        tensor = preprocess(decoded.image, spec)[None]
        tt = torch.from_numpy(tensor.copy())
        event = events.predict_event(data)
        out[name] = interleaved(
            {
                "ORT session.run": functools.partial(clf.run, tensor),
                "torch eager forward": functools.partial(torch_forward, tt),
                "our handler": functools.partial(call, handler.lambda_handler, event),
                "torch photo→probabilities": functools.partial(torch_photo, data),
            },
            repeats,
        )
    return out, note


def ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """p50 of ``numerator`` divided by p50 of ``denominator``."""
    return Stats.of(samples[numerator]).p50 / Stats.of(samples[denominator]).p50


__all__ = [
    "handler_breakdown",
    "latency_table",
    "load_handler",
    "ratio",
    "versus_reference",
    "versus_torch",
]
