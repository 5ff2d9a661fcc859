"""Audit an image-folder data set: counts, sizes, unreadable files, duplicates, conflicts, leaks.

The audit also produces the duplicate groups that every split in training respects, so "no near
duplicate of a validation photo is in training" is enforced by construction. A group joins byte-identical
files, near duplicates by perceptual hash (resized, re-encoded) and reframed copies by matched keypoints
(cropped, bordered, mirrored, recoloured: ``matching``).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import data, hashing, matching
from .files import write_text

# A class whose median original width is this many times another's is a shortcut a model can learn.
SIZE_GAP_RATIO = 1.5
# Reframed-copy pairs by the files' digests: the keypoint matching takes about a minute for 500 photos, and
# training, the gate calibration and the tests audit one folder several times in a process.
_REFRAMED_CACHE: dict[tuple[str, ...], list[tuple[str, str, int]]] = {}


@dataclass
class AuditResult:
    """Per-file facts and the groups derived from them. ``report`` is the JSON-able summary."""

    root: Path
    samples: list[data.Sample]
    keys: list[str]
    groups: list[int]  # one group id per sample; -1 for unreadable files
    readable: list[bool]
    report: dict[str, Any] = field(default_factory=dict)

    def usable(self) -> list[int]:
        """Indices of readable samples that are not in a cross-class conflict group."""
        conflicted = {g for c in self.report.get("conflicts", []) for g in [c["group"]]}
        return [i for i, ok in enumerate(self.readable) if ok and self.groups[i] not in conflicted]


def _size_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": min(values),
        "median": float(statistics.median(values)),
        "max": max(values),
        "mean": round(statistics.fmean(values), 1),
    }


def _groups_of(members: dict[int, list[int]], keys: list[str], samples: list[data.Sample]) -> list[dict[str, Any]]:
    out = []
    for gid, idx in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(idx) < 2:
            continue
        out.append(
            {
                "group": gid,
                "size": len(idx),
                "labels": sorted({samples[i].label for i in idx}),
                "splits": sorted({samples[i].split for i in idx}),
                "files": [keys[i] for i in idx],
            }
        )
    return out


def run_audit(
    root: Path,
    *,
    max_phash: int = 10,
    max_dhash: int = 12,
    hash_side: int = 256,
    progress: bool = True,
    reframed: bool = True,
) -> AuditResult:
    """Audit the image folder at ``root``; see the module docstring (``reframed``: match keypoints too)."""
    root = Path(root)
    samples = data.discover(root)
    keys = [s.key(root) for s in samples]
    orig_sizes = data.read_original_sizes(root)
    shas: list[str] = []
    readable: list[bool] = []
    unreadable: list[dict[str, str]] = []
    ph: list[np.ndarray] = []
    dh: list[np.ndarray] = []
    sizes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    file_sizes: dict[str, list[int]] = defaultdict(list)
    blank = np.zeros(hashing.HASH_SIDE**2, dtype=bool)
    for sample, key in tqdm(list(zip(samples, keys, strict=True)), desc="audit", disable=not progress, unit="img"):
        try:
            raw = sample.path.read_bytes()
        except OSError:  # a broken link, a file that went away: load_pil raises it again, below, as unreadable
            raw = b""
        shas.append(hashing.sha256_bytes(raw))
        file_sizes[sample.label].append(len(raw))
        try:
            img = data.load_pil(sample.path)
        except Exception as exc:  # The serving decoder's errors and anything Pillow throws.
            readable.append(False)
            unreadable.append({"file": key, "error": f"{type(exc).__name__}: {exc}"})
            ph.append(blank)
            dh.append(blank)
            continue
        readable.append(True)
        sizes[sample.label].append(orig_sizes.get(key, img.size))
        small = img.copy()
        small.thumbnail((hash_side, hash_side))
        ph.append(hashing.phash(small))
        dh.append(hashing.dhash(small))

    n = len(samples)
    exact = hashing.UnionFind(n)
    near = hashing.UnionFind(n)
    first_of: dict[str, int] = {}
    for i, digest in enumerate(shas):
        if not readable[i]:  # unreadable files are reported once, as unreadable, not as copies of each other
            continue
        if digest in first_of:
            exact.union(first_of[digest], i)
            near.union(first_of[digest], i)
        else:
            first_of[digest] = i
    ok = np.array(readable)
    idx_ok = np.nonzero(ok)[0]
    pairs = hashing.near_duplicate_pairs(np.array(ph)[idx_ok], np.array(dh)[idx_ok], max_phash, max_dhash)
    for a, b, _, _ in pairs:
        near.union(int(idx_ok[a]), int(idx_ok[b]))
    hash_groups = near.groups()
    reframed_pairs = _reframed(samples, shas, [int(i) for i in idx_ok], progress) if reframed else []
    for a, b, _ in reframed_pairs:
        near.union(a, b)
    groups = [g if readable[i] else -1 for i, g in enumerate(near.groups())]

    exact_members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(exact.groups()):
        exact_members[g].append(i)
    near_members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        if g >= 0:
            near_members[g].append(i)
    exact_groups = _groups_of(exact_members, keys, samples)
    near_groups = _groups_of(near_members, keys, samples)
    conflicts = [g for g in near_groups if len(g["labels"]) > 1]
    cross_split = [g for g in near_groups if len(g["splits"]) > 1]

    distinct: Counter[str] = Counter()
    for idx in near_members.values():
        distinct[samples[idx[0]].label if len({samples[i].label for i in idx}) == 1 else "conflict"] += 1
    size_report = {
        label: {
            "width": _size_stats([w for w, _ in vals]),
            "height": _size_stats([h for _, h in vals]),
            "file_bytes": _size_stats(file_sizes[label]),
        }
        for label, vals in sorted(sizes.items())
    }
    findings = _findings(samples, readable, exact_groups, near_groups, conflicts, cross_split, unreadable, size_report)
    joined = {(hash_groups[a], hash_groups[b]) for a, b, _ in reframed_pairs if hash_groups[a] != hash_groups[b]}
    if joined:
        findings.append(
            f"REFRAMED COPIES: {len(joined)} pairs of photo groups are crops, borders, mirror images or recolourings "
            "of each other (matched keypoints); they are grouped together, so no split separates them"
        )
    report = {
        "root": str(root),
        "layout": sorted(data.resolve_layout(root)),
        "original_sizes_from": "manifest.csv" if orig_sizes else "decoded images",
        "n_files": n,
        "counts": data.folder_counts(samples),
        "distinct_photos": len(near_members),
        "distinct_by_label": dict(sorted(distinct.items())),
        "unreadable": unreadable,
        "sizes": size_report,
        "near_duplicate_thresholds": {"phash_max_bits": max_phash, "dhash_max_bits": max_dhash},
        "reframed_copies": {
            "checked": reframed,
            "min_inliers": matching.MIN_INLIERS,
            "pairs": len(reframed_pairs),
            "pairs_joining_hash_groups": len(joined),
        },
        "exact_duplicate_groups": exact_groups,
        "near_duplicate_groups": near_groups,
        "files_in_exact_duplicate_groups": sum(g["size"] for g in exact_groups),
        "files_in_near_duplicate_groups": sum(g["size"] for g in near_groups),
        "largest_group": max((g["size"] for g in near_groups), default=1),
        "conflicts": conflicts,
        "cross_split_duplicates": cross_split,
        "findings": findings,
    }
    return AuditResult(root=root, samples=samples, keys=keys, groups=groups, readable=readable, report=report)


def _reframed(
    samples: list[data.Sample], shas: list[str], readable: list[int], progress: bool
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, inliers)`` of readable files that are reframed copies of each other (``matching``)."""
    key = tuple(shas[i] for i in readable)
    if key not in _REFRAMED_CACHE:
        feats = [
            matching.features(data.load_pil(samples[i].path))
            for i in tqdm(readable, desc="keypoints", disable=not progress, unit="img")
        ]
        _REFRAMED_CACHE[key] = [(shas[readable[a]], shas[readable[b]], n) for a, b, n in matching.reframed_pairs(feats)]
    first: dict[str, int] = {}
    for i in readable:
        first.setdefault(shas[i], i)
    # By digest, so byte-identical files (already one group) and a reordered folder reuse the result.
    return [(first[a], first[b], n) for a, b, n in _REFRAMED_CACHE[key]]


def _findings(  # noqa: PLR0917 - one argument per report section
    all_samples: list[data.Sample],
    readable: list[bool],
    exact_groups: list[dict[str, Any]],
    near_groups: list[dict[str, Any]],
    conflicts: list[dict[str, Any]],
    cross_split: list[dict[str, Any]],
    unreadable: list[dict[str, str]],
    sizes: dict[str, dict[str, dict[str, float]]],
) -> list[str]:
    """Readable warnings, one per problem a trainer must know about."""
    out: list[str] = []
    try:
        data.check_classes(all_samples)  # the folder names, whether or not their photos can be read
    except ValueError as exc:
        out.append(f"CLASSES: {exc} `fit` will refuse this folder")
    # Balance and duplicates as `fit` sees them: over the files it can read.
    samples = [s for s, can_read in zip(all_samples, readable, strict=True) if can_read]
    n = len(samples)
    for label in sorted({s.label for s in all_samples} - {s.label for s in samples}):
        out.append(f"NO READABLE PHOTO: every '{label}' photo is unreadable; `fit` will refuse this folder")
    if unreadable:
        shown = "; ".join(f"{u['file']} ({u['error'][:300]})" for u in unreadable[:3])
        more = f"; and {len(unreadable) - 3} more in audit.json" if len(unreadable) > 3 else ""
        out.append(f"UNREADABLE: {len(unreadable)} file(s) cannot be decoded and are skipped: {shown}{more}")
    if exact_groups:
        extra = sum(g["size"] - 1 for g in exact_groups)
        out.append(f"EXACT DUPLICATES: {len(exact_groups)} groups of byte-identical files ({extra} redundant copies)")
    if near_groups:
        extra = sum(g["size"] - 1 for g in near_groups)
        biggest = max(g["size"] for g in near_groups)
        out.append(
            f"NEAR DUPLICATES: {len(near_groups)} groups of the same photo ({extra} redundant files, "
            f"{n - extra} distinct photos of {n}; the largest group has {biggest}); splits keep groups together"
        )
    for c in conflicts:
        out.append(f"LABEL CONFLICT: the same photo is labelled {c['labels']}: {', '.join(c['files'])}; excluded")
    if cross_split:
        out.append(
            f"CROSS-SPLIT LEAK: {len(cross_split)} photo groups appear in more than one split "
            f"{cross_split[0]['splits']}"
        )
    medians = {label: s["width"].get("median", 0.0) for label, s in sizes.items() if s.get("width")}
    if len(medians) >= 2 and min(medians.values()) > 0:
        lo, hi = min(medians, key=medians.__getitem__), max(medians, key=medians.__getitem__)
        ratio = medians[hi] / medians[lo]
        if ratio >= SIZE_GAP_RATIO:
            out.append(
                f"SIZE SHORTCUT: median original width of '{hi}' is {medians[hi]:.0f} px against {medians[lo]:.0f} px "
                f"for '{lo}' ({ratio:.1f}x); a model can learn size or blur instead of the eye (augment against it)"
            )
    labels = Counter(s.label for s in samples)
    if labels and max(labels.values()) > 1.5 * min(labels.values()):
        out.append(f"CLASS IMBALANCE: {dict(labels)}")
    return out


def summary_text(report: dict[str, Any]) -> str:
    """A short human-readable summary of an audit report."""
    lines = [f"Audit of {report['root']} ({', '.join(report['layout'])})"]
    lines.append(f"  files: {report['n_files']}  " + "  ".join(f"{k}={v}" for k, v in report["counts"].items()))
    lines.append(
        f"  distinct photos (after near-duplicate grouping): {report['distinct_photos']} {report['distinct_by_label']}"
    )
    for label, s in report["sizes"].items():
        w, h = s["width"], s["height"]
        lines.append(
            f"  {label}: original width median {w.get('median')} (min {w.get('min')}, max {w.get('max')}), "
            f"height median {h.get('median')}"
        )
    lines.append(f"  sizes from: {report['original_sizes_from']}")
    lines.append("Findings:" if report["findings"] else "Findings: none")
    lines.extend(f"  - {f}" for f in report["findings"])
    # A file name that is not valid UTF-8 reaches us with surrogates in it: escape them, for files and terminals.
    return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")


def write_report(result: AuditResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.txt`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "audit.json"
    txt = out_dir / "audit.txt"
    js.write_text(json.dumps(result.report, indent=2) + "\n", encoding="utf-8")
    write_text(txt, summary_text(result.report) + "\n")
    return js, txt
