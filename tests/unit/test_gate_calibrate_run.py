"""The gate calibration run end to end, on a few drawn eye photos and a copy of the bundled model.

What is checked: which gate ``--probe`` ships, the benign variants (greyscale, quarter turns) measured apart from the
fit, refusing validation splits too small to halve, and not writing a gate that misses the targets. The non-eye set
and the competence sweep are trimmed so that a run takes seconds; nothing here judges the thresholds' quality.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cataract_inference.drawing import draw_eye
from cataract_training import competence
from cataract_training import gate as cal

pytestmark = pytest.mark.slow

PER_CLASS = 6  # e0, e1: train; e2..e5: validation, two duplicate groups per class in each half


def _photos(root: Path) -> Path:
    """Distinct drawn eyes (the audit puts each in its own group): nothing is learnt from them."""
    for kind in ("cataract", "normal"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            img = draw_eye(
                kind,
                size=(360 + 40 * (i % 3), 280 + 30 * (i % 2)),
                seed=7 * i + (0 if kind == "cataract" else 100),
                centre=(0.3 + 0.1 * (i % 5), 0.35 + 0.1 * (i % 4)),
            )
            img.save(root / kind / f"e{i}.png")
    return root


def _split(path: Path, val: dict[str, list[int]]) -> Path:
    keys = {kind: [f"{kind}/e{i}.png" for i in range(PER_CLASS)] for kind in ("cataract", "normal")}
    chosen = [f"{kind}/e{i}.png" for kind, idx in val.items() for i in idx]
    path.write_text(json.dumps({"train": [k for ks in keys.values() for k in ks if k not in chosen], "val": chosen}))
    return path


def _model(directory: Path, bundled: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("model.onnx", "model.json", "MODEL_CARD.md"):
        shutil.copyfile(bundled / name, directory / name)
    return directory


def _trim(mp: pytest.MonkeyPatch) -> None:
    """Fewer non-eye images and one step per degradation axis: the run's logic, in seconds."""
    full = cal.non_eye_items
    mp.setattr(cal, "non_eye_items", lambda seed=0: full(seed, per_generator=2, variants=1))
    mp.setattr(competence, "AXES", tuple(competence.Axis(a.name, a.levels[:1], a.description) for a in competence.AXES))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photos(tmp_path_factory.mktemp("eyes"))


@pytest.fixture(scope="module")
def probe_run(data: Path, bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One dry run with --probe: (result, report folder)."""
    tmp = tmp_path_factory.mktemp("probe")
    split = _split(tmp / "split.json", {"cataract": [2, 3, 4, 5], "normal": [2, 3, 4, 5]})
    with pytest.MonkeyPatch.context() as mp:
        _trim(mp)
        result = cal.calibrate(
            _model(tmp / "m", bundled_model_dir),
            data,
            tmp / "out",
            split_json=split,
            write=False,
            progress=False,
            probe=True,
        )
    yield result, tmp / "out"


def test_probe_is_added_to_the_gate_that_would_ship_without_it(probe_run: Any) -> None:
    # --probe used to ship the eye score and the probe in place of the mid-level cap, the eye detector.
    result, _ = probe_run
    gate = result["gate"]
    assert gate["max_mid_distance"] is not None, "--probe dropped the mid-level cap"
    assert "eye_probe" in gate and "eye_score" not in gate, "the eye score comes only with --eye-score"
    assert result["report"]["shipped"] == (
        "image statistics + embedding-distance cap + mid-level distance cap + embedding eye probe"
    )


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "signals.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_greyscale_and_rotated_eye_photos_are_measured_and_reported_apart_from_the_fit(probe_run: Any) -> None:
    result, out = probe_run
    report = result["report"]
    held = report["held_out"]["eye_benign_variants"]
    n_held = report["sizes"]["held_out"]["eye_photos"]
    assert set(held) == {"eye~grey", "eye~rot90", "eye~rot270"}
    assert all(v["n"] == n_held and 0 <= v["pass_as_stored"] <= v["k"] for v in held.values())
    assert set(report["calibration"]["eye_benign_variants"]) == set(held)
    assert set(result["gate"]["calibration"]["held_out"]["eye_benign_variants"]) == set(held)  # model.json's record
    text = (out / "gate_report.md").read_text(encoding="utf-8")
    assert "| real eye photos as greyscale rejected (measured, not fitted" in text
    assert "| real eye photos rotated 90° rejected (measured, not fitted" in text
    # Not fed to the fit: the calibration eye items are the photos and their phone-like degradations only, and the
    # mid-level cap is the one those items alone give.
    calibration = [r for r in _rows(out) if r["part"] == cal.CALIBRATION and r["in_distribution"] == "1"]
    assert {r["kind"] for r in calibration} <= {
        "eye",
        "eye/jpeg60",
        "eye/half",
        "eye/darker",
        "eye/brighter",
        "eye/soft",
    }
    far = float(np.quantile([float(r["mid_distance"]) for r in calibration], cal.MID_CAP_QUANTILE))
    assert result["gate"]["max_mid_distance"] == math.ceil(far * cal.MID_CAP_FACTOR * 1000) / 1000


def test_a_validation_split_with_one_cataract_group_is_refused_before_anything_is_written(
    data: Path, bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its only group went to the held-out half: the competence rule read 0 <= 0 missed cataracts at every step,
    # widened every statistic to its harshest level, and model.json was written.
    _trim(monkeypatch)
    model = _model(tmp_path / "m", bundled_model_dir)
    before = {name: (model / name).read_bytes() for name in ("model.json", "MODEL_CARD.md")}
    split = _split(tmp_path / "split.json", {"cataract": [2], "normal": [2, 3, 4, 5]})
    with pytest.raises(
        ValueError, match="the calibration half got cataract 0, other 2 and the held-out half cataract 1, other 2"
    ) as refused:
        cal.calibrate(model, data, tmp_path / "out", split_json=split, progress=False)
    assert "at least two distinct duplicate groups" in str(refused.value)
    assert "(here: cataract 1, other 4)" in str(refused.value)
    assert {name: (model / name).read_bytes() for name in before} == before


def test_a_tiny_validation_split_says_what_each_half_got_and_what_is_needed(
    data: Path, bundled_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One photo per class: both went to the held-out half, and the user heard "no eye photos to measure the
    # model's competence on".
    split = _split(tmp_path / "split.json", {"cataract": [2], "normal": [2]})
    args = ["--model-dir", str(bundled_model_dir), "--data", str(data), "--split", str(split)]
    assert cal.main([*args, "--out", str(tmp_path / "out"), "--dry-run", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the calibration half got cataract 0, other 0 and the held-out half cataract 1, other 1" in err
    assert "each needs at least two distinct duplicate groups among the validation photos" in err


def _run_missing_targets(data: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    _trim(monkeypatch)
    monkeypatch.setattr(cal, "TARGET_OOD_REJECT", 1.01)  # a target no gate meets
    split = _split(tmp_path / "split.json", {"cataract": [2, 3, 4, 5], "normal": [2, 3, 4, 5]})
    args = ["--model-dir", str(model), "--data", str(data), "--split", str(split), "--out", str(tmp_path / "out")]
    return cal.main([*args, "--quiet", *extra])


def test_a_gate_that_misses_the_targets_is_reported_not_written(
    data: Path,
    bundled_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _model(tmp_path / "m", bundled_model_dir)
    before = {name: (model / name).read_bytes() for name in ("model.json", "MODEL_CARD.md")}
    assert _run_missing_targets(data, model, tmp_path, monkeypatch) == 1
    assert {name: (model / name).read_bytes() for name in before} == before, "a gate missing the targets was written"
    err = capsys.readouterr().err
    assert "model.json NOT written: the gate misses the targets" in err and "--force" in err
    assert json.loads((tmp_path / "out" / "gate_report.json").read_text())["meets_targets"] is False


def test_force_writes_a_gate_that_misses_the_targets(
    data: Path, bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "m", bundled_model_dir)
    assert _run_missing_targets(data, model, tmp_path, monkeypatch, "--force") == 1  # still says it missed them
    written = json.loads((model / "model.json").read_text())["gate"]
    report = json.loads((tmp_path / "out" / "gate_report.json").read_text())
    assert written["calibration"]["date"] == report["date"] and written["calibration"]["meets_targets"] is False
    # The card says so too: "calibrated" and a table of rates read as a gate that does its job.
    assert "This gate misses its held-out targets (below): it was written with `--force`." in (
        model / "MODEL_CARD.md"
    ).read_text(encoding="utf-8")


def test_a_class_outside_the_validation_photos_does_not_stop_the_calibration() -> None:
    # The check counted every label, the train side's too: a glaucoma/ folder the split never named was "missing
    # from both halves", and a calibration that ran before was refused.
    def eyes(labels: list[str], parts: list[str]) -> cal.EyeSet:
        n = len(labels)
        return cal.EyeSet([Path(f"{i}.png") for i in range(n)], labels, list(range(n)), parts, "test")

    cal_, held, seen = cal.CALIBRATION, cal.HELD_OUT, cal.SEEN
    cal.check_halves(eyes(["cataract", "normal", "cataract", "normal", "glaucoma"], [cal_, cal_, held, held, seen]))
    # Every class but cataract is one kind for the rule: normal in one half and glaucoma in the other is enough.
    cal.check_halves(eyes(["cataract", "normal", "cataract", "glaucoma"], [cal_, cal_, held, held]))
    with pytest.raises(
        ValueError, match="the calibration half got cataract 1, other 0 and the held-out half cataract 1, other 1"
    ):
        cal.check_halves(eyes(["cataract", "cataract", "normal"], [cal_, held, held]))


def _easy_run(
    data: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validation_n: int = 8
) -> tuple[list[str], int]:
    """A written run (targets every gate meets), model.json's validation counting ``validation_n`` photos: the
    arguments, and what the recount was handed."""
    _trim(monkeypatch)
    monkeypatch.setattr(cal, "TARGET_OOD_REJECT", 0.0)  # targets every gate meets
    monkeypatch.setattr(cal, "TARGET_FALSE_REJECT", 1.0)
    manifest = json.loads((model / "model.json").read_text())
    manifest["metrics"]["validation"]["n"] = validation_n
    manifest["metrics"]["variants"][manifest["precision"]]["validation"]["n"] = validation_n
    (model / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    split = _split(tmp_path / "split.json", {"cataract": [2, 3, 4, 5], "normal": [2, 3, 4, 5]})
    args = ["--model-dir", str(model), "--data", str(data), "--split", str(split), "--out", str(tmp_path / "out")]
    return [*args, "--quiet"], validation_n


def test_a_gate_that_meets_the_targets_is_written_and_the_validation_counts_refreshed(
    data: Path, bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "m", bundled_model_dir)
    args, _ = _easy_run(data, model, tmp_path, monkeypatch)
    recounted: list[int] = []
    real_counts = cal.served_counts

    def counting(model_dir: Path, photos: list[Path], labels: list[str]) -> Any:
        recounted.append(len(photos))
        # Counted under the new gate, before anything is written: the folder served is a scratch copy.
        assert model_dir != model and json.loads((model_dir / "model.json").read_text())["gate"]["calibration"]
        return real_counts(model_dir, photos, labels)

    monkeypatch.setattr(cal, "served_counts", counting)
    assert cal.main(args) == 0
    written = json.loads((model / "model.json").read_text())
    report = json.loads((tmp_path / "out" / "gate_report.json").read_text())
    gate = written["gate"]
    assert gate["calibration"]["date"] == report["date"] and gate["calibration"]["meets_targets"] is True
    assert recounted == [8]  # the split's validation photos, recounted once under the new gate
    val = [data / k / f"e{i}.png" for k in ("cataract", "normal") for i in (2, 3, 4, 5)]
    counts = real_counts(model, val, ["cataract"] * 4 + ["normal"] * 4)  # as model.json now serves them
    assert written["metrics"]["validation"]["gate_ungradable"] == counts["gate_ungradable"]
    card = (model / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "misses its held-out targets" not in card
    sentence = cal.served_block(written["metrics"]["validation"])
    assert sentence is not None and sentence in card  # the card's sentence on the figures, as recounted
    assert not [p for p in model.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_an_interruption_while_recounting_leaves_model_json_and_the_card_as_they_were(
    data: Path, bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C during the validation recount left the new gate in model.json beside the old counts, and a card
    # with the new gate section but the old sentence on the figures.
    model = _model(tmp_path / "m", bundled_model_dir)
    args, _ = _easy_run(data, model, tmp_path, monkeypatch)
    before = {name: (model / name).read_bytes() for name in ("model.json", "MODEL_CARD.md")}

    def interrupted(*_a: Any, **_k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "served_counts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cal.main(args)
    assert {name: (model / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in model.iterdir()) == ["MODEL_CARD.md", "model.json", "model.onnx"]


def test_a_recount_that_cannot_match_the_exports_validation_photos_says_so(
    data: Path, bundled_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # model.json counted 97 photos, --data held 2 of them: the recount was skipped without a word.
    model = _model(tmp_path / "m", bundled_model_dir)
    before = json.loads((model / "model.json").read_text())["metrics"]["validation"]
    photos = [data / "cataract" / "e2.png", data / "normal" / "e2.png"]
    cal.write_calibrated(
        model,
        {"min_side": 32},
        "<!-- BEGIN gradability-gate -->x<!-- END gradability-gate -->",
        (
            photos,
            ["cataract", "normal"],
        ),
    )
    err = capsys.readouterr().err
    assert f"validation counts were NOT recounted under the new gate: they count {before['n']} photos" in err
    assert json.loads((model / "model.json").read_text())["metrics"]["validation"] == before


def test_undecodable_photos_are_named_not_dropped_silently(
    data: Path, bundled_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eyes = tmp_path / "eyes"
    shutil.copytree(data, eyes)
    (eyes / "normal" / "e4.png").write_bytes(b"")  # a validation photo
    (eyes / "normal" / "x.gif").write_bytes(b"GIF89a broken")  # in neither list
    split = _split(tmp_path / "split.json", {"cataract": [2, 3, 4, 5], "normal": [2, 3, 4, 5]})
    result = cal.eye_set(eyes, bundled_model_dir, split, 0, False)
    assert eyes / "normal" / "e4.png" not in result.paths
    err = capsys.readouterr().err
    assert "warning: 2 photo(s) under" in err and "normal/e4.png" in err and "normal/x.gif" in err
    assert "(1 of them validation photos: normal/e4.png)" in err


@pytest.mark.parametrize(
    "case",
    [
        (("ood_distance", "mid_distance", "embedding"), (), "the model has no ood_distance output"),
        (("ood_distance", "mid_distance", "embedding"), ("--no-mid",), "the model has no ood_distance output"),
        (("mid_distance",), (), "the model has no mid_distance output: re-export it, or calibrate with --no-mid"),
        (("embedding",), ("--probe",), "--probe needs the graph's embedding output"),
    ],
)
def test_a_model_without_the_outputs_the_gate_needs_is_refused_before_measuring(
    case: tuple[tuple[str, ...], tuple[str, ...], str],
    bundled_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drop, extra, message = case
    # Found out after all the measuring, and --no-mid, suggested, failed the same way later.
    model = _model(tmp_path / "m", bundled_model_dir)
    manifest = json.loads((model / "model.json").read_text())
    for name in drop:
        manifest["outputs"].pop(name)
    manifest["gate"] = {}  # its caps need the outputs dropped
    (model / "model.json").write_text(json.dumps(manifest))

    def measured(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("measured before refusing")

    monkeypatch.setattr(cal, "eye_set", measured)
    split = _split(tmp_path / "split.json", {"cataract": [2, 3, 4, 5], "normal": [2, 3, 4, 5]})
    args = ["--model-dir", str(model), "--data", str(tmp_path), "--split", str(split), "--out", str(tmp_path / "out")]
    assert cal.main([*args, "--quiet", "--dry-run", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if "ood_distance" in drop:
        assert "--no-mid" not in err  # it fails without the mid-level cap too


def test_photos_are_named_uniquely_whatever_the_layout() -> None:
    # The benign variants are matched to their photo by name: train/cataract/x.png and val/cataract/x.png were both
    # "cataract/x.png", and a variant was credited to the other photo.
    def names(paths: list[str]) -> list[str]:
        n = len(paths)
        return cal.photo_names(cal.EyeSet([Path(p) for p in paths], ["cataract"] * n, list(range(n)), ["x"] * n, ""))

    assert names(["/d/train/cataract/x.png", "/d/val/cataract/x.png"]) == ["train/cataract/x.png", "val/cataract/x.png"]
    assert names(["/d/eyes/cataract/x.png", "/d/eyes/normal/x.png"]) == ["cataract/x.png", "normal/x.png"]
    assert names(["/d/eyes/cataract/x.png"]) == ["cataract/x.png"]  # one photo: still under its class folder


def test_without_its_split_the_gate_is_refused_unless_every_photo_is_asked_for(
    data: Path,
    bundled_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run fitted with --runs elsewhere was not found: the gate calibrated on the photos the embedding distance
    was fitted on, exited 0, and the card called its eye photos validation photos."""
    from cataract_inference.manifest import GateThresholds

    _trim(monkeypatch)
    model = _model(tmp_path / "m", bundled_model_dir)
    manifest = json.loads((model / "model.json").read_text())
    manifest["metrics"]["training_run"]["run"] = "20990101-000000-elsewhere"
    (model / "model.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)  # no ./runs here
    args = ["--model-dir", str(model), "--data", str(data), "--out", str(tmp_path / "out"), "--dry-run", "--quiet"]
    assert cal.main(args) == 2
    err = capsys.readouterr().err
    assert "no split.json found for the model's training run (20990101-000000-elsewhere" in err
    assert "--split" in err and "--all-photos" in err
    result = cal.calibrate(model, data, tmp_path / "out", write=False, progress=False, all_photos=True)
    assert result["report"]["eye_photos_held_out_of_training"] is False
    block = cal.card_block(result["report"], GateThresholds.model_validate(result["gate"]))
    assert "the eye rates are optimistic" in block and "the eye photos are validation photos" not in block
    # Written so, the validation counts cannot be recounted (no photos known as validation): said, not done silently.
    monkeypatch.setattr(cal, "TARGET_OOD_REJECT", 0.0)
    monkeypatch.setattr(cal, "TARGET_FALSE_REJECT", 1.0)
    capsys.readouterr()
    assert cal.main([*args[:-2], "--all-photos", "--quiet"]) == 0
    assert "validation counts were NOT recounted under the new gate: without the run's split" in capsys.readouterr().err
