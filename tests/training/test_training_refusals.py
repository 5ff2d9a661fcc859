"""Training refuses, early and in one line, what would otherwise train nothing, or train on the wrong photos."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_eyes import make_folder

from cataract_training import cli, files, release
from cataract_training.train import FitConfig, load_run, new_run_dir, prepare

QUICK = ["--size", "32", "--epochs", "1", "--batch-size", "4", "--trainable-blocks", "1"]
CV_QUICK = ["--size", "32", "--batch-size", "4", "--trainable-blocks", "1"]  # cv takes --fold-epochs, not --epochs


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("patience", 0),
        ("batch_size", 0),
        ("threads", 0),
        ("trainable_blocks", -1),
        ("val_fraction", 0.0),
    ],
)
def test_a_config_that_would_train_nothing_is_refused(tmp_path: Path, field: str, value: float) -> None:
    config: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        FitConfig(data=str(tmp_path), **config)


def test_the_data_path_is_kept_absolute_so_export_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert FitConfig(data="eyes").data == str(tmp_path / "eyes")


@pytest.mark.parametrize(
    "flags", [["--epochs", "0"], ["--batch-size", "-4"], ["--threads", "0"], ["--seed", "-1"], ["--seed", "4294967296"]]
)
def test_the_cli_refuses_bad_numbers_before_any_work(tmp_path: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", str(tmp_path), "--runs", str(tmp_path / "runs"), *flags])
    assert info.value.code == 2
    assert not (tmp_path / "runs").exists()


def test_kaggle_test_split_is_held_out_from_training(tmp_path: Path) -> None:
    root = tmp_path / "processed_images"
    make_folder(root / "train", n_per_class=4, seed=1)
    make_folder(root / "test", n_per_class=3, seed=2)
    prep = prepare(FitConfig(data=str(tmp_path), size=32), progress=False)
    assert len(prep.keys) == 8
    assert all(key.startswith("processed_images/train/") for key in prep.keys), prep.keys


@pytest.mark.parametrize("inner", ["test", "Test", "2024/test"])
def test_a_test_folder_inside_a_class_folder_is_refused_not_trained_on(tmp_path: Path, inner: str) -> None:
    """cataract/test/ under a class folder: its photos would be trained on, not held out."""
    make_folder(tmp_path / "data", n_per_class=4, seed=1)
    make_folder(tmp_path / "held", n_per_class=2, seed=2)
    shutil.move(tmp_path / "held" / "cataract", tmp_path / "data" / "cataract" / inner)
    with pytest.raises(
        ValueError, match=r"is a test folder inside the class folder cataract/.*lay them out as test/cataract/"
    ):
        prepare(FitConfig(data=str(tmp_path / "data"), size=32), progress=False)
    code = cli.main(["audit", str(tmp_path / "data"), "--out", str(tmp_path / "audit")])
    assert code == 2


@pytest.mark.parametrize("inner", ["train", "val", "testing", "Validation photos"])
def test_other_folders_inside_a_class_folder_are_trained_on(tmp_path: Path, inner: str) -> None:
    """Photos there are for training whatever the folder: val/ photos join the training pool anyway."""
    make_folder(tmp_path / "data", n_per_class=4, seed=1)
    make_folder(tmp_path / "more", n_per_class=2, seed=2)
    shutil.move(tmp_path / "more" / "cataract", tmp_path / "data" / "cataract" / inner)
    prep = prepare(FitConfig(data=str(tmp_path / "data"), size=32), progress=False)
    assert sum(key.startswith(f"cataract/{inner}/") for key in prep.keys) == 2


def _unlistable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` made, and listing it refused, as for a folder of mode 000 (root reads any folder, so chmod cannot)."""
    folder.mkdir()
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize(
    ("photos", "locked"),
    [
        ("", "normal/batch2"),  # inside a class folder: its photos would vanish from training
        ("train", "cataract"),  # a class folder beside split folders, refused when readable: so when not
    ],
)
def test_a_folder_that_cannot_be_listed_is_refused_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: str, locked: str
) -> None:
    make_folder(tmp_path / photos, n_per_class=4, seed=1)
    _unlistable(monkeypatch, tmp_path / locked)
    with pytest.raises(ValueError, match=rf"cannot read the folder .*{locked}: Permission denied"):
        prepare(FitConfig(data=str(tmp_path), size=32), progress=False)


def test_a_folder_beside_the_class_folders_that_cannot_be_listed_holds_no_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data set on a disk of its own has lost+found beside the class folders, which a user cannot list."""
    make_folder(tmp_path, n_per_class=4, seed=1)
    _unlistable(monkeypatch, tmp_path / "lost+found")
    assert len(prepare(FitConfig(data=str(tmp_path), size=32), progress=False).keys) == 8


def test_a_copy_of_a_test_photo_in_train_is_held_out_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "processed_images"
    make_folder(root / "train", n_per_class=4, seed=1)
    make_folder(root / "test", n_per_class=3, seed=2)
    shutil.copyfile(root / "test/cataract/cataract_0.png", root / "train/cataract/copy_of_test.png")
    prep = prepare(FitConfig(data=str(tmp_path), size=32), progress=False)
    assert "processed_images/train/cataract/copy_of_test.png" not in prep.keys
    assert len(prep.keys) == 8
    assert "1 photos outside test/ that are copies" in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_is_printed_escaped_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name from a Windows zip (byte 0xff) held out as a copy of a test photo: fit names it on a UTF-8 terminal,
    whose stdout is strict, and the run stopped there."""
    root = tmp_path / "processed_images"
    make_folder(root / "train", n_per_class=4, seed=1)
    make_folder(root / "test", n_per_class=3, seed=2)
    shutil.copyfile(root / "test/cataract/cataract_0.png", root / "train/cataract" / os.fsdecode(b"copy_\xff.png"))
    terminal = io.BytesIO()
    stdout = io.TextIOWrapper(terminal, encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["fit", str(tmp_path), "--runs", str(tmp_path / "runs"), *QUICK]) == 0
    assert b"copy_\\udcff.png: training on them would leak" in terminal.getvalue()


@pytest.mark.parametrize("errors", ["surrogateescape", "replace"])
def test_output_a_user_or_the_locale_set_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch, errors: str) -> None:
    """The C locale's surrogateescape prints a name's own bytes; PYTHONIOENCODING may ask for anything."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors)
    closed = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    closed.close()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", closed)
    files.escape_unencodable_output()
    assert stdout.errors == errors


def test_reports_and_cards_write_a_name_that_is_not_utf8_escaped(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    files.write_text(path, "photo " + os.fsdecode(b"a\xff.png") + "\n")
    assert path.read_bytes() == b"photo a\\udcff.png\n"


def test_a_class_whose_every_photo_is_also_in_the_other_is_refused(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "eyes", n_per_class=3)
    for i, normal in enumerate(sorted((data / "normal").iterdir())):
        shutil.copy(data / "cataract" / f"cataract_{i}.png", normal)  # every normal photo is a cataract photo
    with pytest.raises(ValueError, match=r"no usable (cataract|normal) photos"):  # a conflict drops both copies
        prepare(FitConfig(data=str(data), size=32), progress=False)


def test_fit_without_enough_photos_to_validate_refuses_and_leaves_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folder(tmp_path / "eyes", n_per_class=1)
    runs = tmp_path / "runs"
    assert cli.main(["fit", str(data), "--runs", str(runs), *QUICK]) == 2
    assert "too few" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_cv_with_more_folds_than_photos_refuses_and_leaves_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folder(tmp_path / "eyes", n_per_class=3)
    runs = tmp_path / "runs"
    assert cli.main(["cv", str(data), "--folds", "5", "--fold-epochs", "1", "--runs", str(runs), *CV_QUICK]) == 2
    assert "needs at least 5 distinct" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_export_refuses_an_unfinished_run(tmp_path: Path) -> None:
    run = tmp_path / "20260101-120000-mobilenet_v2"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a finished `fit` run"):
        load_run(run)


def test_run_folders_started_in_the_same_second_do_not_collide(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "x")
    assert first != second and first.is_dir() and second.is_dir()


# "resnet.onnx": MODEL_S3_URI=s3://…/resnet.onnx, without its final "/", names a model file, not the folder.
@pytest.mark.parametrize("version", ["2027.01.01 rc1", "v1/extra", "", ".hidden", "x" * 65, "resnet.onnx", "v1.ONNX"])
def test_a_version_that_cannot_name_an_s3_folder_and_a_card_title_is_refused(
    tmp_path: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "2027.01.01 rc1" once exported, then publish refused it for ever: the card's title ends "rc1".
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--version", version])
    assert info.value.code == 2 and "is not a version" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    from cataract_inference.manifest import Manifest, version_problem

    assert version_problem(version) and version_problem("2027.01.01-mnv2_rc1") is None
    # What older tools published still loads: the rule is for new releases (export and publish) only.
    assert Manifest(name="n", version=version, created="x", sha256="0" * 64, classes=("cataract", "normal"))


def test_a_renamed_run_still_names_its_version() -> None:
    import datetime as dt

    assert (
        release.default_version(Path("runs/20261127-050604-mobilenet_v2"), "mobilenet_v2") == "2026.11.27-mnv2-050604"
    )
    renamed = release.default_version(Path("runs/best"), "mobilenet_v2", today=dt.date(2026, 12, 1))
    assert renamed == "2026.12.01-mnv2-best"


def test_distinct_runs_get_distinct_default_versions() -> None:
    # The version took today's date and only the run's time of day: these three runs all got one version, and
    # publish then refused the second as "already published with a different model".
    from cataract_inference.manifest import version_problem

    runs = ["20261128-101500-mobilenet_v2", "20261129-101500-mobilenet_v2", "20261129-101500-mobilenet_v2-2"]
    versions = [release.default_version(Path("runs") / name, "mobilenet_v2") for name in runs]
    assert versions == ["2026.11.28-mnv2-101500", "2026.11.29-mnv2-101500", "2026.11.29-mnv2-101500-2"]
    assert all(version_problem(v) is None for v in versions)
    longest = release.default_version(Path("20261129-101500-efficientnet_lite0-99"), "efficientnet_lite0")
    assert longest == "2026.11.29-effl0-101500-99" and version_problem(longest) is None
    # A run renamed after its stamp keeps the stamp's short version (the template caps ModelS3Uri at 107).
    assert release.default_version(Path("20261129-101500-mobilenet_v2-final"), "mobilenet_v2") == (
        "2026.11.29-mnv2-101500"
    )


@pytest.mark.parametrize("flags", [["--epochs", "3"], ["--patience", "2"], ["--val-fraction", "0.3"]])
def test_cv_refuses_the_fit_flags_it_would_ignore(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Each fold trains --fold-epochs with no validation split: these were accepted, recorded in cv.json, and unused.
    with pytest.raises(SystemExit) as info:
        cli.main(["cv", str(tmp_path / "eyes"), "--runs", str(tmp_path / "runs"), *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"cv does not take {flags[0]}: each fold trains for exactly --fold-epochs" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        cli.main(["cv", "--help"])
    cv_help = capsys.readouterr().out
    assert flags[0] not in cv_help and "--fold-epochs" in cv_help


def test_the_cli_hides_from_cv_exactly_the_fields_a_fold_does_not_use() -> None:
    from cataract_training.cv import FIT_ONLY

    assert set(cli.NOT_CV_FLAGS) == set(FIT_ONLY)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"train": ["cataract/a.png"]}', "needs a 'val' list"),  # a file with no validation photos
        ("[1, 2]", "needs a 'val' list"),
        ("not json", "is not JSON"),
    ],
)
def test_evaluate_names_a_split_file_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    data = tmp_path / "eyes"
    make_folder(data, n_per_class=1)
    split = tmp_path / "split.json"
    split.write_text(content, encoding="utf-8")
    args = ["evaluate", str(data), "--model-dir", str(tmp_path / "m"), "--split-file", str(split)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(split) in err and "Traceback" not in err


def test_an_undefined_rate_is_null_in_json_not_nan() -> None:
    import json

    from cataract_training import metrics

    report = metrics.binary_report(np.array([False, False]), np.array([False, False]), np.array([0.1, 0.2]))
    assert report["ppv"] == {"value": None, "k": 0, "n": 0, "ci95": None}  # nothing referred: no PPV
    text = json.dumps(metrics.json_ready(report), allow_nan=False)  # raises on a NaN
    assert json.loads(text)["roc_auc"] is None  # one class only: no AUC


def test_evaluate_refuses_unknown_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "eyes"
    make_folder(data, n_per_class=1)
    (data / "cataract").rename(data / "foo")
    assert cli.main(["evaluate", str(data), "--model-dir", str(tmp_path / "no-model")]) == 2
    assert "class folders must be named from ['cataract', 'normal']; found ['foo', 'normal']" in capsys.readouterr().err


def test_ctrl_c_in_alls_export_stage_says_what_export_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fit and CV were done: telling the user that a run folder is unfinished sent them back to retraining.
    from cataract_training import cv, train

    data = tmp_path / "eyes"
    make_folder(data, n_per_class=3)
    monkeypatch.setattr(train, "prepare", lambda cfg: None)
    monkeypatch.setattr(train, "fit", lambda cfg, runs, prepared=None: tmp_path / "runs" / "r")
    monkeypatch.setattr(cv, "check_folds", lambda prep, k: None)
    monkeypatch.setattr(cv, "run_cv", lambda cfg, **kwargs: tmp_path / "runs" / "cv")

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(release, "release", interrupted)
    out = tmp_path / "model"
    assert cli.main(["all", str(data), "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"{out} keeps its previous model.onnx, model.json and MODEL_CARD.md" in err and "model.pt" not in err


def test_the_one_line_summary_of_one_class_shows_no_rate_that_needs_the_other() -> None:
    from cataract_training import metrics

    report = metrics.json_ready(metrics.binary_report(np.ones(4, bool), np.array([1, 1, 1, 0], bool), np.ones(4)))
    line = cli._one_line("evaluation", report)
    assert "specificity n/a, ppv n/a, npv n/a, AUC n/a" in line and "sensitivity 0.75 [" in line


def test_evaluate_takes_a_folder_of_one_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Confirmed cataracts alone, to measure sensitivity on: rates that need the other class are n/a, not refused.
    from tests.support.onnx_models import build_tiny_model

    data = tmp_path / "eyes"
    make_folder(data, n_per_class=3)
    shutil.rmtree(data / "normal")
    assert cli.main(["evaluate", str(data), "--model-dir", str(build_tiny_model(tmp_path / "m"))]) == 0
    out = capsys.readouterr().out
    assert re.search(r"evaluation: n=3 .*sensitivity [01]\.\d+ \[.*specificity n/a", out), out


IS_A_FILE = "{afile} is a file; give a folder"
UNDER_A_FILE = "cannot be created: {afile} is a file; give a folder that is not under a file"


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["audit", "DATA", "--out", "FILE"], IS_A_FILE),
        (["fit", "DATA", "--runs", "FILE"], IS_A_FILE),
        (["export", "runs/some-run", "--out", "FILE"], IS_A_FILE),
        (["evaluate", "DATA", "--out", "FILE"], IS_A_FILE),
        # export found these out only at its very end, after training, quantizing and evaluating.
        (["export", "runs/some-run", "--out", "FILE/model"], UNDER_A_FILE),
        (["all", "DATA", "--out", "FILE/model"], UNDER_A_FILE),
        (["fit", "DATA", "--runs", "FILE/runs"], UNDER_A_FILE),
    ],
)
def test_an_out_or_runs_that_is_or_lies_under_a_file_is_refused_before_any_work(
    tmp_path: Path, command: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    data = tmp_path / "eyes"
    with pytest.raises(SystemExit) as info:
        cli.main([str(data) if a == "DATA" else a.replace("FILE", str(afile)) for a in command])
    assert info.value.code == 2
    assert said.format(afile=afile) in capsys.readouterr().err
    assert afile.read_text() == "mine" and not data.exists()


def test_an_out_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # The tests run as root, whom a chmod does not stop: the permission check is what is under test.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "run"), "--out", str(locked / "model")])
    assert info.value.code == 2
    assert f"--out {locked / 'model'} cannot be written: no write permission on {locked}" in capsys.readouterr().err
    assert not (locked / "model").exists()


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_export_names_a_cv_json_that_is_not_one(tmp_path: Path, text: str) -> None:
    from cataract_training.release import check_cv_matches

    cv_json = tmp_path / "cv.json"
    cv_json.write_text(text)
    with pytest.raises(ValueError, match=rf"{cv_json} is not a cv\.json .*pass the cv\.json of a finished `cv` run"):
        check_cv_matches(cv_json, FitConfig(data=str(tmp_path)))


@pytest.mark.parametrize("name", ["eyes", "train"])  # ../shared's folder is called train, with no split folder in it
def test_evaluate_says_which_split_folder_is_missing(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / name
    make_folder(data, n_per_class=1)
    assert cli.main(["evaluate", str(data), "--splits", "test", "--model-dir", str(tmp_path / "no-model")]) == 2
    assert f"no test split folder under {data}; it has class folders only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("train", "val", "advice"), [([0, 1, 2], [3], "raise --val-fraction"), ([0], [1, 2, 3], "lower --val-fraction")]
)
def test_a_split_short_of_a_class_says_which_way_to_move_the_fraction(
    train: list[int], val: list[int], advice: str
) -> None:
    from cataract_training.train import check_split

    labels = np.array([0, 1, 1, 0])  # cataract, normal, normal, cataract
    with pytest.raises(ValueError, match=rf"too few normal photos .*distinct normal photos, {advice}"):
        check_split(labels, train, val)


def test_fit_warns_when_a_class_has_few_distinct_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "eyes"
    make_folder(data, n_per_class=3)
    prepare(FitConfig(data=str(data), size=32), progress=False)
    assert "warning: only {'cataract': 3, 'normal': 3} distinct photos" in capsys.readouterr().err
    many = tmp_path / "more"
    make_folder(many, n_per_class=10)
    prepare(FitConfig(data=str(many), size=32), progress=False)
    assert "warning" not in capsys.readouterr().err
