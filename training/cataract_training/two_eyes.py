"""Photos of both eyes: does a clear eye mask a cataract in the other, and does screening each half help?

    python -m cataract_training.two_eyes --model-dir functions/inference/model \
        --data ../shared/data/cataract-eyes/train [--companion normal/image_24.png]

Every image goes through ``Classifier.measure``: the served decision is the most suspicious of the whole
photo and, for a photo at least ``SPLIT_ASPECT`` times as long as it is high, each of its halves; the
whole-photo-only decision it replaces is ``views["whole"]``. Reported:

1. Real photos that wide (many show both eyes): how many verdicts the split changes, per class.
2. Composites of two photos side by side, the way a photo of both eyes frames them: a cataract photo
   (referred on its own) beside a normal one, with random companions and with the most confidently normal
   ones; referrals lost with and without the split. Then two normal photos: referrals made.

Sources are the training run's validation photos when its split is found (see ``gate.eye_set``), else all.
The composites are synthetic: a nose bridge, a face's shading and one camera's exposure across both eyes
are missing. They test the rule, not the model's accuracy on real photos of both eyes.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cataract_inference.classifier import PROBABILITY_DECIMALS, SPLIT_ASPECT, Classifier, load_classifier
from cataract_inference.imaging import decode_image

from .files import escape_unencodable_output

RATIOS = (2.0, 3.0, 4.0)
STRONGEST_COMPANIONS = 3  # the normal photos the model is surest of: the likeliest to mask a cataract
COMPOSITE_HEIGHT = 400


@dataclass(frozen=True)
class Screened:
    """One photo's served and whole-photo-only cataract probability."""

    path: Path
    label: str
    aspect: float
    served: float
    whole: float
    gradable: bool


def side_by_side(first: Image.Image, second: Image.Image, ratio: float, height: int = COMPOSITE_HEIGHT) -> Image.Image:
    """Two photos on a ``ratio``:1 canvas, each fitted (aspect kept) into its half, on their mean colour."""
    width = round(height * ratio)
    half = width // 2
    pixels = np.concatenate([np.asarray(first).reshape(-1, 3), np.asarray(second).reshape(-1, 3)])
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in pixels.mean(0)))
    for i, photo in enumerate((first, second)):
        scale = min(half / photo.width, height / photo.height)
        fitted = photo.resize(
            (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.Resampling.LANCZOS
        )
        canvas.paste(fitted, (i * half + (half - fitted.width) // 2, (height - fitted.height) // 2))
    return canvas


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _cataract_probabilities(classifier: Classifier, data: bytes) -> tuple[float, float, bool]:
    """(served, whole photo only, gradable) P(positive) of one encoded image."""
    measured = classifier.measure(data)  # with the skin fraction: a gate with an eye score reads it
    pos = classifier.manifest.positive_index
    served = float(measured.probabilities[pos])
    whole = measured.views["whole"] if measured.views else served
    return served, whole, classifier.gate_verdict(measured).gradable


def screen_photos(classifier: Classifier, paths: Sequence[Path], labels: Sequence[str]) -> list[Screened]:
    """Every photo's served and whole-only probabilities."""
    out = []
    for path, label in zip(paths, labels, strict=True):
        data = path.read_bytes()
        width, height = decode_image(data).image.size
        served, whole, gradable = _cataract_probabilities(classifier, data)
        out.append(Screened(path, label, max(width, height) / min(width, height), served, whole, gradable))
    return out


def refers(p_positive: float, threshold: float) -> bool:
    """The served referral rule: the probability as the response rounds it, against the threshold."""
    return round(p_positive, PROBABILITY_DECIMALS) >= threshold


def real_wide_photos(photos: Sequence[Screened], threshold: float) -> dict[str, Any]:
    """Per class: gradable photos split in two, and how many referrals the split added."""
    out: dict[str, Any] = {}
    for label in sorted({p.label for p in photos}):
        wide = [p for p in photos if p.label == label and p.gradable and p.aspect >= SPLIT_ASPECT]
        out[label] = {
            "gradable_photos": sum(p.label == label and p.gradable for p in photos),
            "split": len(wide),
            "referred_whole_only": sum(refers(p.whole, threshold) for p in wide),
            "referred_served": sum(refers(p.served, threshold) for p in wide),
        }
    return out


def composites(
    classifier: Classifier,
    photos: Sequence[Screened],
    positive: str,
    *,
    seed: int = 0,
    companions: Sequence[Screened] = (),
    chosen: Sequence[Screened] = (),
) -> list[dict[str, Any]]:
    """Lost and false referrals of side-by-side composites, with and without the split, per ratio.

    ``companions``: more normal photos to draw the surest companions from (default: ``photos``' own);
    ``chosen``: normal photos to put beside every cataract photo as well, one row each.
    """
    threshold = classifier.manifest.threshold
    rng = random.Random(seed)
    surest = "surest normal of all photos, training's too" if companions else "surest normal"
    usable = [p for p in photos if p.gradable and p.aspect < SPLIT_ASPECT]  # one eye each, as far as we know
    cataracts = [p for p in usable if p.label == positive and refers(p.served, threshold)]
    normals = [p for p in usable if p.label != positive and not refers(p.served, threshold)]
    if not cataracts or len(normals) < 2:
        raise ValueError("too few photos for composites: need referred cataract photos and 2+ unreferred normal ones")
    pool = [p for p in companions if p.gradable and p.aspect < SPLIT_ASPECT and p.label != positive] or normals
    strongest = sorted(pool, key=lambda p: p.served)[:STRONGEST_COMPANIONS]
    image = {p.path: decode_image(p.path.read_bytes()).image for p in [*cataracts, *normals, *strongest, *chosen]}
    cases: list[tuple[str, Screened, Screened, bool]] = []  # kind, left photo, right photo, referral expected
    for cataract in cataracts:
        companion = rng.choice(normals)
        pair = (cataract, companion) if rng.random() < 0.5 else (companion, cataract)
        cases.append(("cataract + random normal: referral lost", *pair, True))
        cases += [(f"cataract + {surest}: referral lost", cataract, strong, True) for strong in strongest]
        cases += [(f"cataract + {c.path.parent.name}/{c.path.name}: referral lost", cataract, c, True) for c in chosen]
        left, right = rng.sample(normals, 2)
        cases.append(("normal + normal: referred", left, right, False))
    rows = []
    for ratio in RATIOS:
        tallies: dict[str, list[int]] = {}  # kind: cases, wrong whole-only, wrong served
        for kind, first, second, referral_expected in cases:
            composite = side_by_side(image[first.path], image[second.path], ratio)
            served, whole, _ = _cataract_probabilities(classifier, _png(composite))
            tally = tallies.setdefault(kind, [0, 0, 0])
            tally[0] += 1
            tally[1] += refers(whole, threshold) != referral_expected
            tally[2] += refers(served, threshold) != referral_expected
        rows += [
            {"ratio": ratio, "kind": kind, "cases": n, "whole_only": w, "served": s}
            for kind, (n, w, s) in tallies.items()
        ]
    return rows


def report(real: dict[str, dict[str, Any]], rows: Sequence[dict[str, Any]], threshold: float, note: str) -> str:
    """The findings as markdown; ``real``: ``real_wide_photos`` per set of photos."""
    lines = [
        f"Photos: {note}. Split at {SPLIT_ASPECT:g}:1 or more; referral threshold {threshold:.4f}.",
        "",
        "| real photos | class | gradable | split in two | referred, whole photo only | referred, served |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {label} | {r['gradable_photos']} | {r['split']} | {r['referred_whole_only']} | "
            f"{r['referred_served']} |"
            for name, per_class in real.items()
            for label, r in per_class.items()
        ),
        "",
        "| composite | ratio | cases | whole photo only | served (halves too) |",
        "|---|---|---|---|---|",
        *(f"| {r['kind']} | {r['ratio']:g}:1 | {r['cases']} | {r['whole_only']} | {r['served']} |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def run(
    model_dir: Path, data_dir: Path, split_json: Path | None = None, seed: int = 0, chosen: Sequence[str] = ()
) -> dict[str, Any]:
    """Screen the photos and the composites; the numbers and the markdown report."""
    from . import data, gate

    classifier = load_classifier(model_dir)
    samples = data.discover(data_dir)
    split_path = gate.find_split(model_dir, split_json)
    unseen = {s.key(data_dir) for s in samples}
    note = "all photos (no split found: the model trained on most of them)"
    if split_path is not None:
        split = gate.load_split(split_path)
        # The split names photos relative to the folder training read: any other folder matches none of them.
        gate.check_data_is_the_splits(
            data_dir,
            model_dir,
            report={"counts": data.folder_counts(samples)},
            keys=[s.key(data_dir) for s in samples],
            split=split,
            split_path=split_path,
            explicit=split_json,
        )
        unseen = set(split.get("val", []))
        note = (
            f"the {sum(s.key(data_dir) in unseen for s in samples)} validation photos of {gate.run_name(split_path)}; "
            "the surest companions are drawn from all photos (a photo the model trained on stands for one it is "
            "very sure of)"
        )
    everything = screen_photos(classifier, [s.path for s in samples], [s.label for s in samples])
    photos = [p for p, s in zip(everything, samples, strict=True) if s.key(data_dir) in unseen]
    by_key = {s.key(data_dir): p for p, s in zip(everything, samples, strict=True)}
    missing = [key for key in chosen if key not in by_key]
    if missing:
        raise ValueError(f"--companion {missing[0]!r} is not a photo under {data_dir} (give it as class/file)")
    rows = composites(
        classifier,
        photos,
        classifier.manifest.positive_class,
        seed=seed,
        companions=everything,
        chosen=[by_key[key] for key in chosen],
    )
    threshold = classifier.manifest.threshold
    real = {"unseen": real_wide_photos(photos, threshold)}
    if len(photos) < len(everything):
        real["all, training's too"] = real_wide_photos(everything, threshold)
    return {"real": real, "composites": rows, "markdown": report(real, rows, threshold, note)}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    escape_unencodable_output()
    parser = argparse.ArgumentParser(prog="python -m cataract_training.two_eyes", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="folder with model.onnx and model.json")
    parser.add_argument("--data", type=Path, required=True, help="real eye photos, one folder per class")
    parser.add_argument("--split", type=Path, default=None, help="the training run's split.json (found if omitted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--companion", action="append", default=[], help="a normal photo (class/file) to set beside every cataract"
    )
    args = parser.parse_args(argv)
    from cataract_inference.model_source import ModelLoadError

    try:
        result = run(args.model_dir, args.data, args.split, args.seed, args.companion)
    except (ModelLoadError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
