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
    variants = {"fp32": {"validation": {"ece": 0.5}}}
    manifest = load_manifest(model / "model.json")
    manifest = manifest.model_copy(update={"metrics": {"validation": stale, "variants": variants}})

    recounted = evaluate.recount_validation(manifest, model, files, labels, why="a new view", today="2030-01-02")
    m = recounted.metrics
    assert m["validation"]["ece"] == round(fresh["ece"], 4) != 0.5
    # The fitted values stay unrounded, and the export's side-by-side comparison of variants stays as it was.
    assert (m["validation"]["threshold"], m["validation"]["temperature"]) == (0.123456789, 1.23456789)
    assert m["variants"] == variants
    assert set(m["robustness_validation"]) == set(evaluate.DEGRADATIONS)
    moved = m["validation_recounted"]["moved"]
    assert moved["validation.ece"] == [0.5, m["validation"]["ece"]]
    assert not any(key.startswith("validation.threshold") for key in moved)

    shown = recounted.model_copy(update={"metrics": {k: v for k, v in m.items() if k != "variants"}})
    write_manifest(shown, model / "model.json")  # (the card's fp32/int8 table needs whole variants: left out)
    text = " ".join(card.card_text(shown, model).split())
    assert "recounted on 2030-01-02 through the serving code of that day, not the export's (a new view)" in text
    assert f"validation.ece 0.5 → {m['validation']['ece']}" in text
