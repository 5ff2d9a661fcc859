"""What every answer must say of itself, whatever the model.json and the photo: property-based, over tiny models
with random manifests (class order, positive class name, threshold, temperature, resize, size, gate) and random
photos (flat, noisy or two-toned, PNG or JPEG, near 2:1 included).

The invariants a client relies on: the referral follows the answered probability and threshold; the label is the
positive class exactly when referred, or ``ungradable`` (always referred) exactly when the gate refuses; a photo at
least 2:1 is answered with the most suspicious of its views; ``explain`` changes nothing but the heat map.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cataract_inference.classifier import Classifier, Prediction, load_classifier
from cataract_inference.manifest import UNGRADABLE, Manifest
from tests.support.onnx_models import build_tiny_model

PROPERTIES = settings(
    max_examples=300,
    deadline=None,  # a new manifest builds a model on its first example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,
)
LENIENT = (("min_side", 8), ("min_brightness", 0.0), ("max_brightness", 1.0), ("min_contrast", 0.0))
STRICT = (("min_side", 16), ("min_brightness", 0.2), ("max_brightness", 0.8), ("min_contrast", 0.02))

ManifestKey = tuple[bool, str, float, float, str, int, tuple[tuple[str, float], ...]]
manifests = st.tuples(
    st.booleans(),  # the positive class listed first
    st.sampled_from(["cataract", "referable"]),
    st.floats(0.0, 0.999).map(lambda t: round(t, 4)),
    st.floats(0.05, 20.0).map(lambda t: round(t, 3)),
    st.sampled_from(["letterbox", "squash", "center_crop"]),
    st.sampled_from([16, 32, 48]),
    st.sampled_from([LENIENT, STRICT]),
)


@st.composite
def photos(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    """An encoded photo and its size."""
    if draw(st.booleans()):
        side = draw(st.integers(8, 120))
        ratio = draw(st.one_of(st.floats(0.3, 3.5), st.sampled_from([2.0, 1.99, 2.01, 0.5])))
        width, height = max(1, round(side * ratio)), side
    else:  # just either side of 2:1, where a JPEG's reduced draft, each side rounded up, lands on the other side
        width, height = draw(st.sampled_from([(239, 120), (241, 121), (479, 240), (481, 241), (121, 241)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["flat", "noise", "halves"]))
    if kind == "flat":
        pixels = np.full((height, width, 3), draw(st.integers(0, 255)), np.uint8)
    elif kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), draw(st.integers(0, 255)), np.uint8)
        pixels[:, width // 2 :] = draw(st.integers(0, 255))
        pixels = np.clip(pixels.astype(int) + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, draw(st.sampled_from(["PNG", "JPEG"])))
    return buffer.getvalue(), (width, height)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A classifier per manifest, built on first use."""
    built: dict[ManifestKey, Classifier] = {}
    root = tmp_path_factory.mktemp("decisions")

    def get(key: ManifestKey) -> Classifier:
        if key not in built:
            first, positive, threshold, temperature, resize, size, gate = key
            classes = [positive, "normal"] if first else ["normal", positive]
            folder: Path = root / f"m{len(built)}"
            build_tiny_model(
                folder,
                size=size,
                gate=dict(gate),
                classes=classes,
                positive_class=positive,
                threshold=threshold,
                temperature=temperature,
                input={"size": size, "resize": resize},
            )
            built[key] = load_classifier(folder)
        return built[key]

    return get


def problems(answer: Prediction, manifest: Manifest, size: tuple[int, int]) -> list[str]:
    """Every way ``answer`` contradicts itself or the manifest."""
    found = []
    probabilities = answer.probabilities
    p = probabilities[manifest.positive_class]
    if set(probabilities) != set(manifest.classes) or not all(0.0 <= v <= 1.0 for v in probabilities.values()):
        found.append(f"probabilities {probabilities}")
    if abs(sum(probabilities.values()) - 1.0) > 1e-5:
        found.append(f"probabilities sum to {sum(probabilities.values())}")
    if answer.quality.gradable == (answer.label == UNGRADABLE):
        found.append(f"label {answer.label} beside gradable {answer.quality.gradable}")
    if answer.label == UNGRADABLE:
        if not answer.referral:
            found.append("ungradable, not referred")
    elif answer.referral != (p >= manifest.threshold) or answer.referral != (answer.label == manifest.positive_class):
        found.append(f"label {answer.label}, referral {answer.referral}, P {p}, threshold {manifest.threshold}")
    wide = max(size) >= 2 * min(size)
    if answer.views is not None:
        if "whole" not in answer.views or p != max(answer.views.values()):
            found.append(f"P {p} is not the most suspicious of the views {answer.views}")
    elif wide:
        found.append(f"a {size} photo answered without views")
    if answer.views is not None and not wide:
        found.append(f"a {size} photo, under 2:1, answered with views {answer.views}")
    return found


@PROPERTIES
@given(key=manifests, photo=photos())
def test_every_answer_is_consistent_with_itself_and_its_manifest(
    classifiers: Any, key: ManifestKey, photo: tuple[bytes, tuple[int, int]]
) -> None:
    data, size = photo
    classifier = classifiers(key)
    answer = classifier.predict_bytes(data)
    assert not problems(answer, classifier.manifest, size), (problems(answer, classifier.manifest, size), answer)
    again = classifier.predict_bytes(data, explain=True)
    assert (again.label, again.probabilities, again.referral, again.views, again.quality) == (
        answer.label,
        answer.probabilities,
        answer.referral,
        answer.views,
        answer.quality,
    ), "explain=true changed the answer"
