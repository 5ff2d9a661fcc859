"""The gate calibration's logic, on synthetic signals: thresholds, budgets, fusion, cross-fitting, manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cataract_inference import quality
from cataract_inference.manifest import GateThresholds, load_manifest
from cataract_training import gate as cal
from tests.support.onnx_models import build_tiny_model


def _sig(
    ood: float = 40.0,
    skin: float = 0.7,
    *,
    side: int = 300,
    brightness: float = 0.5,
    contrast: float = 0.2,
    sharpness: float = 0.01,
    embedding: np.ndarray | None = None,
) -> cal.Signals:
    stats = quality.ImageStats(side, brightness, contrast, sharpness, skin)
    return cal.Signals(stats, ood, embedding)


def _eyes(n: int, seed: int = 0) -> list[cal.Signals]:
    rng = np.random.default_rng(seed)
    return [
        _sig(
            float(rng.normal(40, 6)),
            float(np.clip(rng.normal(0.7, 0.12), 0.05, 1.0)),
            side=int(rng.integers(60, 512)),
            brightness=float(rng.uniform(0.3, 0.7)),
            contrast=float(rng.uniform(0.1, 0.3)),
            sharpness=float(rng.uniform(0.002, 0.05)),
        )
        for _ in range(n)
    ]


def _non_eyes(n: int, seed: int = 1) -> list[cal.Signals]:
    rng = np.random.default_rng(seed)
    # Half look like eyes to the distance but have no skin; half have skin but are far away.
    return [
        _sig(float(rng.normal(45, 5)), float(rng.uniform(0.0, 0.1)))
        if i % 2
        else _sig(float(rng.normal(70, 8)), float(rng.uniform(0.3, 0.9)))
        for i in range(n)
    ]


def test_threshold_for_budget_rejects_exactly_the_budget() -> None:
    values = np.arange(100, dtype=float)
    none = np.zeros(100, dtype=bool)
    t = cal.threshold_for_budget(values, none, 0.05, reject_high=True)
    assert (values > t).sum() == 5
    t = cal.threshold_for_budget(values, none, 0.05, reject_high=False)
    assert (values < t).sum() == 5
    # Photos already rejected by another check spend the budget first.
    already = np.zeros(100, dtype=bool)
    already[:3] = True
    t = cal.threshold_for_budget(values, already, 0.05, reject_high=True)
    assert ((values > t) | already).sum() == 5


def test_threshold_for_budget_never_rejects_everything() -> None:
    values = np.array([1.0, 2.0, 3.0])
    t = cal.threshold_for_budget(values, np.zeros(3, dtype=bool), 1.0, reject_high=True)
    assert (values <= t).sum() >= 1


def test_stat_thresholds_sit_outside_the_real_photos() -> None:
    eyes = _eyes(400)
    stats = cal.fit_stat_thresholds(eyes)
    assert cal.MIN_SIDE_RANGE[0] <= stats["min_side"] <= cal.MIN_SIDE_RANGE[1]
    b = [s.stats.brightness for s in eyes]
    assert stats["min_brightness"] < min(b) and stats["max_brightness"] > max(b)
    assert stats["min_contrast"] < min(s.stats.contrast for s in eyes)
    gate = GateThresholds(**stats)
    assert cal.rejected(eyes, gate).mean() <= 0.01
    # A blank, dark or tiny image is rejected by them.
    assert cal.rejected([_sig(side=20), _sig(brightness=0.01), _sig(contrast=0.001), _sig(sharpness=0.0)], gate).all()


def test_distance_only_gate_meets_its_calibration_budget() -> None:
    eyes, non = _eyes(400), _non_eyes(200)
    gate = cal.fit_gate(eyes, eyes, target_false_reject=0.02, fused=False)
    assert gate.max_ood_distance is not None
    assert cal.rejected(eyes, gate).mean() <= 0.02
    assert "eye_score" not in (gate.model_extra or {})
    # The skinless look-alikes get through a distance threshold: that is why the fusion exists.
    assert cal.rejected(non, gate).mean() < 0.8


def test_fused_gate_rejects_more_non_eyes_at_the_same_budget() -> None:
    eyes, non = _eyes(400), _non_eyes(200)
    distance_only = cal.fit_gate(eyes, eyes, target_false_reject=0.02, fused=False)
    fused = cal.fit_gate(eyes, eyes, non, target_false_reject=0.02)
    assert cal.rejected(eyes, fused).mean() <= 0.02
    assert cal.rejected(non, fused).mean() > cal.rejected(non, distance_only).mean()
    assert cal.rejected(non, fused).mean() >= 0.9
    block = (fused.model_extra or {})["eye_score"]
    assert block["w_distance"] < 0 < block["w_skin"]  # farther is worse, more skin is better
    # Fresh data from the same distributions: the rates hold.
    assert cal.rejected(_eyes(400, seed=5), fused).mean() <= 0.05
    assert cal.rejected(_non_eyes(200, seed=6), fused).mean() >= 0.85


def test_fit_logistic_separates_separable_data() -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-2, 1, (100, 2)), rng.normal(2, 1, (100, 2))]
    y = np.r_[np.zeros(100), np.ones(100)]
    w, b = cal.fit_logistic(x, y)
    accuracy = (((x @ w + b) > 0) == (y > 0)).mean()
    assert accuracy > 0.95


def _embedded(n: int, direction: np.ndarray, seed: int) -> list[cal.Signals]:
    rng = np.random.default_rng(seed)
    return [_sig(embedding=(direction + rng.normal(0, 0.6, direction.size)).astype(np.float32)) for _ in range(n)]


def _ood(s: cal.Signals) -> float:
    assert s.ood_distance is not None
    return s.ood_distance


def _embedding(s: cal.Signals) -> np.ndarray:
    assert s.embedding is not None
    return s.embedding


def test_probe_threshold_comes_from_out_of_fold_scores() -> None:
    dim = 32
    rng = np.random.default_rng(0)
    eye_dir, other_dir = rng.normal(size=dim), rng.normal(size=dim)
    eyes, non = _embedded(200, eye_dir, 1), _embedded(120, other_dir, 2)
    groups = [f"e{i // 2}" for i in range(len(eyes))]  # pairs of near duplicates
    non_groups = [f"n{i // 3}" for i in range(len(non))]
    scored = [i % 2 == 0 for i in range(len(eyes))]
    oof = cal.out_of_fold_probe_scores(eyes, groups, non, non_groups, scored)
    assert oof.shape == (sum(scored),) and np.isfinite(oof).all()
    block = cal.fit_eye_probe(eyes, non)
    probe = quality.EyeProbe(
        mean=np.asarray(block["mean"], np.float32),
        weights=np.asarray(block["weights"], np.float32),
        bias=block["bias"],
        min_score=0.0,
    )
    in_sample = np.array([probe.score(_embedding(s)) for s, keep in zip(eyes, scored, strict=True) if keep])
    # Out-of-fold scores are less flattering than in-sample ones: that is the point of cross-fitting.
    assert oof.mean() < in_sample.mean()
    assert np.mean([probe.score(_embedding(s)) for s in _embedded(100, other_dir, 9)]) < 0 < in_sample.mean()


PROBE_DIM = 16


def _probe_directions() -> tuple[np.ndarray, np.ndarray]:
    """Where eye and non-eye embeddings cluster (``PROBE_DIM``-d)."""
    rng = np.random.default_rng(3)
    return rng.normal(size=PROBE_DIM), rng.normal(size=PROBE_DIM)


def _eyes_and_non_eyes_embedded(n_eyes: int = 200, n_non: int = 100) -> tuple[list[cal.Signals], list[cal.Signals]]:
    """Eye photos and non-eye images with embeddings along ``_probe_directions``."""
    eye_dir, other_dir = _probe_directions()

    def joined(signals: list[cal.Signals], embedded: list[cal.Signals]) -> list[cal.Signals]:
        return [cal.Signals(s.stats, s.ood_distance, e.embedding) for s, e in zip(signals, embedded, strict=True)]

    return (
        joined(_eyes(n_eyes), _embedded(n_eyes, eye_dir, 4)),
        joined(_non_eyes(n_non), _embedded(n_non, other_dir, 5)),
    )


def test_fit_gate_with_probe_records_a_probe_the_serving_rule_applies() -> None:
    dim = PROBE_DIM
    _, other_dir = _probe_directions()
    eyes, non = _eyes_and_non_eyes_embedded()
    probe_data = (eyes, [str(i) for i in range(200)], [str(i) for i in range(100)], [True] * 200)
    gate = cal.fit_gate(eyes, eyes, non, target_false_reject=0.03, probe_data=probe_data)
    extra = gate.model_extra or {}
    assert "eye_probe" in extra and len(extra["eye_probe"]["weights"]) == dim
    assert cal.rejected(eyes, gate).mean() <= 0.05
    # The budget (3% of 200 eyes: 6) is shared: the eye score gets half, as if fitted alone at 1.5%...
    alone = cal.fit_gate(eyes, eyes, non, target_false_reject=0.015)
    assert extra["eye_score"] == (alone.model_extra or {})["eye_score"]
    # ...and the probe the rest, set on out-of-fold scores: with what the rest of the gate refuses, exactly 6.
    oof = cal.out_of_fold_probe_scores(*probe_data[:2], non, *probe_data[2:])
    already = cal.rejected(eyes, alone)
    assert int(already.sum()) + int(np.sum(oof[~already] < extra["eye_probe"]["min_score"])) == 6
    # Without the embedding the probe cannot run: a look-alike that only the probe catches passes.
    kept = next(s for s, r in zip(eyes, cal.rejected(eyes, gate), strict=True) if not r)
    sneaky = cal.Signals(kept.stats, kept.ood_distance, (other_dir * 3).astype(np.float32))
    assert cal.rejected([sneaky], gate).all()
    assert quality.assess(sneaky.stats, sneaky.ood_distance, gate).gradable


def test_write_gate_replaces_only_the_gate_block(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    before = json.loads((model_dir / "model.json").read_text())
    block = {
        **GateThresholds(min_side=40, max_ood_distance=12.5).model_dump(),
        "calibration": {"held_out": {"eye_false_reject": {"value": 0.01}}},
    }
    cal.write_gate(model_dir, block)
    after = json.loads((model_dir / "model.json").read_text())
    assert after["gate"] == block
    assert {k: v for k, v in after.items() if k != "gate"} == {k: v for k, v in before.items() if k != "gate"}
    manifest = load_manifest(model_dir / "model.json")
    assert manifest.gate.min_side == 40 and (manifest.gate.model_extra or {})["calibration"]


def test_write_gate_refuses_a_gate_serving_cannot_load(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "m")
    before = (model_dir / "model.json").read_text()
    with pytest.raises(Exception, match="invalid"):
        cal.write_gate(model_dir, {"min_side": "not a number"})
    assert (model_dir / "model.json").read_text() == before


def test_non_eye_set_is_varied_and_split_by_source() -> None:
    items = cal.non_eye_items(seed=0, per_generator=2, variants=2)
    kinds = {it.kind for it in items}
    assert {"document", "landscape", "noise", "gradient", "shapes", "chart"} <= kinds
    assert {"skimage", "matplotlib", "face_afar"} <= kinds  # the wheels' sample images, no downloads
    assert all(not it.in_distribution for it in items)
    parts = cal.split_non_eyes(items, seed=0)
    side_of: dict[str, set[str]] = {}
    for it, part in zip(items, parts, strict=True):
        side_of.setdefault(it.group, set()).add(part)
    assert all(len(sides) == 1 for sides in side_of.values())  # no source straddles the split
    assert {cal.CALIBRATION, cal.HELD_OUT} == set(parts)
    from cataract_inference.imaging import decode_image

    for it in items[:: max(1, len(items) // 10)]:
        assert min(decode_image(it.data).image.size) >= 64


def test_eye_degradations_are_mild() -> None:
    from cataract_inference.drawing import draw_eye  # a drawing only exercises the code; nothing is fitted on it

    img = draw_eye("normal", size=(400, 300))
    out = list(cal.eye_degradations(img))
    assert {name for name, _, _ in out} == {"jpeg60", "half", "darker", "brighter", "soft"}
    for _, degraded, quality_ in out:
        assert 50 <= quality_ <= 95 and min(degraded.size) >= 150


def test_wilson_rate_has_an_interval() -> None:
    r = cal.rate(np.array([True] * 3 + [False] * 97))
    assert r["k"] == 3 and r["n"] == 100 and math.isclose(r["value"], 0.03)
    lo, hi = r["ci95"]
    assert lo < 0.03 < hi


def test_bundled_gate_is_calibrated_for_the_bundled_model(bundled_model_dir: Path) -> None:
    manifest = load_manifest(bundled_model_dir / "model.json")
    record = (manifest.gate.model_extra or {}).get("calibration")
    assert record, "model.json's gate has no calibration record: run python -m cataract_training.gate"
    assert record["model_sha256"] == manifest.sha256, (
        "the gate was calibrated for another model.onnx: rerun python -m cataract_training.gate"
    )
    held = record["held_out"]
    assert held["non_eye_reject"]["value"] >= cal.TARGET_OOD_REJECT
    assert held["eye_false_reject"]["value"] <= cal.TARGET_FALSE_REJECT
    assert held["eye_false_reject"]["n"] > 0 and len(held["non_eye_reject"]["ci95"]) == 2
    assert manifest.gate.max_ood_distance is not None


def _with_mid(signals: list[cal.Signals], centre: float, spread: float, seed: int) -> list[cal.Signals]:
    rng = np.random.default_rng(seed)
    return [cal.Signals(s.stats, s.ood_distance, s.embedding, float(abs(rng.normal(centre, spread)))) for s in signals]


def test_mid_cap_sits_beyond_a_high_quantile_of_calibration_eyes_and_catches_look_alikes() -> None:
    """Non-eyes that the embedding distance and skin cannot tell apart are caught by the mid-level cap."""
    eyes = _with_mid(_eyes(300), 15.0, 3.0, seed=3)
    # A few atypical eye images (stock graphics) far out: they must not set the cap.
    outliers = _with_mid(_eyes(5, seed=9), 45.0, 1.0, seed=5)
    # Look-alikes to every other signal (same distance and skin as eyes), but unfamiliar mid-level features.
    look_alikes = _with_mid(_eyes(100, seed=7), 40.0, 5.0, seed=4)
    gate = cal.fit_gate(eyes + outliers, eyes + outliers, target_false_reject=0.02, fused=False, mid=True)
    high = float(np.quantile([s.mid_distance for s in eyes + outliers], cal.MID_CAP_QUANTILE))
    assert gate.max_mid_distance is not None and gate.max_ood_distance is not None
    assert gate.max_mid_distance == pytest.approx(math.ceil(high * cal.MID_CAP_FACTOR * 1000) / 1000)
    assert gate.max_mid_distance < 40.0  # the outliers did not drag it out to them
    # Capped, not thresholded at a budget: the embedding distance keeps every calibration eye too.
    assert gate.max_ood_distance > max(_ood(s) for s in eyes)
    assert cal.rejected(eyes, gate).mean() <= 0.01
    assert cal.rejected(outliers, gate).all()
    assert cal.rejected(look_alikes, gate).mean() >= 0.95
    plain = cal.fit_gate(eyes, eyes, target_false_reject=0.02, fused=False)
    assert plain.max_mid_distance is None and cal.rejected(look_alikes, plain).mean() < 0.1
    reasons = cal.reasons_of(look_alikes, gate)
    assert reasons["not_an_eye"] >= 95


def test_mid_cap_needs_the_graph_output() -> None:
    with pytest.raises(ValueError, match="mid_distance"):
        cal.fit_gate(_eyes(50), _eyes(50), mid=True)


def test_rule_text_names_what_the_gate_applies() -> None:
    eyes = _with_mid(_eyes(100), 15.0, 3.0, seed=3)
    text = cal.rule_text(cal.fit_gate(eyes, eyes, fused=False, mid=True), 0.015)
    assert "mid_distance > max_mid_distance" in text and "eye_score" not in text
    text = cal.rule_text(cal.fit_gate(eyes, eyes, _non_eyes(100), mid=True), 0.015)
    assert "mid_distance" in text and "eye_score < eye_score.min_score" in text


def test_card_block_is_replaced_not_duplicated(tmp_path: Path) -> None:
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card\n\n## Intended use\n\nScreening aid.\n", encoding="utf-8")
    first = f"<!-- BEGIN {cal.CARD_BLOCK} (x) -->\n## Gradability gate\n\nold\n<!-- END {cal.CARD_BLOCK} -->"
    cal.write_card_block(tmp_path, first)
    second = first.replace("old", "new")
    cal.write_card_block(tmp_path, second)
    text = card.read_text(encoding="utf-8")
    assert text.count("## Gradability gate") == 1 and "new" in text and "old" not in text
    assert text.startswith("# Model card") and "Screening aid." in text
    cal.write_card_block(tmp_path / "nowhere", second)  # no card there: nothing to do, no error
    assert not (tmp_path / "nowhere").exists()


def test_run_name_of_a_split_in_runs_or_committed() -> None:
    assert cal.run_name(Path("runs/20261127-050604-mobilenet_v2/split.json")) == "20261127-050604-mobilenet_v2"
    assert cal.run_name(cal.SPLITS_DIR / "20261127-195611-mobilenet_v2.json") == "20261127-195611-mobilenet_v2"
    assert (cal.SPLITS_DIR / "20261127-195611-mobilenet_v2.json").is_file(), "the shipped run's split is committed"


@pytest.mark.parametrize("other", ["--eye-score", "--probe"])
def test_distance_only_refuses_a_second_gate(other: str, capsys: pytest.CaptureFixture[str]) -> None:
    # It used to ship the fused gate when given --eye-score, against its own help text.
    with pytest.raises(SystemExit) as exited:
        cal.main(["--model-dir", "m", "--data", "d", "--distance-only", other])
    assert exited.value.code == 2
    assert "embedding distance alone" in capsys.readouterr().err


def test_refreshing_the_validation_counts_recounts_the_shipped_variant_and_drops_the_others(tmp_path: Path) -> None:
    from PIL import Image

    from tests.support.images import encoded

    photos = []
    for name, img in {
        "bright": Image.new("RGB", (40, 30), (250, 250, 250)),  # the tiny model refers it
        "dark": Image.new("RGB", (40, 30), (20, 20, 20)),  # not referred
        "tiny": Image.new("RGB", (5, 5), (20, 20, 20)),  # under min_side: ungradable, so referred
    }.items():
        photos.append(tmp_path / f"{name}.png")
        photos[-1].write_bytes(encoded(img, "PNG"))
    stale = {"gate_ungradable": 9, "served_referrals": 9}
    model = build_tiny_model(
        tmp_path / "m",
        precision="fp32",
        metrics={
            "validation": {"n": 3, **stale, "accuracy": 0.9},
            "variants": {
                "fp32": {"validation": {"n": 3, **stale}},
                "int8": {"validation": {"n": 3, **stale, "accuracy": 0.8}},
            },
        },
    )
    labels = ["cataract", "normal", "normal"]
    cal.refresh_validation_counts(model, photos, labels)
    metrics = load_manifest(model / "model.json").metrics
    counts = cal.served_counts(model, photos, labels)
    assert {k: counts[k] for k in ("gate_ungradable", "served_referrals")} == {
        "gate_ungradable": 1,
        "served_referrals": 2,
    }
    assert metrics["validation"] == {"n": 3, **counts, "accuracy": 0.9}
    assert metrics["variants"]["fp32"]["validation"] == {"n": 3, **counts}
    assert metrics["variants"]["int8"]["validation"] == {"n": 3, "accuracy": 0.8}, "no gate was fitted for int8"
    # Counts over another set of photos are not overwritten with these.
    cal.refresh_validation_counts(model, photos[:2], labels[:2])
    assert load_manifest(model / "model.json").metrics["validation"]["gate_ungradable"] == 1


def test_the_gate_refuses_photos_that_are_not_the_ones_its_split_names(bundled_model_dir: Path) -> None:
    """The split matches photos by name: a folder of other photos must not be called "never seen by the fit"."""
    training_data = load_manifest(bundled_model_dir / "model.json").training_data
    split_path = cal.SPLITS_DIR / "20261127-195611-mobilenet_v2.json"
    split = json.loads(split_path.read_text())

    def check(data: str, keys: list[str], counts: dict[str, int] | None = None, explicit: Path | None = None) -> None:
        report = {"counts": training_data["counts"] if counts is None else counts}
        cal.check_data_is_the_splits(
            Path(data),
            bundled_model_dir,
            report=report,
            keys=keys,
            split=split,
            split_path=split_path,
            explicit=explicit,
        )

    every = split["train"] + split["val"]
    check("train", every)  # the training folder: passes
    check("train", [*every[1:], "cataract/new.jpg"])  # a photo deleted, one added since training: passes too
    with pytest.raises(ValueError, match=r"none of the photos under elsewhere is in the split .*--data"):
        check("elsewhere", ["cataract/mine_1.jpg"])
    other = {"cataract": 3, "normal": 4}
    with pytest.raises(ValueError, match=r"holds \{'cataract': 3, 'normal': 4\}, but 20261127-195611"):
        check("look-alike", every, other)
    check("look-alike", every, other, explicit=split_path)  # --split given: the user vouches for it


def test_the_gate_refuses_another_folder_that_shares_a_few_photo_names_with_the_split(bundled_model_dir: Path) -> None:
    """Names such as cataract/1.jpg recur across folders: a few in common let another folder's photos be called
    "never seen by the fit", --split given or not."""
    split_path = cal.SPLITS_DIR / "20261127-195611-mobilenet_v2.json"
    split = json.loads(split_path.read_text())
    named = len(set(split["train"]) | set(split["val"]))
    mine = split["val"][:5] + [f"normal/mine_{i}.jpg" for i in range(20)]
    for explicit in (None, split_path):
        with pytest.raises(ValueError) as refused:
            cal.check_data_is_the_splits(
                Path("mine"),
                bundled_model_dir,
                report={"counts": {"train/normal": 25}},
                keys=mine,
                split=split,
                split_path=split_path,
                explicit=explicit,
            )
        assert (
            f"{named - 5} of the {named} photos the split of 20261127-195611-mobilenet_v2 names are not under mine"
            in (str(refused.value))
        )
        assert "20 of its 25 photos are in neither list" in str(refused.value)


def test_a_split_named_by_a_bare_relative_path_keeps_its_run_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--split split.json` from inside runs/<run>/: the card said "validation photos of  (8)".
    (tmp_path / "20990101-000000-mine").mkdir()
    monkeypatch.chdir(tmp_path / "20990101-000000-mine")
    assert cal.run_name(Path("split.json")) == "20990101-000000-mine"
    assert cal.run_name(Path("../20990101-000000-mine/split.json")) == "20990101-000000-mine"
    assert cal.run_name(cal.SPLITS_DIR / "20261127-195611-mobilenet_v2.json") == "20261127-195611-mobilenet_v2"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('["cataract/a.jpg"]', "it holds a JSON list"),
        ('{"train": null, "val": []}', 'its "train" is not a list of names'),
        ('{"train": ["a.jpg"]}', 'its "val" is not a list of names'),
        ('{"train": [1], "val": []}', 'its "train" is not a list of names'),
        ("{not json", "it is not JSON"),
    ],
)
def test_a_malformed_split_is_refused_in_one_line_naming_the_file(
    text: str, why: str, bundled_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A list crashed with a traceback, null lists too; invalid JSON said "Expecting value" without naming the file.
    from PIL import Image

    (tmp_path / "eyes" / "cataract").mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 90, 80)).save(tmp_path / "eyes" / "cataract" / "a.png")
    split = tmp_path / "split.json"
    split.write_text(text)
    args = ["--model-dir", str(bundled_model_dir), "--data", str(tmp_path / "eyes"), "--split", str(split), "--quiet"]
    assert cal.main([*args, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {split} is not a training split: {why}") and err.count("\n") == 1, err


def test_target_false_reject_says_what_it_moves_where_no_threshold_is_set_at_a_budget(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default gate's caps sit at quantiles: the value moves only the report's comparison, which the user is told.
    asked: list[float] = []

    def fake(*_a: Any, target_false_reject: float, **_k: Any) -> dict[str, Any]:
        asked.append(target_false_reject)
        raise ValueError("stop here")

    monkeypatch.setattr(cal, "calibrate", fake)
    args = ["--model-dir", "m", "--data", "d", "--quiet", "--dry-run"]
    assert cal.main([*args, "--target-false-reject", "0.1"]) == 2  # calibrate's "stop here"
    err = capsys.readouterr().err
    assert err.startswith("note: --target-false-reject does not move the default gate's caps"), err
    for option in ("--no-mid", "--distance-only", "--eye-score", "--probe"):
        assert cal.main([*args, "--target-false-reject", "0.1", option]) == 2
        assert "note:" not in capsys.readouterr().err
    assert cal.main(args) == 2
    assert asked == [0.1, 0.1, 0.1, 0.1, 0.1, cal.DEFAULT_CALIBRATION_FALSE_REJECT]


def test_served_counts_score_the_answers_with_an_ungradable_photo_referred(tmp_path: Path) -> None:
    # The headline validation figures score the model's probability alone; as answered, a normal photo the gate
    # refuses is referred, which specificity must count.
    from PIL import Image

    from tests.support.images import encoded

    photos, labels = [], []
    for label, name, img in (
        ("Cataract", "bright", Image.new("RGB", (40, 30), (250, 250, 250))),  # referred by the model
        ("normal", "dark", Image.new("RGB", (40, 30), (20, 20, 20))),  # passed
        ("normal", "tiny", Image.new("RGB", (5, 5), (20, 20, 20))),  # ungradable, so referred
    ):
        # In a folder named like the other class: the labels come from the data's discovery, not folder names.
        photos.append(tmp_path / "cataract" / f"{name}.png")
        photos[-1].parent.mkdir(exist_ok=True)
        photos[-1].write_bytes(encoded(img, "PNG"))
        labels.append(label)
    served = cal.served_counts(build_tiny_model(tmp_path / "m"), photos, labels)["served"]
    assert (served["sensitivity"]["k"], served["sensitivity"]["n"]) == (1, 1)
    assert (served["specificity"]["k"], served["specificity"]["n"]) == (1, 2)
    assert (served["ppv"]["k"], served["ppv"]["n"]) == (1, 2) and (served["npv"]["k"], served["npv"]["n"]) == (1, 1)


def test_recounting_the_validation_figures_rewrites_the_cards_sentence_on_them(tmp_path: Path) -> None:
    # The card quoted export's figures after the calibration had recounted them under its new gate.
    from PIL import Image

    from tests.support.images import encoded

    photos = []
    for name, img in (("bright", Image.new("RGB", (40, 30), (250, 250, 250))), ("tiny", Image.new("RGB", (5, 5)))):
        photos.append(tmp_path / f"{name}.png")
        photos[-1].write_bytes(encoded(img, "PNG"))
    labels = ["cataract", "normal"]
    old = {"gate_ungradable": 0, "served_referrals": 1}
    old_served = cal.served_counts(build_tiny_model(tmp_path / "probe"), photos[:1], labels[:1])["served"]
    model = build_tiny_model(tmp_path / "m", metrics={"validation": {"n": 2, **old, "served": old_served}})
    before = cal.served_block({**old, "served": old_served})
    assert before is not None
    (model / "MODEL_CARD.md").write_text(f"# Model card: x 1\n\nmine\n\n{before}\n\nalso mine\n", encoding="utf-8")
    cal.refresh_validation_counts(model, photos, labels)
    after = cal.served_block(load_manifest(model / "model.json").metrics["validation"])
    assert after is not None and after != before and "(1 ungradable)" in after
    assert (model / "MODEL_CARD.md").read_text(
        encoding="utf-8"
    ) == f"# Model card: x 1\n\nmine\n\n{after}\n\nalso mine\n"


def _probe_set(
    n_eyes: int = 200, n_non: int = 100
) -> tuple[list[cal.Signals], list[cal.Signals], tuple[list[cal.Signals], list[str], list[str], list[bool]]]:
    """Eye photos and non-eye images with embeddings and mid-level distances, and the probe's data."""
    embedded_eyes, embedded_non = _eyes_and_non_eyes_embedded(n_eyes, n_non)
    eyes = _with_mid(embedded_eyes, 15.0, 3.0, seed=3)
    non = _with_mid(embedded_non, 40.0, 5.0, seed=4)
    probe_data = (eyes, [str(i) for i in range(n_eyes)], [str(i) for i in range(n_non)], [True] * n_eyes)
    return eyes, non, probe_data


def test_a_probe_is_added_to_the_mid_capped_gate_not_in_its_place() -> None:
    # calibrate --probe used to ship fit_gate's fused probe gate: no mid-level cap, and an eye score not asked for.
    eyes, non, probe_data = _probe_set()
    without = cal.fit_gate(eyes, eyes, non, fused=False, mid=True, target_false_reject=0.03)
    gate = cal.fit_gate(eyes, eyes, non, fused=False, mid=True, target_false_reject=0.03, probe_data=probe_data)
    extra = gate.model_extra or {}
    assert "eye_probe" in extra, "the probe was dropped"
    assert "eye_score" not in extra
    assert (gate.max_mid_distance, gate.max_ood_distance) == (without.max_mid_distance, without.max_ood_distance)
    assert gate.max_mid_distance is not None
    # The caps spend no budget: the probe gets all of it (3% of 200 eyes: 6), with what the caps already refuse.
    all_eyes, eye_groups, non_groups, scored = probe_data
    oof = cal.out_of_fold_probe_scores(all_eyes, eye_groups, non, non_groups, scored)
    already = cal.rejected(eyes, without)
    assert int(already.sum()) + int(np.sum(oof[~already] < extra["eye_probe"]["min_score"])) == 6
    # With the eye score asked for, both are there, next to the mid-level cap.
    both = cal.fit_gate(eyes, eyes, non, mid=True, target_false_reject=0.03, probe_data=probe_data)
    assert {"eye_score", "eye_probe"} <= set(both.model_extra or {}) and both.max_mid_distance is not None
    assert "mid_distance > max_mid_distance" in cal.rule_text(gate, 0.03) and "eye_probe" in cal.rule_text(gate, 0.03)


def test_a_probe_next_to_a_distance_threshold_shares_its_budget() -> None:
    # Without the mid-level cap and the eye score (--no-mid --probe), fit_gate used to ignore the probe altogether.
    eyes, non, probe_data = _probe_set()
    gate = cal.fit_gate(eyes, eyes, non, fused=False, target_false_reject=0.03, probe_data=probe_data)
    assert "eye_probe" in (gate.model_extra or {}) and gate.max_mid_distance is None
    half = cal.fit_gate(eyes, eyes, fused=False, target_false_reject=0.015)
    assert gate.max_ood_distance == half.max_ood_distance  # the distance threshold got half the budget
    assert "at most 1.5%" in cal.rule_text(gate, 0.03)
    with pytest.raises(ValueError, match="non-eye images"):
        cal.fit_gate(eyes, eyes, fused=False, probe_data=probe_data)


def test_no_calibration_eye_photos_names_the_half_not_an_empty_split() -> None:
    # In calibrate the validation photos are halved: the calibration half can be empty while the split is not.
    with pytest.raises(ValueError, match="calibration half") as refused:
        cal.fit_gate(_eyes(50), [])
    assert "validation split is empty" not in str(refused.value)
    assert "at least two distinct duplicate groups" in str(refused.value)


def test_benign_variants_keep_the_photo_and_are_not_phone_like_degradations() -> None:
    from cataract_inference.drawing import draw_eye

    img = draw_eye("cataract", size=(400, 300))
    out = dict(cal.eye_benign_variants(img))
    assert set(out) == {"grey", "rot90", "rot270"}
    grey = np.asarray(out["grey"])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert out["rot90"].size == out["rot270"].size == (300, 400)
    assert not {f"eye~{name}" for name in out} - set(cal.BENIGN_NAMES)
    # The fitted degradations stay what they were: the variants never reach the fit through them.
    assert not set(out) & {name for name, _, _ in cal.eye_degradations(img)}


def test_rates_are_printed_from_their_counts_not_the_rounded_interval() -> None:
    # model.json keeps 4 decimals: 1/51's lower bound 0.00347 is stored as 0.0035, which printed as 0.4%.
    stored = {"value": 0.0196, "k": 1, "n": 51, "ci95": [0.0035, 0.103]}
    assert cal._fmt(stored) == "2.0% (1/51; 95% CI 0.3%–10.3%)"


def test_the_shipped_card_gives_the_gates_rate_on_its_own_calibration_items() -> None:
    """Beside the held-out rates: what the gate refuses of the eye items it was fitted on, from model.json."""
    model_dir = Path(__file__).resolve().parents[2] / "functions" / "inference" / "model"
    record = (load_manifest(model_dir / "model.json").gate.model_extra or {})["calibration"]
    card = " ".join((model_dir / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    fitted_on = cal._fmt(record["calibration"]["eye_false_reject"])
    assert (
        f"On the items it was fitted on (calibration eye photos and their degradations) it refuses {fitted_on}." in card
    )
    assert "held-out results in view" in card
