"""On our real training set, the audit must find the flaws its README lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from cataract_training import audit
from tests.conftest import SHARED_DATA as DATA
from tests.conftest import require_shared_data


@pytest.fixture(scope="module")
def report() -> dict:
    return audit.run_audit(require_shared_data(), progress=False).report


def test_counts(report: dict) -> None:
    assert report["counts"] == {"train/cataract": 241, "train/normal": 235}
    assert report["unreadable"] == []


def test_many_duplicates(report: dict) -> None:
    assert len(report["exact_duplicate_groups"]) >= 20
    assert report["distinct_photos"] < 0.8 * report["n_files"]
    assert report["largest_group"] >= 6  # "some photo appears six times"


def test_a_photo_in_both_classes(report: dict) -> None:
    assert report["conflicts"], "the README's cross-class photo was not found"
    assert all(c["labels"] == ["cataract", "normal"] for c in report["conflicts"])


def test_size_shortcut(report: dict) -> None:
    assert report["original_sizes_from"] == "manifest.csv"
    widths = {k: v["width"]["median"] for k, v in report["sizes"].items()}
    assert widths["cataract"] > 2 * widths["normal"]
    assert any(f.startswith("SIZE SHORTCUT") for f in report["findings"])


def test_the_shipped_gate_is_what_its_calibration_computes(tmp_path: Path) -> None:
    """Rerun the gate calibration on ../shared: the same thresholds as model.json, and the issue's targets met."""
    require_shared_data()
    from cataract_inference.manifest import load_manifest
    from cataract_training import gate

    model_dir = Path(__file__).resolve().parents[2] / "functions" / "inference" / "model"
    result = gate.calibrate(model_dir, DATA, tmp_path, write=False, progress=False)
    shipped = load_manifest(model_dir / "model.json").gate
    fields = ("min_side", "min_brightness", "max_brightness", "min_contrast", "min_sharpness")
    for field in (*fields, "max_ood_distance", "max_mid_distance"):
        assert result["gate"][field] == getattr(shipped, field), field
    report = result["report"]
    assert report["meets_targets"]
    assert "validation photos of 20261127-195611-mobilenet_v2 (97)" in report["eye_photos_for_distance"]
    assert report["held_out"]["eye_false_reject"]["value"] <= 0.03
    assert report["held_out"]["non_eye_reject"]["value"] >= 0.9
    assert "chelsea/orig" in report["named_examples"]["skimage:chelsea"]["rejected_variants"]
    # The image statistics were widened from the model's measured competence on degraded photos.
    competent = result["gate"]["calibration"]["competence"]["competent_levels"]
    assert competent == (shipped.model_extra or {})["calibration"]["competence"]["competent_levels"]
    assert competent["blur"] is not None
    held_blur = next(
        r for r in report["competence"]["held_out"] if r["axis"] == "blur" and r["level"] == competent["blur"]
    )
    assert held_blur["refused"]["k"] < held_blur["refused_tails_only"]["k"]
    assert held_blur["model_right"]["value"] >= 0.9


def test_the_manifests_validation_counts_are_the_shipped_gates() -> None:
    """GET /model serves these: they must count what the served model, gate included, answers today."""
    import json

    from cataract_inference.manifest import load_manifest
    from cataract_training import gate

    data = require_shared_data()
    model_dir = Path(__file__).resolve().parents[2] / "functions" / "inference" / "model"
    manifest = load_manifest(model_dir / "model.json")
    split = json.loads((gate.SPLITS_DIR / f"{manifest.metrics['training_run']['run']}.json").read_text())
    counts = gate.served_counts(
        model_dir, [data / key for key in split["val"]], [key.split("/")[0] for key in split["val"]]
    )
    validation = manifest.metrics["validation"]
    assert validation["n"] == len(split["val"])
    assert {k: validation[k] for k in counts} == counts
    shipped = manifest.metrics["variants"][manifest.precision]["validation"]
    assert {k: shipped[k] for k in counts} == counts
    for name, variant in manifest.metrics["variants"].items():
        if name != manifest.precision:  # no gate was calibrated for it: no gate counts to serve
            assert not set(counts) & set(variant["validation"]), name


def test_the_manifests_validation_figures_are_what_the_service_answers_today() -> None:
    """The card's validation column and robustness probes, recounted through today's serving code: a change to
    decoding or to the views the service decides on must recount them (evaluate.recount_validation)."""
    import json

    from cataract_inference.manifest import load_manifest
    from cataract_training import evaluate, gate

    data = require_shared_data()
    model_dir = Path(__file__).resolve().parents[2] / "functions" / "inference" / "model"
    manifest = load_manifest(model_dir / "model.json")
    split = json.loads((gate.SPLITS_DIR / f"{manifest.metrics['training_run']['run']}.json").read_text())
    files, labels = [data / key for key in split["val"]], [key.split("/")[0] for key in split["val"]]
    recounted = evaluate.recount_validation(manifest, model_dir, files, labels, why="a check", today="today").metrics
    recorded = manifest.metrics
    for key in ("validation", "robustness_validation"):
        assert recounted[key] == recorded[key], f"metrics.{key} is not what the service answers: recount it"
    assert recorded["variants"][manifest.precision]["validation"] == recorded["validation"]
