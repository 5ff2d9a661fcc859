"""The audit finds planted duplicates, conflicts, cross-split leaks and unreadable files; splits respect groups."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from synthetic_eyes import draw_eye, make_folder

from cataract_training import audit, data, splits


def _planted(root: Path) -> Path:
    make_folder(root, n_per_class=8)
    # exact duplicate (same bytes, another name)
    shutil.copyfile(root / "cataract/cataract_0.png", root / "cataract/copy_of_0.png")
    # near duplicate: resized and JPEG re-encoded
    img = Image.open(root / "normal/normal_1.png").convert("RGB").resize((200, 150))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    (root / "normal/normal_1_resaved.jpg").write_bytes(buf.getvalue())
    # the same photo in both classes
    shutil.copyfile(root / "cataract/cataract_3.png", root / "normal/mislabelled.png")
    # an unreadable file
    (root / "normal/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


def test_audit_finds_planted_problems(tmp_path: Path) -> None:
    root = _planted(tmp_path / "d")
    result = audit.run_audit(root, progress=False)
    rep = result.report
    exact = [sorted(g["files"]) for g in rep["exact_duplicate_groups"]]
    assert ["cataract/cataract_0.png", "cataract/copy_of_0.png"] in exact
    near = [set(g["files"]) for g in rep["near_duplicate_groups"]]
    assert {"normal/normal_1.png", "normal/normal_1_resaved.jpg"} in near
    assert len(rep["conflicts"]) == 1
    assert set(rep["conflicts"][0]["files"]) == {"cataract/cataract_3.png", "normal/mislabelled.png"}
    assert [u["file"] for u in rep["unreadable"]] == ["normal/broken.png"]
    # 8+8 originals + 4 planted = 20 files; 16 distinct readable photos
    assert rep["n_files"] == 20
    assert rep["distinct_photos"] == 16
    text = audit.summary_text(rep)
    for word in ("EXACT DUPLICATES", "NEAR DUPLICATES", "LABEL CONFLICT", "UNREADABLE"):
        assert word in text
    json.dumps(rep)  # the report is JSON-able
    usable = result.usable()
    keys = {result.keys[i] for i in usable}
    assert "normal/mislabelled.png" not in keys and "cataract/cataract_3.png" not in keys
    assert "normal/broken.png" not in keys


def test_distinct_photos_are_not_grouped(eye_folder: Path) -> None:
    rep = audit.run_audit(eye_folder, progress=False).report
    assert rep["near_duplicate_groups"] == []
    assert rep["distinct_photos"] == rep["n_files"] == 24
    assert rep["findings"] == []


def test_kaggle_layout_and_cross_split_leak(tmp_path: Path) -> None:
    base = tmp_path / "kaggle" / "processed_images"
    make_folder(base / "train", n_per_class=4, seed=1)
    make_folder(base / "test", n_per_class=3, seed=2)
    shutil.copyfile(base / "train/normal/normal_0.png", base / "test/normal/leaked.png")
    layout = data.resolve_layout(tmp_path / "kaggle")
    assert sorted(layout) == ["test", "train"]
    samples = data.discover(tmp_path / "kaggle")
    assert {s.split for s in samples} == {"train", "test"}
    rep = audit.run_audit(tmp_path / "kaggle", progress=False).report
    assert rep["counts"] == {"test/cataract": 3, "test/normal": 4, "train/cataract": 4, "train/normal": 4}
    assert len(rep["cross_split_duplicates"]) == 1
    assert any("CROSS-SPLIT" in f for f in rep["findings"])


def test_size_gap_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    for label, size in (("cataract", (400, 300)), ("normal", (100, 75))):
        (root / label).mkdir(parents=True)
        for i in range(4):
            draw_eye(hash((label, i)) % 10_000, label == "cataract", size).save(root / label / f"{i}.png")
    rep = audit.run_audit(root, progress=False).report
    assert any(f.startswith("SIZE SHORTCUT") for f in rep["findings"])


MANIFEST = (
    "path,label,orig_width,orig_height\ncataract/cataract_0.png,cataract,3000,2000\nnormal/normal_0.png,normal,,\n"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"], ids=["utf-8", "excel-csv-utf-8-with-bom"])
def test_a_manifest_csv_gives_original_sizes_with_or_without_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    make_folder(tmp_path, n_per_class=2)
    (tmp_path / "manifest.csv").write_text(MANIFEST, encoding=encoding)
    # The row with blank sizes is left out, not a failure.
    assert data.read_original_sizes(tmp_path) == {"cataract/cataract_0.png": (3000, 2000)}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "path,label,orig_width,orig_height\ncaf\u00e9/x.png,cataract,1,1\n".encode("cp1252"),
            r"not UTF-8 text \(line 2\)",
        ),
        (b"file;label;width;height\ncataract/cataract_0.png;cataract;3000;2000\n", r"no column path, orig_width"),
    ],
    ids=["excel-windows-cp1252", "another-tool's-columns"],
)
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["", "with-bom"])
def test_a_manifest_csv_that_cannot_give_sizes_is_refused_by_name(
    tmp_path: Path, raw: bytes, message: str, bom: bytes
) -> None:
    """Not skipped: the audit would quietly take sizes from the downscaled photos and miss a size shortcut."""
    make_folder(tmp_path, n_per_class=2)
    (tmp_path / "manifest.csv").write_bytes(bom + raw)
    with pytest.raises(ValueError, match=rf"manifest\.csv.* {message}"):
        data.read_original_sizes(tmp_path)


def test_a_bad_byte_is_placed_on_its_line_with_or_without_a_byte_order_mark(tmp_path: Path) -> None:
    make_folder(tmp_path, n_per_class=2)
    lines = b"path,label,orig_width,orig_height\ncataract/cataract_0.png,cataract,1,1\n\xe9.png,normal,1,1\n"
    for bom in (b"", b"\xef\xbb\xbf"):
        (tmp_path / "manifest.csv").write_bytes(bom + lines)
        with pytest.raises(ValueError, match=r"not UTF-8 text \(line 3\)"):
            data.read_original_sizes(tmp_path)


def test_wrong_class_folders_are_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "x", n_per_class=2)
    (tmp_path / "x/cataract").rename(tmp_path / "x/cloudy")
    with pytest.raises(ValueError, match="class folders"):
        data.check_classes(data.discover(tmp_path / "x"))


def test_audit_says_what_fit_will_refuse_and_counts_only_readable_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "x", n_per_class=3)
    shutil.rmtree(root / "normal")  # one class only: fit refuses it, so the audit must not say "none"
    (root / "cataract" / "empty_a.png").write_bytes(b"")
    (root / "cataract" / "empty_b.png").write_bytes(b"")  # two unreadable files, not "copies" of each other
    shutil.copyfile(root / "cataract/cataract_0.png", root / "cataract/copy.png")
    rep = audit.run_audit(root, progress=False).report
    assert any(f.startswith("CLASSES:") and "missing: ['normal']" in f for f in rep["findings"]), rep["findings"]
    exact = [sorted(g["files"]) for g in rep["exact_duplicate_groups"]]
    assert exact == [["cataract/cataract_0.png", "cataract/copy.png"]]
    near = next(f for f in rep["findings"] if f.startswith("NEAR DUPLICATES"))
    assert "3 distinct photos of 4" in near, near  # 4 readable files, not 6


def test_a_class_whose_every_file_is_unreadable_is_its_own_finding(tmp_path: Path) -> None:
    """`fit` refuses such a folder; the audit must say why (not "rename the folders": the names are right)."""
    root = make_folder(tmp_path / "x", n_per_class=3)
    for path in (root / "normal").iterdir():
        path.write_bytes(b"not an image")
    findings = audit.run_audit(root, progress=False).report["findings"]
    assert not any(f.startswith("CLASSES:") for f in findings), findings
    assert any(f.startswith("NO READABLE PHOTO: every 'normal' photo") for f in findings), findings
    assert any(f.startswith("UNREADABLE: 3") and "normal/normal_0.png (NotAnImageError" in f for f in findings)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_splits_keep_groups_together(seed: int) -> None:
    import random

    rng = random.Random(seed)
    groups, labels = [], []
    for g in range(60):  # groups of 1..6 photos, one label each
        lab = rng.randint(0, 1)
        for _ in range(rng.randint(1, 6)):
            groups.append(g)
            labels.append(lab)
    tr, va = splits.grouped_split(groups, labels, 0.25, seed)
    assert sorted(tr + va) == list(range(len(groups)))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    for lab in (0, 1):
        share = sum(labels[i] == lab for i in va) / sum(x == lab for x in labels)
        assert 0.1 < share < 0.45
    folds = splits.grouped_kfold(groups, labels, 5, seed)
    assert sorted(i for f in folds for i in f) == list(range(len(groups)))
    for a in range(5):
        assert all(sum(labels[i] == lab for i in folds[a]) > 0 for lab in (0, 1))
        for b in range(a + 1, 5):
            assert not {groups[i] for i in folds[a]} & {groups[i] for i in folds[b]}
    # Each fold gets its share of each class: dealt largest group first to the fold with the fewest, the counts
    # differ by at most one group's size.
    for lab in (0, 1):
        largest = max(groups.count(g) for g in set(groups) if labels[groups.index(g)] == lab)
        counts = [sum(labels[i] == lab for i in fold) for fold in folds]
        assert max(counts) - min(counts) <= largest, (lab, counts)


def test_a_group_with_mixed_labels_is_dealt_as_its_majority_label() -> None:
    # Groups 0-3 are cataract photos, 4-7 normal; groups 0 and 4 each hold one photo of the other label.
    groups = [0, 0, 0, 1, 2, 3, 4, 4, 4, 5, 6, 7]
    labels = [1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    folds = splits.grouped_kfold(groups, labels, 4, seed=0)
    # Dealt by majority, each fold gets exactly one cataract group and one normal group.
    for fold in folds:
        majority = {
            g: max((0, 1), key=[labels[i] for i in fold if groups[i] == g].count) for g in {groups[i] for i in fold}
        }
        assert sorted(majority.values()) == [0, 1], (fold, majority)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_takes_the_group_count_closest_to_the_validation_fraction(seed: int) -> None:
    # Cataract: four groups of 3 photos (12), a target of 0.2 x 12 = 2.4 photos. One group (3) is 0.6 off the
    # target, none (0) is 2.4 off: one group is taken. Normal: ten single photos, a target of 2: exactly two.
    # Every group of a class is the same size, so the shuffle (the seed) cannot change the counts.
    groups = [g for g in range(4) for _ in range(3)] + list(range(4, 14))
    labels = [1] * 12 + [0] * 10
    tr, va = splits.grouped_split(groups, labels, 0.2, seed)
    assert sorted(tr + va) == list(range(len(groups)))
    assert {lab: sum(labels[i] == lab for i in va) for lab in (0, 1)} == {0: 2, 1: 3}
    assert len({groups[i] for i in va if labels[i] == 1}) == 1
