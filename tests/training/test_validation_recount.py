"""Recounting a model's validation figures through today's serving code, and what the card then says."""

from __future__ import annotations

import shutil
from pathlib import Path

from synthetic_eyes import make_folder

from cataract_inference.manifest import load_manifest, write_manifest
from cataract_training import card, evaluate


def test_a_recount_replaces_the_stale_figures_and_the_card_says_what_moved(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    photos = make_folder(tmp_path / "photos", n_per_class=4)
    files = sorted(photos.rglob("*.png"))
    labels = [f.parent.name for f in files]
    fresh = evaluate.evaluate_folder(model, files, labels)
    stale = {**fresh, "ece": 0.5, "threshold": 0.123456789, "temperature": 1.23456789}
    manifest = load_manifest(model / "model.json")
    manifest = manifest.model_copy(update={"metrics": {"validation": stale}})

    recounted = evaluate.recount_validation(manifest, model, files, labels, why="a new view", today="2030-01-02")
    m = recounted.metrics
    ece = m["validation"]["ece"]
    assert ece == round(fresh["ece"], 4) != 0.5
    # The fitted values stay unrounded.
    assert (m["validation"]["threshold"], m["validation"]["temperature"]) == (0.123456789, 1.23456789)
    assert set(m["robustness_validation"]) == set(evaluate.DEGRADATIONS)
    assert m["validation_recounted"]["moved"]["validation.ece"] == [0.5, ece]
    assert not any(key.startswith("validation.threshold") for key in m["validation_recounted"]["moved"])

    write_manifest(recounted, model / "model.json")
    text = " ".join(card.card_text(recounted, model).split())
    assert "recounted through the serving code of 2030-01-02 (a new view), not the export's" in text
    assert f"validation.ece 0.5 → {ece}" in text
    assert "robustness_validation.gaussian_blur_2px.ece None → " in text  # none recorded before: each figure

    # A second recount keeps the first's history and each figure's export value.
    drifted = recounted.model_copy(update={"metrics": {**m, "validation": {**m["validation"], "ece": 0.7}}})
    again = evaluate.recount_validation(drifted, model, files, labels, why="a fix", today="2030-02-03").metrics
    assert [r["date"] for r in again["validation_recounted"]["history"]] == ["2030-01-02", "2030-02-03"]
    assert again["validation_recounted"]["moved"]["validation.ece"] == [0.5, ece]


def test_the_shipped_variant_is_recounted_and_the_card_says_the_other_is_the_exports(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    photos = make_folder(tmp_path / "photos", n_per_class=3)
    files = sorted(photos.rglob("*.png"))
    labels = [f.parent.name for f in files]
    manifest = load_manifest(tiny_model_dir / "model.json")
    variants = {"fp32": {"validation": {"ece": 0.5}, "size_bytes": 1}, "int8": {"validation": {"ece": 0.4}}}
    manifest = manifest.model_copy(update={"precision": "fp32", "metrics": {"validation": {}, "variants": variants}})
    m = evaluate.recount_validation(manifest, tiny_model_dir, files, labels, why="x", today="2030-01-02").metrics
    # As the gate calibration keeps them: the shipped variant's record is the served one.
    assert m["variants"]["fp32"]["validation"] == m["validation"] and m["variants"]["fp32"]["size_bytes"] == 1
    assert m["variants"]["int8"] == variants["int8"]
    note = card._recount_note(m["validation_recounted"], m["variants"], "fp32")
    assert "The fp32/int8 table's int8 column keeps the export's figures" in note


def test_a_figure_changed_between_recounts_is_shown_at_its_value_now(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Another tool (the gate calibration) may change a figure between two recounts: the card's "since the export"
    must give the record's value now, not the one the last recount saw."""
    photos = make_folder(tmp_path / "photos", n_per_class=3)
    files = sorted(photos.rglob("*.png"))
    labels = [f.parent.name for f in files]
    manifest = load_manifest(tiny_model_dir / "model.json")
    fresh = evaluate.evaluate_folder(tiny_model_dir, files, labels)
    first = {"history": [{"date": "2030-01-02", "why": "a view"}], "moved": {"validation.gate_ungradable": [5, 9]}}
    manifest = manifest.model_copy(update={"metrics": {"validation": fresh, "validation_recounted": first}})
    m = evaluate.recount_validation(manifest, tiny_model_dir, files, labels, why="a fix", today="2030-02-03").metrics
    assert m["validation_recounted"]["moved"]["validation.gate_ungradable"] == [5, m["validation"]["gate_ungradable"]]
    # A figure back at its export value has not moved since the export.
    back = {**first, "moved": {"validation.gate_ungradable": [m["validation"]["gate_ungradable"], 9]}}
    again = manifest.model_copy(update={"metrics": {"validation": fresh, "validation_recounted": back}})
    m = evaluate.recount_validation(again, tiny_model_dir, files, labels, why="a fix", today="2030-02-03").metrics
    assert "validation.gate_ungradable" not in m["validation_recounted"]["moved"]


def test_a_recount_record_in_its_first_format_keeps_its_date_and_its_note() -> None:
    """Written by 31ae0c7: date and why at the top, no history."""
    first = {"date": "2026-11-29", "why": "the two-halves view", "moved": {"validation.ece": [0.033, 0.0384]}}
    assert evaluate.recount_history(first) == [{"date": "2026-11-29", "why": "the two-halves view"}]
    note = card._recount_note(first, None, "fp32")
    assert "serving code of 2026-11-29 (the two-halves view)" in note and "validation.ece 0.033 → 0.0384" in note
