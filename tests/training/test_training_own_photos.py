"""A user's own photo folder, as it really comes: odd names, odd layouts, odd files. Each case was found by
retraining on such folders by the docs alone; each is trained on as documented, or refused early in one line."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from synthetic_eyes import draw_eye, make_folder

from cataract_training import audit, cli, data, evaluate, gate, release, train
from cataract_training.train import FitConfig, prepare


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **kwargs)
    return buf.getvalue()


def test_a_capitalised_test_folder_is_held_out_and_can_be_evaluated(tmp_path: Path) -> None:
    make_folder(tmp_path / "Train", n_per_class=4, seed=1)
    make_folder(tmp_path / "Test", n_per_class=3, seed=2)
    prep = prepare(FitConfig(data=str(tmp_path), size=32), progress=False)
    assert len(prep.keys) == 8 and all(key.startswith("Train/") for key in prep.keys), prep.keys
    assert {s.split for s in data.discover(tmp_path, ("test",))} == {"test"}


def test_a_val_folder_joins_the_training_pool_and_fit_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_folder(tmp_path / "train", n_per_class=4, seed=1)
    make_folder(tmp_path / "val", n_per_class=2, seed=2)
    prep = prepare(FitConfig(data=str(tmp_path), size=32), progress=True)
    assert len(prep.keys) == 12
    assert "pooled for training: {'val': 4}" in capsys.readouterr().out


def test_class_folders_beside_split_folders_are_refused_not_ignored(tmp_path: Path) -> None:
    make_folder(tmp_path, n_per_class=2, seed=1)
    make_folder(tmp_path / "test", n_per_class=2, seed=2)
    with pytest.raises(ValueError, match=r"mixes split folders \['test'\] with other folders of photos"):
        data.discover(tmp_path)


def test_jfif_files_symlinked_folders_heic_and_broken_links_are_all_seen(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=3)
    (root / "cataract" / "download.jfif").write_bytes(_jpeg(draw_eye(101, True)))
    (root / "cataract" / "old.JPE").write_bytes(_jpeg(draw_eye(102, True)))
    elsewhere = make_folder(tmp_path / "elsewhere", n_per_class=2, seed=7) / "normal"
    (root / "normal" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "normal" / "loop").symlink_to(root / "normal", target_is_directory=True)  # must not walk forever
    (root / "cataract" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    (root / "normal" / "gone.png").symlink_to(tmp_path / "deleted.png")

    keys = {s.key(root) for s in data.discover(root)}
    assert {"cataract/download.jfif", "cataract/old.JPE", "cataract/IMG_0001.HEIC", "normal/gone.png"} <= keys
    assert {"normal/linked/normal_0.png", "normal/linked/normal_1.png"} <= keys
    assert not any(key.startswith("normal/loop/") for key in keys)

    result = audit.run_audit(root, progress=False, reframed=False)
    unreadable = {u["file"]: u["error"] for u in result.report["unreadable"]}
    assert set(unreadable) == {"cataract/IMG_0001.HEIC", "normal/gone.png"}
    assert "Most Compatible" in unreadable["cataract/IMG_0001.HEIC"]
    assert "FileNotFoundError" in unreadable["normal/gone.png"]
    finding = next(f for f in result.report["findings"] if f.startswith("UNREADABLE"))
    assert "cataract/IMG_0001.HEIC" in finding and "normal/gone.png" in finding


def test_a_class_of_unreadable_photos_is_refused_with_the_reason_not_as_misnamed(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=3)
    for photo in (root / "cataract").iterdir():
        photo.write_bytes(b"not a photo at all")
    result = audit.run_audit(root, progress=False, reframed=False)
    assert not any(f.startswith("CLASSES") for f in result.report["findings"])
    assert any(f.startswith("NO READABLE PHOTO: every 'cataract'") for f in result.report["findings"])
    with pytest.raises(ValueError, match=r"no usable cataract photos.*unreadable, e\.g\. cataract/"):
        prepare(FitConfig(data=str(root), size=32), progress=False)


def test_a_misnamed_class_folder_is_refused_before_the_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=2)
    (root / "cataract").rename(root / "cataracts")
    monkeypatch.setattr(train, "run_audit", lambda *a, **k: pytest.fail("audited a folder it must refuse"))
    with pytest.raises(ValueError, match="class folders must be exactly"):
        prepare(FitConfig(data=str(root), size=32), progress=False)


def test_a_size_the_manifest_cannot_hold_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^size 8: Input should be greater than or equal to 16$"):
        FitConfig(data=str(tmp_path), size=8)
    with pytest.raises(ValueError, match="backbone must be one of"):
        FitConfig(data=str(tmp_path), backbone="resnet9000")


def test_all_refuses_too_many_folds_before_it_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=3)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("fitted before checking the folds"))
    runs = tmp_path / "runs"
    code = cli.main(
        ["all", str(root), "--folds", "5", "--runs", str(runs), "--out", str(tmp_path / "m"), "--size", "32"]
    )
    assert code == 2
    assert "needs at least 5 distinct" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_file_name_that_is_not_utf8_does_not_break_the_audit_report(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=2)
    odd = os.fsdecode(b"copie_\xe9.png")  # Latin-1 bytes, as an old camera or a Windows share may write
    shutil.copy(root / "cataract" / "cataract_0.png", root / "normal" / odd)  # a label conflict names the file
    result = audit.run_audit(root, progress=False, reframed=False)
    _, txt = audit.write_report(result, tmp_path / "out")
    text = txt.read_text(encoding="utf-8")
    assert "LABEL CONFLICT" in text and "copie_\\udce9.png" in text


def _cv_run(folder: Path, config: dict[str, object], keys: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "cv.json").write_text(json.dumps({"config": config}))
    np.savez(folder / "cv_oof.npz", logits=np.zeros((len(keys), 2)), labels=np.zeros(len(keys)), keys=np.array(keys))
    return folder / "cv.json"


def test_export_refuses_a_cv_run_of_other_data_or_another_recipe(tmp_path: Path) -> None:
    cfg = FitConfig(data=str(tmp_path / "eyes"), size=32)
    same = {"data": cfg.data, "backbone": cfg.backbone, "size": 32, "resize": cfg.resize}
    release.check_cv_matches(_cv_run(tmp_path / "ok", same, ["cataract/a.png"]), cfg)  # the same: accepted
    with pytest.raises(ValueError, match="cross-validated"):
        release.check_cv_matches(_cv_run(tmp_path / "other", {**same, "data": str(tmp_path / "x")}, []), cfg)
    relative = {**same, "data": "../somewhere/as/typed"}  # older runs kept the path as typed: keys decide
    release.check_cv_matches(_cv_run(tmp_path / "old", relative, ["cataract/a.png"]), cfg)
    with pytest.raises(ValueError, match="size 64 against 32"):
        release.check_cv_matches(_cv_run(tmp_path / "big", {**same, "size": 64}, []), cfg)
    cv_json = _cv_run(tmp_path / "strangers", same, ["cataract/a.png", "normal/zzz.png"])
    with pytest.raises(ValueError, match=r"1 photos that are not in the run's data \(e\.g\. normal/zzz\.png\)"):
        release._load_oof(cv_json, known=frozenset({"cataract/a.png"}))


def _rotated_16bit_pair(tmp_path: Path) -> tuple[Path, Path]:
    """An EXIF-rotated JPEG (stored 120x90, shown 90x120) and a 16-bit greyscale PNG."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(_jpeg(draw_eye(1, True), exif=exif.tobytes()))
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.asarray(draw_eye(2, False).convert("L"), dtype=np.uint16) * 257).save(grey16)
    return rotated, grey16


def test_evaluations_degradations_start_from_the_photo_as_served(tmp_path: Path) -> None:
    rotated, grey16 = _rotated_16bit_pair(tmp_path)
    upscaled = Image.open(io.BytesIO(evaluate.DEGRADATIONS["upscaled_to_1024px"](rotated.read_bytes())))
    assert upscaled.width < upscaled.height  # upright, as served; it was 1024x768 before
    blurred = Image.open(io.BytesIO(evaluate.DEGRADATIONS["gaussian_blur_2px"](grey16.read_bytes())))
    assert np.asarray(blurred).mean() < 250  # it was all white: 16-bit values clipped by convert("RGB")
    shrunk = Image.open(io.BytesIO(evaluate.DEGRADATIONS["shrunk_to_128px_jpeg50"](rotated.read_bytes())))
    assert shrunk.width < shrunk.height
    shrunk = Image.open(io.BytesIO(evaluate.DEGRADATIONS["shrunk_to_128px_jpeg50"](grey16.read_bytes())))
    assert np.asarray(shrunk).mean() < 250


def test_the_gates_degraded_eyes_start_from_the_photo_as_served(tmp_path: Path) -> None:
    rotated, grey16 = _rotated_16bit_pair(tmp_path)
    eyes = gate.EyeSet([rotated, grey16], ["cataract", "normal"], [0, 1], [gate.CALIBRATION] * 2, "test")
    degraded = {item.source: item for _, item in gate.eye_items(eyes) if item.kind == "eye/jpeg60"}
    upright = Image.open(io.BytesIO(degraded[f"{tmp_path.name}/rotated.jpg/jpeg60"].data))
    assert upright.width < upright.height
    grey = Image.open(io.BytesIO(degraded[f"{tmp_path.name}/grey16.png/jpeg60"].data))
    assert np.asarray(grey).mean() < 250
    photos = gate._photos(eyes, gate.CALIBRATION)
    assert photos[0].image.width < photos[0].image.height and np.asarray(photos[1].image).mean() < 250


def test_two_split_folders_differing_in_case_are_refused_and_empty_folders_are_not_photos(tmp_path: Path) -> None:
    make_folder(tmp_path / "a" / "train", n_per_class=1)
    make_folder(tmp_path / "a" / "Train", n_per_class=1, seed=1)
    with pytest.raises(ValueError, match="two split folders named 'train'"):
        data.discover(tmp_path / "a")
    make_folder(tmp_path / "b" / "train", n_per_class=1)
    (tmp_path / "b" / "notes").mkdir()  # no photos in it: nothing would be left out
    assert set(data.resolve_layout(tmp_path / "b")) == {"train"}


def test_any_unreadable_file_is_reported_and_the_finding_counts_the_rest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "eyes", n_per_class=2)
    (root / "normal" / "self.png").symlink_to(root / "normal" / "self.png")  # ELOOP, not "file not found"
    for i in range(4):
        (root / "cataract" / f"bad_{i}.png").write_bytes(b"not a photo")
    result = audit.run_audit(root, progress=False, reframed=False)
    unreadable = {u["file"] for u in result.report["unreadable"]}
    assert "normal/self.png" in unreadable and len(unreadable) == 5
    finding = next(f for f in result.report["findings"] if f.startswith("UNREADABLE"))
    assert finding.endswith("and 2 more in audit.json"), finding


def test_the_fold_check_stops_exactly_at_the_distinct_photos(tmp_path: Path) -> None:
    from cataract_training.cv import check_folds

    prep = prepare(FitConfig(data=str(make_folder(tmp_path / "eyes", n_per_class=2)), size=32), progress=False)
    check_folds(prep, 2)
    with pytest.raises(ValueError, match="--folds 3 needs at least 3 distinct"):
        check_folds(prep, 3)


def test_evaluate_finds_a_capitalised_split_named_in_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_folder(tmp_path / "Train", n_per_class=1)
    make_folder(tmp_path / "Test", n_per_class=1, seed=1)
    code = cli.main(["evaluate", str(tmp_path), "--splits", "Test", "--model-dir", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 2 and "no-model" in err  # it got as far as the model: the photos were found
    assert "no images found" not in err and "no photos to evaluate" not in err


def test_export_compares_resize_and_says_what_to_pass_for_a_missing_cv_json(tmp_path: Path) -> None:
    cfg = FitConfig(data=str(tmp_path / "eyes"), size=32)
    same = {"data": cfg.data, "backbone": cfg.backbone, "size": 32, "resize": cfg.resize}
    with pytest.raises(ValueError, match="resize 'squash' against 'letterbox'"):
        release.check_cv_matches(_cv_run(tmp_path / "squash", {**same, "resize": "squash"}, []), cfg)
    with pytest.raises(FileNotFoundError, match="finished `cv` run"):
        release.check_cv_matches(tmp_path / "nope.json", cfg)


def test_export_itself_applies_both_cv_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    cfg = FitConfig(data=str(tmp_path / "eyes"), size=32)
    same = {"data": cfg.data, "backbone": cfg.backbone, "size": 32, "resize": cfg.resize}
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["cataract/a.png"], "val": []}))
    monkeypatch.setattr(release, "load_run", lambda _: (cfg, None))
    monkeypatch.setattr(release, "prepare", lambda *a, **k: SimpleNamespace(keys=["cataract/a.png"]))
    with pytest.raises(ValueError, match="size 64 against 32"):
        release.release(run, tmp_path / "out", cv_json=_cv_run(tmp_path / "big", {**same, "size": 64}, []))
    strangers = _cv_run(tmp_path / "other", same, ["cataract/a.png", "normal/zzz.png"])
    with pytest.raises(ValueError, match="not in the run's data"):
        release.release(run, tmp_path / "out", cv_json=strangers)


def test_the_gates_eyes_from_afar_start_from_the_photo_as_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotated, grey16 = _rotated_16bit_pair(tmp_path)
    eyes = gate.EyeSet([rotated, grey16], ["cataract", "normal"], [0, 1], [gate.CALIBRATION] * 2, "test")
    decoded: list[Path] = []
    served = gate.load_pil

    def recording(path: Path, *args: Any, **kwargs: Any) -> Image.Image:
        decoded.append(path)
        return served(path, *args, **kwargs)

    monkeypatch.setattr(gate, "load_pil", recording)
    items = list(gate.eye_afar_items(eyes, seed=0, per_part=2))
    assert len(items) == 2 and sorted(decoded) == sorted([rotated, grey16])
