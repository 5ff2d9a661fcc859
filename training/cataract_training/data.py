"""Image folders: discovery in both layouts, and loading through the serving decoder.

Two layouts are understood:

- one folder per class: ``ROOT/<class>/*.png``;
- the Kaggle layout: ``ROOT/[processed_images/]{train,test}/<class>/*``.

Every photo is decoded by ``cataract_inference.imaging.decode_image``, the function serving uses.
Validation, cross-validation and evaluation tensors are then exactly the served ones
(``serving_tensor``). Training batches are not quite: each decode is cached shrunk to the fit's
``cache_side`` (Lanczos) before augmentation and the serving ``preprocess``, a second resize that
serving does not make (a speed-up; the augmentation varies scale and blur far more than it does). The cache is
never smaller than the model's resize needs (``cached_side``), so training never enlarges what serving shrinks.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cataract_inference.imaging import DEFAULT_FILL, DecodeLimits, decode_image, decode_side, load_for_model
from cataract_inference.manifest import InputSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Photo formats the service refuses with advice (HEIC: how to make an iPhone save JPEG). They are collected too,
# so the audit lists them as unreadable with that advice instead of leaving them out unseen.
REFUSED_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".psd"})
_COLLECTED_SUFFIXES = IMAGE_SUFFIXES | REFUSED_PHOTO_SUFFIXES
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
HELD_OUT_SPLITS = frozenset({"test"})  # audited, evaluated, never trained on
CLASSES = ("cataract", "normal")


@dataclass(frozen=True)
class Sample:
    """One photo on disk: where it is, its label, and the split folder it came from (if any)."""

    path: Path
    label: str
    split: str = "train"

    def key(self, root: Path) -> str:
        """A stable, readable id: the path relative to the data root."""
        return self.path.relative_to(root).as_posix()


def folder_counts(samples: Sequence[Sample]) -> dict[str, int]:
    """Photos per split and class folder, as ``{"train/cataract": n, ...}`` (what model.json records)."""
    counts = Counter((s.split, s.label) for s in samples)
    return {f"{split}/{label}": c for (split, label), c in sorted(counts.items())}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """Photos under ``folder``, through symlinked folders (each real folder once) and broken links included,
    so that an unreadable photo is reported rather than missed. Under a folder named as a class, a folder that cannot
    be listed is refused (os.walk skips it, and its photos would vanish from training without a word); under any
    other, it holds no photos (a disk's ``lost+found`` beside the class folders)."""
    found: list[Path] = []
    seen: set[str] = set()
    strict = folder.name.lower() in CLASSES

    def unreadable(exc: OSError) -> None:
        if strict:
            raise ValueError(
                f"cannot read the folder {exc.filename}: {exc.strerror}; fix its permissions or move it out"
            )

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            dirnames.clear()
            continue
        seen.add(real)
        found.extend(Path(dirpath, name) for name in filenames if Path(name).suffix.lower() in _COLLECTED_SUFFIXES)
    return sorted(found)


def _refuse_held_out_inside(class_dir: Path, images: list[Path]) -> None:
    """A test folder inside a class folder (``cataract/test/``) would have its photos trained on: refuse it."""
    for image in images:
        inner = [part for part in image.parent.relative_to(class_dir).parts if part.lower() in HELD_OUT_SPLITS]
        if inner:
            split = inner[0].lower()
            raise ValueError(
                f"{class_dir / inner[0]} is a {split} folder inside the class folder {class_dir.name}/, whose photos "
                f"would be trained on, not held out: lay them out as {split}/{class_dir.name}/ (split folders hold "
                "the class folders), or rename the folder"
            )


def resolve_layout(root: Path) -> dict[str, Path]:
    """Map split name to the folder that holds its class folders.

    A folder per class gives ``{"train": root}``; the Kaggle layout gives one entry per split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    base = root / "processed_images" if (root / "processed_images").is_dir() else root
    folders = _class_dirs(base)
    # Split names are matched in any case and recorded in lower case: `Test/` is held out as `test/` is.
    splits: dict[str, Path] = {}
    for p in folders:
        name = p.name.lower()
        if name in SPLIT_NAMES:
            if name in splits:
                raise ValueError(f"{base} has two split folders named {name!r}: {splits[name].name}, {p.name}")
            splits[name] = p
    if splits:
        others = [p.name for p in folders if p.name.lower() not in SPLIT_NAMES and _images_in(p)]
        if others:
            raise ValueError(
                f"{base} mixes split folders {sorted(splits)} with other folders of photos {others}, which would "
                "be left out: put every class folder inside a split folder (train/<class>/), or use no split folders"
            )
        return splits
    if not _class_dirs(base):
        raise ValueError(f"{root} has no class folders: expected ROOT/<class>/* or ROOT/{{train,test}}/<class>/*")
    return {"train": base}


def discover(root: Path, splits: tuple[str, ...] | None = None) -> list[Sample]:
    """All photos under ``root`` with their class (the folder name) and split (a lower-case split folder name)."""
    samples: list[Sample] = []
    layout = resolve_layout(root)
    if splits is not None and not set(splits) & set(layout):
        flat = layout.get("train") in (Path(root), Path(root) / "processed_images")  # class folders, no split ones
        found = (
            "class folders only, whose photos count as train" if flat else "split folders " + ", ".join(sorted(layout))
        )
        raise ValueError(f"no {' or '.join(splits)} split folder under {root}; it has {found}")
    for split, folder in layout.items():
        if splits is not None and split not in splits:
            continue
        for class_dir in _class_dirs(folder):
            images = _images_in(class_dir)
            _refuse_held_out_inside(class_dir, images)
            samples.extend(Sample(path=p, label=class_dir.name.lower(), split=split) for p in images)
    if not samples:
        raise ValueError(f"no images found under {root}")
    return samples


def check_classes(samples: list[Sample], classes: tuple[str, ...] = CLASSES, *, all_needed: bool = True) -> None:
    """Refuse to train on folders whose names are not the model's classes.

    ``all_needed=False`` (evaluation): one class alone is fine, e.g. confirmed cataracts to measure sensitivity on;
    only a folder named otherwise is refused, since its photos would be scored as if they were "normal".
    """
    found = sorted({s.label for s in samples})
    unknown = [c for c in found if c not in classes]
    missing = [c for c in classes if c not in found] if all_needed else []
    if not all_needed and unknown:
        raise ValueError(
            f"class folders must be named from {list(classes)}; found {found} (unknown: {unknown}, counting only "
            "folders that hold photos). Rename or move those folders."
        )
    if unknown or missing:
        raise ValueError(
            f"class folders must be exactly {list(classes)}; found {found} "
            f"(unknown: {unknown}, missing: {missing}, counting only folders that hold photos). Rename the folders, "
            "and put photos in any that is empty."
        )


_SIZE_COLUMNS = ("path", "orig_width", "orig_height")


def read_original_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """Original (pre-downscale) sizes from a ``manifest.csv`` beside the class folders, if there is one."""
    sizes: dict[str, tuple[int, int]] = {}
    for folder in resolve_layout(root).values():
        path = folder / "manifest.csv"
        if not path.is_file():
            continue
        raw = path.read_bytes()
        # Excel's "CSV UTF-8" starts with a byte-order mark, which would otherwise rename the first column.
        body = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = body[: exc.start].count(b"\n") + 1
            raise ValueError(f"{path} is not UTF-8 text (line {line}): save it as CSV UTF-8, or move it away") from exc
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in _SIZE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} has no column {', '.join(missing)}: a manifest.csv beside the class folders gives "
                f"each photo's original size, with the header {','.join(_SIZE_COLUMNS)} (and label); "
                "fix its header, or move it away to take sizes from the decoded photos"
            )
        for row in reader:
            try:
                rel = (folder / row["path"]).relative_to(Path(root)).as_posix()
                sizes[rel] = (int(row["orig_width"]), int(row["orig_height"]))
            except (TypeError, ValueError):  # a short row, or a size left blank
                continue
    return sizes


def cached_side(width: int, height: int, spec: InputSpec, cache_side: int) -> int:
    """The longer side to cache a ``width`` x ``height`` photo at for training: ``cache_side``, or more where the
    model's resize would otherwise enlarge the cached photo (a 448 px letterbox, or ``center_crop`` and ``squash``,
    which size the shorter side) while serving, from the full decode, shrinks it."""
    if spec.resize == "letterbox":
        needed = spec.size
    else:
        needed = math.ceil(decode_side(spec) * max(width, height) / min(width, height))
    return max(cache_side, needed)


def load_pil(
    path: Path, max_side: int | None = None, fill: tuple[int, int, int] = DEFAULT_FILL, spec: InputSpec | None = None
) -> Image.Image:
    """Decode a photo with the serving decoder; optionally shrink it so its long side is ``max_side`` (with ``spec``:
    no smaller than that model's resize needs, ``cached_side``)."""
    target = max_side if spec is None or max_side is None else max(max_side, decode_side(spec))
    decoded = decode_image(path.read_bytes(), DecodeLimits(), target_size=target, fill=fill)
    img = decoded.image
    if max_side is not None:
        side = max_side if spec is None else cached_side(img.width, img.height, spec, max_side)
        if max(img.size) > side:
            img = img.copy()
            img.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def serving_tensor(path: Path, spec: InputSpec) -> np.ndarray:
    """The model input for a photo, computed exactly as serving computes it."""
    return load_for_model(path.read_bytes(), spec)[1]
