"""The ONNX session and its manifest: image bytes in, screening result out. No web framework here."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import explanation, quality
from .imaging import (
    DEFAULT_LIMITS,
    DecodedImage,
    DecodeLimits,
    decode_image,
    decode_side,
    load_for_model,
    preprocess,
)
from .manifest import UNGRADABLE, GateThresholds, InputSpec, Manifest
from .model_source import ModelArtifact, ModelLoadError, resolve_model
from .settings import PILLOW_PIXEL_CEILING, ConfigError, Settings

# Probabilities are answered to 6 decimals, and the referral is decided on that same figure: a client must never
# read a cataract probability at or above the threshold beside "referral": false.
PROBABILITY_DECIMALS = 6
OVERLAY_SIDE = 512
# A decode whose longer side reaches this is sharp enough for the overlay. 12 MP phone photos (4032×3024) leave
# the model's ⅛ draft at 504 px: decoding them again for 8 more pixels would cost a full entropy pass (~38 ms).
OVERLAY_MIN_SIDE = 448
# A photo at least this elongated may show both eyes, and one clear eye can outvote a cataract in the other
# (beside one particular normal photo, 6-17 of 43 composites lost their referral). Each half is screened too,
# and the most suspicious view decides: no referral lost then, and no verdict changed on the 40 real photos
# this wide (docs/training.md, "Photos of both eyes"; python -m cataract_training.two_eyes).
SPLIT_ASPECT = 2.0


@dataclass(frozen=True)
class Prediction:
    """One screening result."""

    label: str
    probabilities: dict[str, float]
    referral: bool
    quality: quality.Quality
    timing_ms: dict[str, float]
    heatmap_png: str | None = None
    views: dict[str, float] | None = None  # P(positive) of each view, when a wide photo was also split


@dataclass(frozen=True)
class Measurement:
    """What the model and the photo's statistics say about one photo: everything the gate and the decision read."""

    probabilities: np.ndarray  # calibrated, in the manifest's class order: the most suspicious view's
    logits: np.ndarray  # the whole photo's, uncalibrated
    views: dict[str, float] | None  # P(positive) of the whole photo and of each half, for a photo split in two
    stats: quality.ImageStats
    ood_distance: float | None
    mid_distance: float | None
    embedding: np.ndarray | None  # the backbone embedding, for a gate with an eye probe
    # The half that decided (its name and its graph outputs), when one was more suspicious than the whole photo.
    deciding_half: tuple[str, dict[str, np.ndarray]] | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature-scaled softmax over the last axis, numerically stable."""
    z = np.asarray(logits, dtype=np.float64)
    # The largest logit off first: divided by a small temperature, two large logits overflowed to inf - inf = NaN.
    z = (z - z.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def session_options(intra_op_threads: int) -> Any:
    """ONNX Runtime options for Lambda: fixed threads, full graph optimisation, spinning only with helper threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread has no helpers to spin. With more, the helpers spin between the graph's parallel sections
    # instead of sleeping and being woken for each one: without spinning, 2 threads were ~20% slower per small
    # photo through the handler (benchmarks: "Two ORT threads each"). More threads only where the vCPUs are:
    # under Lambda's CPU share at 2048 MB they throttle (benchmarks/quota.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_threads > 1 else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # A session built from bytes still reads external-data weights, from the working directory, and no sha256
    # covers them: point ORT at a folder that cannot exist (under a file), so that any such graph is refused.
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", _NO_EXTERNAL_DATA)
    opts.log_severity_level = 3
    return opts


_NO_EXTERNAL_DATA = str(Path(__file__).resolve() / "no-external-data")


class NonFiniteOutputError(RuntimeError):
    """The model gave NaN or infinity: a fault of the model (broken weights, a distance of a negative variance), never
    of the photo. Raised rather than served: a NaN compares false with every threshold, so it would pass the gate
    and decide "normal"."""


class Classifier:
    """A verified ONNX model, ready to screen photos."""

    def __init__(
        self, artifact: ModelArtifact, *, intra_op_threads: int = 1, limits: DecodeLimits = DEFAULT_LIMITS
    ) -> None:
        import onnxruntime as ort

        self.manifest: Manifest = artifact.manifest
        self.limits = limits
        options = session_options(intra_op_threads)
        try:
            # From the hashed bytes, not the path: what runs is what was verified (and a graph that points
            # at external weight files cannot load them unverified).
            self.session = ort.InferenceSession(
                artifact.model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for every parse failure.
            # Its bytes matched the sha256 recorded at export, so corruption is the least likely cause.
            raise ModelLoadError(
                f"ONNX Runtime cannot load {artifact.source}: {exc}. Its bytes match the sha256 model.json "
                f"records, so it was exported with an ONNX IR version or opset that onnxruntime {ort.__version__} "
                "does not support (export it with this runtime's), or it keeps its weights in external files "
                "(export it as one file), or it is not an ONNX model at all."
            ) from exc
        # The session holds its own copy of the weights; ours would only add ~10 MB to every request's RSS.
        self.artifact = dataclasses.replace(artifact, model_bytes=b"")
        self._outputs = self._check_against_manifest()
        # Only the optional eye score reads the skin fraction: skip it per request unless the gate has one.
        self._stats_need_skin = quality.EyeScore.from_gate(self.manifest.gate) is not None
        try:
            outputs = self.warm_up()
        except NonFiniteOutputError as exc:
            raise ModelLoadError(
                f"{artifact.source} loads but {exc} on a small synthetic photo preprocessed as model.json's input "
                "says: its weights or its graph are broken, or model.json's input (mean, std) does not fit it; export "
                "it again (or roll back to the last version that served)"
            ) from exc
        except Exception as exc:  # the graph loaded but cannot run on the manifest's input
            raise ModelLoadError(
                f"{artifact.source} does not run on the manifest's input (1x3x{self.manifest.input.size}x"
                f"{self.manifest.input.size} float32): {exc}"
            ) from exc
        self._check_output_shapes(outputs)

    def _check_against_manifest(self) -> list[str]:
        spec, names = self.manifest.input, self.manifest.outputs
        inputs = {i.name: i for i in self.session.get_inputs()}
        if spec.name not in inputs:
            raise ModelLoadError(f"the manifest's input {spec.name!r} is not in the model (it has {sorted(inputs)})")
        shape = inputs[spec.name].shape
        expected = (3, spec.size, spec.size)
        # Symbolic dimensions ("N", "H") accept any size; only fixed ones must agree.
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise ModelLoadError(
                f"the model's input shape {shape} does not match the manifest's 3x{spec.size}x{spec.size}"
            )
        if inputs[spec.name].type != "tensor(float)":
            raise ModelLoadError(
                f"the model's input {spec.name!r} is {inputs[spec.name].type}; serving feeds float32 (tensor(float))"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        wanted = [n for _, n in names.roles()]
        # The manifest refuses this; a manifest changed in code (model_copy) is not validated again.
        shared = sorted({name for name, _, _ in names.shared_outputs()})
        if shared:
            raise ModelLoadError(f"the manifest names the graph outputs {shared} for more than one role each")
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise ModelLoadError(
                f"the manifest names outputs {missing} that the model lacks (it has {sorted(outputs)})"
            )
        width = outputs[names.logits].shape[-1]
        if isinstance(width, int) and width != len(self.manifest.classes):
            raise ModelLoadError(
                f"the model has {width} logits but the manifest lists {len(self.manifest.classes)} classes"
            )
        self._check_gate_blocks()
        return wanted

    def _check_output_shapes(self, outputs: dict[str, np.ndarray]) -> None:
        # Declared shapes may be symbolic ("N", "C"): what one image really gives is checked here, because
        # every request reads these shapes, and a wrong one fails every request or (a distance read from a
        # wider output) serves a wrong gate silently.
        names, classes = self.manifest.outputs, len(self.manifest.classes)
        # By role, not by output name: keyed by name, a second role naming the same output replaced the first's check.
        expected: dict[str, tuple[str, Any]] = {
            "logits": ("(1, classes)", lambda s: s == (1, classes)),
            "cam": ("(1, classes, h, w)", lambda s: len(s) == 4 and s[:2] == (1, classes)),
            "ood_distance": ("one value", lambda s: int(np.prod(s)) == 1),
            "mid_distance": ("one value", lambda s: int(np.prod(s)) == 1),
            "embedding": ("one image's values, (1, ...)", lambda s: len(s) >= 2 and s[0] == 1),
        }
        for role, name in names.roles():
            wanted, fits = expected[role]
            if not fits(tuple(outputs[name].shape)):
                raise ModelLoadError(
                    f"the model's output {name!r} has shape {tuple(outputs[name].shape)} for one image; serving "
                    f"reads outputs.{role} as {wanted} (the manifest lists {classes} classes): the manifest does not "
                    "match the model"
                )
        probe = quality.EyeProbe.from_gate(self.manifest.gate)
        if probe is not None and names.embedding and outputs[names.embedding][0].size != probe.mean.size:
            raise ModelLoadError(
                f"the manifest's gate.eye_probe has {probe.mean.size} weights; the model's embedding has "
                f"{outputs[names.embedding][0].size} values"
            )

    def _check_gate_blocks(self) -> None:
        # Checked here, not per request: a probe the embedding cannot feed would fail every screening.
        # The eye score too: a malformed one would fail every screening, or (a NaN) never refuse.
        for block, parse in (("eye_score", quality.EyeScore.from_gate), ("eye_probe", quality.EyeProbe.from_gate)):
            try:
                parse(self.manifest.gate)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:  # an int too large for a float
                raise ModelLoadError(f"the manifest's gate.{block} is malformed: {exc!r}") from exc
        probe = quality.EyeProbe.from_gate(self.manifest.gate)
        if probe is None:
            return
        if not self.manifest.outputs.embedding:
            raise ModelLoadError("the manifest's gate has an eye_probe but names no embedding output to feed it")

    @classmethod
    def from_settings(cls, settings: Settings, s3_client: Any | None = None) -> Classifier:
        """Resolve, verify and load the model the settings name."""
        artifact = resolve_model(settings, s3_client)
        smallest = artifact.manifest.gate.min_side  # the smallest photo the gate grades
        if smallest * smallest > PILLOW_PIXEL_CEILING:
            raise ModelLoadError(
                f"the manifest of {artifact.source} sets gate.min_side {smallest}: no photo the decoder can take "
                f"(at most {PILLOW_PIXEL_CEILING} pixels) is that large, so every photo would be ungradable; fix "
                "the manifest"
            )
        if settings.max_image_side < smallest or settings.max_image_pixels < smallest * smallest:
            raise ConfigError(
                f"MAX_IMAGE_SIDE={settings.max_image_side} and MAX_IMAGE_PIXELS={settings.max_image_pixels} refuse "
                f"every photo this model can grade (at least {smallest}x{smallest} px): raise them"
            )
        limits = DecodeLimits(max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
        return cls(artifact, intra_op_threads=settings.ort_intra_op_threads, limits=limits)

    @property
    def model_info(self) -> dict[str, str]:
        """Name, version and sha256 of the loaded model."""
        return {"name": self.manifest.name, "version": self.manifest.version, "sha256": self.artifact.sha256}

    def warm_up(self) -> dict[str, np.ndarray]:
        """One run on a small synthetic photo through the real preprocessing, so the first request does not pay for
        lazy allocations and a manifest whose preprocessing breaks the model fails here; returns its outputs."""
        # Zeros skipped the resize, the crop and the normalisation: a std that overflowed, or a crop that scaled
        # every photo to 22400 px, passed init and failed every request. Ramps from black to white and back every
        # 32 px, so that even a centre crop holds the normalisation's extremes; 96x72 keeps it ~1 ms.
        ramp = np.abs(np.arange(96) % 32 - 16) * 255 // 16
        across = np.tile(ramp.astype(np.uint8), (72, 1))
        down = np.tile(ramp[:72, None].astype(np.uint8), (1, 96))
        pixels = np.stack([across, 255 - across, down], axis=2)
        return self.run(preprocess(Image.fromarray(pixels, "RGB"), self.manifest.input)[None])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs for a preprocessed NCHW batch."""
        values = self.session.run(self._outputs, {self.manifest.input.name: batch})
        # A few thousand values: microseconds, against a run's milliseconds.
        broken = [name for name, value in zip(self._outputs, values, strict=True) if not np.isfinite(value).all()]
        if broken:
            raise NonFiniteOutputError(f"the model gives NaN or infinite values in its outputs {broken}")
        return dict(zip(self._outputs, values, strict=True))

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a batch of logits."""
        return softmax(logits, self.manifest.temperature)

    def decide(self, probs: np.ndarray) -> tuple[str, bool]:
        """Label and referral from calibrated probabilities and the manifest's threshold."""
        pos = self.manifest.positive_index
        referral = round(float(probs[pos]), PROBABILITY_DECIMALS) >= self.manifest.threshold
        if referral:
            return self.manifest.positive_class, True
        others = [i for i in range(len(probs)) if i != pos]
        return self.manifest.classes[max(others, key=lambda i: probs[i])], False

    def measure(self, data: bytes, *, skin: bool = True) -> Measurement:
        """The serving path's measurement of one encoded image (the gate calibration screens with this).

        ``skin`` computes the skin-colour fraction, which only a gate with an eye score reads.
        """
        decoded, tensor = load_for_model(data, self.manifest.input, self.limits)
        return self._measurement(decoded, tensor, self.run(tensor[None]), skin=skin)

    def gate_verdict(self, measured: Measurement, gate: GateThresholds | None = None) -> quality.Quality:
        """Gradable or not, by ``gate`` (the manifest's by default): the serving rule, ``quality.assess``."""
        return quality.assess(
            measured.stats,
            measured.ood_distance,
            self.manifest.gate if gate is None else gate,
            measured.embedding,
            mid_distance=measured.mid_distance,
        )

    def judge(self, measured: Measurement) -> tuple[str, bool, quality.Quality]:
        """Label, referral and the gate's verdict for a measured photo, as the service answers."""
        verdict = self.gate_verdict(measured)
        if not verdict.gradable:
            # An ungradable photo is not evidence of health: it is referred for a better photo or an exam.
            return UNGRADABLE, True, verdict
        label, referral = self.decide(measured.probabilities)
        return label, referral, verdict

    def predict_bytes(self, data: bytes, *, explain: bool = False) -> Prediction:
        """Screen one encoded image. Raises ``imaging.ImageError`` for input that is not a usable image."""
        t0 = time.perf_counter()
        decoded, tensor = load_for_model(data, self.manifest.input, self.limits)
        t1 = time.perf_counter()
        outputs = self.run(tensor[None])
        t2 = time.perf_counter()
        measured = self._measurement(decoded, tensor, outputs, skin=self._stats_need_skin)
        label, referral, verdict = self.judge(measured)
        heatmap = self.heatmap(decoded, data, outputs, half=measured.deciding_half) if explain else None
        t3 = time.perf_counter()
        timing = {
            "decode": round((t1 - t0) * 1000, 2),
            "inference": round((t2 - t1) * 1000, 2),
            "postprocess": round((t3 - t2) * 1000, 2),
            "total": round((t3 - t0) * 1000, 2),
        }
        probabilities = {
            c: round(float(p), PROBABILITY_DECIMALS)
            for c, p in zip(self.manifest.classes, measured.probabilities, strict=True)
        }
        return Prediction(label, probabilities, referral, verdict, timing, heatmap, measured.views)

    def _measurement(
        self, decoded: DecodedImage, tensor: np.ndarray, outputs: dict[str, np.ndarray], *, skin: bool
    ) -> Measurement:
        names = self.manifest.outputs
        probabilities, views, deciding_half = self._most_suspicious_view(decoded, outputs)
        return Measurement(
            probabilities=probabilities,
            logits=outputs[names.logits][0],
            views=views,
            stats=quality.tensor_stats(tensor, self.manifest.input, decoded.image, decoded.original_size, skin=skin),
            ood_distance=_scalar(outputs, names.ood_distance),
            mid_distance=_scalar(outputs, names.mid_distance),
            embedding=_embedding(outputs, names.embedding),
            deciding_half=deciding_half,
        )

    def _most_suspicious_view(
        self, decoded: DecodedImage, outputs: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, float] | None, tuple[str, dict[str, np.ndarray]] | None]:
        """The probabilities of the most suspicious view, each view's P(positive), and the deciding half if any.

        Only a half the gate passes on its own is a view: a blank band or a strip of cheek beside an eye is no
        evidence of a cataract (one such band turned a clear eye's 0.008 into a referral).
        """
        output = self.manifest.outputs.logits
        whole = self.calibrated(outputs[output])[0]
        spec, pos = self.manifest.input, self.manifest.positive_index
        halves = split_in_two(decoded.image, spec=spec, original_size=decoded.original_size)
        if not halves:
            return whole, None, None
        half_sizes = half_boxes(*decoded.original_size)
        runs: dict[str, dict[str, np.ndarray]] = {}
        for name, half in halves.items():
            tensor = preprocess(half, spec)
            run = self.run(tensor[None])  # one at a time: a model exported with a fixed batch of 1 runs them too
            left, top, right, bottom = half_sizes[name]
            # The skin fraction whenever the gate reads it, whatever the caller asked of the whole photo's statistics:
            # without it, a gate with an eye score refuses every half.
            if self._passes_gate(run, tensor, half, (right - left, bottom - top), skin=self._stats_need_skin):
                runs[name] = run
        probs = {"whole": whole, **{name: self.calibrated(run[output])[0] for name, run in runs.items()}}
        views = {name: round(float(p[pos]), PROBABILITY_DECIMALS) for name, p in probs.items()}
        decider = max(probs, key=lambda name: probs[name][pos])  # the whole photo first, so it wins a tie
        return probs[decider], views, (None if decider == "whole" else (decider, runs[decider]))

    def _passes_gate(
        self,
        outputs: dict[str, np.ndarray],
        tensor: np.ndarray,
        image: Image.Image,
        original_size: tuple[int, int],
        *,
        skin: bool,
    ) -> bool:
        """Whether the gate grades a view (``image``, preprocessed to ``tensor``, run to ``outputs``) on its own."""
        names = self.manifest.outputs
        stats = quality.tensor_stats(tensor, self.manifest.input, image, original_size, skin=skin)
        verdict = quality.assess(
            stats,
            _scalar(outputs, names.ood_distance),
            self.manifest.gate,
            _embedding(outputs, names.embedding),
            mid_distance=_scalar(outputs, names.mid_distance),
        )
        return verdict.gradable

    def heatmap(
        self,
        decoded: DecodedImage,
        data: bytes,
        outputs: dict[str, np.ndarray],
        *,
        half: tuple[str, dict[str, np.ndarray]] | None = None,
    ) -> str | None:
        """The class-activation map of the view that decided, over the photo, as a base64 PNG (``None`` without CAM).

        ``decoded`` is the model's decode of ``data``; the overlay reuses it unless it is a reduced JPEG draft
        too small to draw on. With ``half`` (a half of the photo decided: its name and outputs), that half's map is
        drawn over that half, and none elsewhere: the whole photo's map explained a view that did not decide.
        """
        names = self.manifest.outputs
        if not names.cam:
            return None
        source, region = (outputs, None) if half is None else (half[1], half[0])
        cam = source[names.cam][0, self.manifest.positive_index]
        spec = self.manifest.input
        photo = decoded.image
        if decoded.reduced and max(photo.size) < OVERLAY_MIN_SIDE:  # a blurry draft: decode a sharper copy
            photo = decode_image(data, self.limits, longest_side=OVERLAY_SIDE, fill=spec.fill_rgb).image
        return explanation.overlay_png(
            photo, cam, spec, max_side=OVERLAY_SIDE, region=None if region is None else half_boxes(*photo.size)[region]
        )


def _scalar(outputs: dict[str, np.ndarray], name: str | None) -> float | None:
    return float(outputs[name].reshape(-1)[0]) if name else None


def _embedding(outputs: dict[str, np.ndarray], name: str | None) -> np.ndarray | None:
    return outputs[name][0].astype(np.float32) if name else None


def split_in_two(
    image: Image.Image, *, spec: InputSpec | None = None, original_size: tuple[int, int] | None = None
) -> dict[str, Image.Image]:
    """The two halves of a photo at least ``SPLIT_ASPECT`` times as long as it is high (left and right of the
    photo, or top and bottom), each likely to frame one eye; no halves for a photo less elongated.

    With ``spec``, a photo far larger than the model needs is first reduced (box filter, no full-size copy), so
    that each half keeps at least twice what the model's resize needs (``decode_side``) on the side that resize
    sizes: the longer side for a letterbox, the shorter one otherwise. The crops stay small, and never short.
    """
    width, height = image.size
    # The photo's own shape decides (``original_size``): a reduced JPEG draft rounds each side up on its own, which
    # moved 2402x1201 (601x301) below 2:1, and 2399x1200 (600x300) up to it.
    long_side, short_side = max(original_size or image.size), min(original_size or image.size)
    if long_side < SPLIT_ASPECT * short_side:
        return {}
    if spec is not None:
        half = sorted((max(width, height) // 2, min(width, height)))  # a half's (shorter, longer) side
        kept = half[1] if spec.resize == "letterbox" else half[0]
        factor = kept // (2 * decode_side(spec))
        if factor >= 2:
            image = image.reduce(factor)
            width, height = image.size
    return {name: image.crop(box) for name, box in half_boxes(width, height).items()}


def half_boxes(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """The boxes of ``split_in_two``'s halves in a ``width`` x ``height`` image: left and right, or top and bottom."""
    if width >= height:
        return {"left": (0, 0, width // 2, height), "right": (width - width // 2, 0, width, height)}
    return {"top": (0, 0, width, height // 2), "bottom": (0, height - height // 2, width, height)}


def load_classifier(model_dir: Path, *, intra_op_threads: int = 1) -> Classifier:
    """A classifier for a local model folder (used by training's evaluation and the CLI)."""
    from .model_source import load_baked

    return Classifier(load_baked(model_dir), intra_op_threads=intra_op_threads)
