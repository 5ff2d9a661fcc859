"""The bundled model on real eye photos from ../shared (skips with a reason where ../shared is absent).

These are the photos it was trained on, so this checks the shipped artefact and the serving path
(decode → preprocess → ONNX → calibration → gate), not generalisation: the model card reports the
grouped cross-validation estimate for that.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cataract_inference.classifier import Classifier, load_classifier
from cataract_inference.model_source import sha256_of


@pytest.fixture(scope="module")
def classifier(bundled_model_dir: Path) -> Classifier:
    return load_classifier(bundled_model_dir)


def test_bundled_manifest_is_complete(classifier: Classifier, bundled_model_dir: Path) -> None:
    manifest = classifier.manifest
    assert manifest.sha256 == sha256_of(bundled_model_dir / "model.onnx")
    assert manifest.classes == ("cataract", "normal")
    assert 0.0 < manifest.threshold < 1.0 and manifest.temperature > 0
    assert manifest.backbone is not None and manifest.backbone.licence
    assert manifest.metrics, "the manifest carries the evaluation metrics"
    assert manifest.outputs.cam and manifest.outputs.ood_distance
    assert (bundled_model_dir / "MODEL_CARD.md").read_text().lower().count("not a diagnos") >= 1


def test_predictions_on_real_photos(classifier: Classifier, shared_photos: Path) -> None:
    rng = random.Random(0)
    sample = []
    for label in ("cataract", "normal"):
        files = sorted((shared_photos / label).glob("*.png"))
        sample += [(path, label) for path in rng.sample(files, 30)]
    correct = referred_cataracts = gradable = 0
    for path, label in sample:
        result = classifier.predict_bytes(path.read_bytes())
        assert abs(sum(result.probabilities.values()) - 1.0) < 1e-5
        if result.label == "ungradable":
            continue
        gradable += 1
        correct += result.label == label
        referred_cataracts += label == "cataract" and result.referral
    assert gradable >= 0.9 * len(sample), "real eye photos pass the gradability gate"
    assert correct / gradable >= 0.9, f"accuracy {correct}/{gradable} on photos it was trained on"
    assert referred_cataracts >= 0.9 * 30 * gradable / len(sample), "cataracts are referred"


def _jpeg(array: Any) -> bytes:
    from cataract_inference.drawing import encode

    return encode(Image.fromarray(array).convert("RGB"))


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "page", "rocket"])
def test_the_issues_examples_are_ungradable_not_a_diagnosis(classifier: Classifier, name: str) -> None:
    """A cat, a face, a cup, a document, a landscape: never "cataract, 0.99" (none of them fitted the gate)."""
    import skimage.data

    result = classifier.predict_bytes(_jpeg(getattr(skimage.data, name)()))
    assert result.label == "ungradable" and result.referral
    assert any(r.startswith("not_an_eye") for r in result.quality.reasons), result.quality.reasons
    assert classifier.manifest.gate.max_mid_distance is not None
    assert result.quality.scores["mid_distance"] > classifier.manifest.gate.max_mid_distance


@pytest.mark.parametrize(("kind", "seed"), [("cataract", 7), ("normal", 234)])
def test_the_sample_events_drawings_pass_the_gate(classifier: Classifier, kind: str, seed: int) -> None:
    """The drawn eyes in events/ (with their photo finish) are gradable, so the demo shows a screening result."""
    from cataract_inference.drawing import draw_eye, encode

    result = classifier.predict_bytes(encode(draw_eye(kind, seed=seed)))
    assert result.label in ("cataract", "normal"), result.quality.reasons
