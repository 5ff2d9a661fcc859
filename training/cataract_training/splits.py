"""Grouped, stratified splits: every duplicate group lands wholly on one side."""

from __future__ import annotations

import random
from collections import defaultdict


def _group_table(groups: list[int], labels: list[int]) -> dict[int, tuple[int, list[int]]]:
    """Group id -> (majority label, member indices)."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    table = {}
    for g, idx in members.items():
        votes = [labels[i] for i in idx]
        table[g] = (max(set(votes), key=votes.count), idx)
    return table


def grouped_kfold(groups: list[int], labels: list[int], k: int, seed: int = 0) -> list[list[int]]:
    """Sample indices of ``k`` folds; groups are never split and each fold gets its share of every class.

    Groups of each class are shuffled, then dealt largest first to the fold with the fewest photos of
    that class, which balances both group sizes and class counts.
    """
    if k < 2:
        raise ValueError("k must be at least 2")
    rng = random.Random(seed)
    table = _group_table(groups, labels)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in sorted({lab for lab, _ in table.values()}):
        gs = [g for g, (lab, _) in table.items() if lab == label]
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(table[g][1]))  # stable: ties keep the shuffled order
        per_fold = [0] * k
        for g in gs:
            f = min(range(k), key=lambda j: (per_fold[j], rng.random()))
            folds[f].extend(table[g][1])
            per_fold[f] += len(table[g][1])
    return [sorted(f) for f in folds]


def grouped_split(
    groups: list[int], labels: list[int], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Train and validation indices: about ``val_fraction`` of each class's photos, groups kept whole."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    rng = random.Random(seed)
    table = _group_table(groups, labels)
    val: list[int] = []
    for label in sorted({lab for lab, _ in table.values()}):
        gs = [g for g, (lab, _) in table.items() if lab == label]
        rng.shuffle(gs)
        target = val_fraction * sum(len(table[g][1]) for g in gs)
        taken = 0
        for g in gs:
            size = len(table[g][1])
            if taken + size / 2 > target:  # take a group if it brings us closer to the target
                continue
            val.extend(table[g][1])
            taken += size
    val_set = set(val)
    train = [i for i in range(len(groups)) if i not in val_set]
    return train, sorted(val)
