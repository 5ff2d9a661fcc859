"""The benchmark helpers' arithmetic and choices: percentiles, verdicts, which run is measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import Stats, faster_verdict, int8_variant, latest_run, shipped_run


@pytest.mark.parametrize(("n", "rank"), [(1, 1), (7, 7), (20, 19), (33, 32), (100, 95), (400, 380)])
def test_p95_is_nearest_rank(n: int, rank: int) -> None:
    assert Stats.of([float(i) for i in range(n, 0, -1)]).p95 == rank  # unsorted input, values 1..n


def test_stats_summarise() -> None:
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (stats.n, stats.p50, stats.lo, stats.hi) == (4, 2.5, 1.0, 10.0)


@pytest.mark.parametrize(
    ("ratio", "verdict"),
    [(1.06, "met"), (1.003, "level (within 5%: noise)"), (0.96, "level (within 5%: noise)"), (0.9, "NOT met")],
)
def test_faster_is_only_met_beyond_the_noise(ratio: float, verdict: str) -> None:
    assert faster_verdict(ratio) == verdict


def _run(runs: Path, name: str, export: bool = False) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"x")
    if export:
        for variant in ("fp32", "int8"):
            (run / "export" / variant).mkdir(parents=True)
            (run / "export" / variant / "model.onnx").write_bytes(b"x")
    return run


def test_the_shipped_run_is_measured_not_the_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import common

    runs, model = tmp_path / "runs", tmp_path / "model"
    model.mkdir()
    shipped = _run(runs, "20260101-mobilenet_v2", export=True)
    _run(runs, "20261231-experiment")  # newer, and not what is served
    (model / "model.json").write_text(json.dumps({"metrics": {"training_run": {"run": shipped.name}}}))
    monkeypatch.setattr(common, "BUNDLED_MODEL_DIR", model)
    assert shipped_run(runs, model) == shipped
    assert latest_run(runs) == shipped
    assert int8_variant(runs) == (shipped / "export" / "fp32", shipped / "export" / "int8")
    # Without the shipped run's checkpoint here, the newest run stands in.
    (model / "model.json").write_text(json.dumps({"metrics": {}}))
    assert latest_run(runs) == runs / "20261231-experiment"
    assert int8_variant(runs) is None
