"""The benchmark helpers' arithmetic and choices: percentiles, verdicts, which run and network are measured, the
CPU-quota section's failures, and the PyTorch cold-start handler."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import quota
from benchmarks.common import (
    BUNDLED_MODEL_DIR,
    Stats,
    TorchTarget,
    faster_verdict,
    int8_variant,
    latency_table,
    latest_run,
    same_work_disagrees,
    shipped_run,
    shown,
    small_photo,
    torch_target,
)


@pytest.mark.parametrize(("n", "rank"), [(20, 19), (33, 32), (100, 95), (400, 380)])
def test_p95_is_nearest_rank(n: int, rank: int) -> None:
    assert Stats.of([float(i) for i in range(n, 0, -1)]).p95 == rank  # unsorted input, values 1..n


@pytest.mark.parametrize("n", [1, 7, 19])
def test_no_p95_of_fewer_than_twenty_samples(n: int) -> None:
    # The cold-start table's 7 samples printed their maximum twice, once called p95.
    stats = Stats.of([float(i) for i in range(1, n + 1)])
    assert math.isnan(stats.p95) and stats.hi == n
    assert "| 7 | 4.00 | n/a | 1.00–7.00 | 1.00× | n/a× |" in latency_table({"seven": [1, 2, 3, 4, 5, 6, 7]}, "seven")


def test_the_latency_table_gives_the_p95_ratio_beside_the_p50_one() -> None:
    base, slow = [1.0] * 19 + [2.0], [3.0] * 18 + [9.0, 10.0]  # p95s 1 and 9
    assert "| slow | 20 | 3.00 | 9.00 | 3.00–10.00 | 3.00× | 9.00× |" in latency_table(
        {"base": base, "slow": slow}, "base"
    )


def test_stats_summarise() -> None:
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (stats.n, stats.p50, stats.lo, stats.hi) == (4, 2.5, 1.0, 10.0)


LEVEL = "level (within 5%: not shown faster)"


@pytest.mark.parametrize(
    ("ratio", "verdict"),
    [
        (1.06, "met"),
        (1.0504, "met"),
        (1.05, LEVEL),
        (1.003, LEVEL),
        (1.0, "NOT met"),
        (0.996, "NOT met"),
        (0.9, "NOT met"),
    ],
)
def test_faster_is_only_met_beyond_the_noise_and_never_under_one(ratio: float, verdict: str) -> None:
    # 0.96 was "level (noise)" though the reference was faster in five runs in a row: a loss, however small.
    assert faster_verdict(ratio) == verdict


@pytest.mark.parametrize(
    ("value", "limit", "digits", "cell"),
    [
        (2.996, 3.0, 2, "2.996"),
        (1.0309, 1.0, 1, "1.03"),
        (1.2049, 1.2, 2, "1.205"),
        (1.59, 1.2, 2, "1.59"),
        (3.0, 3.0, 2, "3.00"),
        (1500.4, 1500, 0, "1500.4"),
        (float("nan"), 3.0, 2, "n/a"),
    ],
)
def test_a_target_cell_never_reads_as_its_limit_when_it_is_not(
    value: float, limit: float, digits: int, cell: str
) -> None:
    assert shown(value, limit, digits) == cell


@pytest.mark.parametrize(
    ("p50s", "disturbed"),
    [([11.39, 18.75], True), ([6.3, 6.9], False), ([6.3, 6.95], True), ([7.0], False), ([8.0, 7.5, 9.0], True)],
)
def test_one_piece_of_work_timed_twice_flags_a_disturbed_section(p50s: list[float], disturbed: bool) -> None:
    # 11.39 against 18.75 ms: the same tensor through the same session, in the torch section of one full run.
    assert same_work_disagrees(p50s) is disturbed


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
    # A model folder given with --model names its own run.
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"metrics": {"training_run": {"run": shipped.name}}}))
    assert int8_variant(runs, other) == (shipped / "export" / "fp32", shipped / "export" / "int8")


def _configured(runs: Path, name: str, backbone: str, size: int = 224) -> Path:
    run = _run(runs, name)
    (run / "config.json").write_text(json.dumps({"backbone": backbone, "size": size}))
    return run


def test_the_pytorch_network_is_the_measured_models(tmp_path: Path) -> None:
    runs, model = tmp_path / "runs", tmp_path / "model"
    model.mkdir()
    _configured(runs, "20261231-efficientnet_lite0", "efficientnet_lite0")  # newest, and another backbone
    training_run = {"run": "20260101-mobilenet_v2", "config": {"backbone": "mobilenet_v2"}}
    (model / "model.json").write_text(json.dumps({"input": {"size": 224}, "metrics": {"training_run": training_run}}))
    # The model's own run is not here: its backbone with random weights, never the newest run.
    assert torch_target(model, runs) == TorchTarget("mobilenet_v2", 224, None)
    own = _configured(runs, "20260101-mobilenet_v2", "mobilenet_v2")
    assert torch_target(model, runs) == TorchTarget("mobilenet_v2", 224, own)
    # A run folder of that name that trained something else is refused, with the reason.
    (own / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "size": 224}))
    refused = torch_target(model, runs)
    assert refused.run is None
    assert refused.refused is not None
    assert "efficientnet_lite0" in refused.refused
    assert "mobilenet_v2" in refused.refused


def test_the_bundled_models_backbone_is_read_from_its_provenance(tmp_path: Path) -> None:
    assert torch_target(BUNDLED_MODEL_DIR, tmp_path / "no-runs") == TorchTarget("mobilenet_v2", 224, None)


def test_a_model_of_unknown_backbone_gets_no_pytorch_network(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"input": {"size": 224}}))
    target = torch_target(tmp_path, tmp_path / "runs")
    assert target.refused is not None
    assert "records no backbone" in target.refused


def test_no_cgroup_files_is_quota_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota, "CGROUP_V1", tmp_path / "v1")
    monkeypatch.setattr(quota, "CGROUP_V2", tmp_path / "v2")  # no cgroup.controllers: not a crash
    with pytest.raises(quota.QuotaUnavailable, match="no cgroup CPU controller"), quota.cpu_quota(1769):
        pass


@pytest.mark.parametrize(
    ("stderr_end", "unavailable"),
    [
        ("failed (3):\ncannot join cgroup.procs: [Errno 13] Permission denied", True),
        # A crash of the measuring itself is the benchmark's failure, not "not measured here".
        ("failed (1):\nZeroDivisionError: division by zero", False),
    ],
)
def test_only_a_child_that_cannot_join_the_quota_is_quota_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr_end: str, unavailable: bool
) -> None:
    @contextlib.contextmanager
    def cpu_quota(memory_mb: int) -> Iterator[Path]:
        yield tmp_path / "cgroup.procs"

    def child_fails(*args: str, **kwargs: object) -> object:
        raise RuntimeError("python -m benchmarks.quota " + stderr_end)

    monkeypatch.setattr(quota, "cpu_quota", cpu_quota)
    monkeypatch.setattr(quota, "json_from_child", child_fails)
    expected = quota.QuotaUnavailable if unavailable else RuntimeError
    with pytest.raises(expected, match=stderr_end.splitlines()[-1].replace("[", r"\[").replace("]", r"\]")) as info:
        quota.compare(tmp_path, 1, 1)
    assert isinstance(info.value, quota.QuotaUnavailable) is unavailable


def test_the_memory_sizes_take_turns_and_each_row_is_set_against_the_default_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def measure(memory_mb: int, model_dir: Path, rounds: int, per_block: int) -> dict[str, list[float]]:
        calls.append((memory_mb, rounds))
        return {"small|back to back|1": [memory_mb / 1000.0] * per_block}

    monkeypatch.setattr(quota, "measure_in_quota", measure)
    results = quota.compare(tmp_path, 3, 2)
    # Round by round, every size once per round, never one size's rounds all together.
    assert calls == [(mb, 1) for _ in range(3) for mb in quota.MEMORY_SIZES]
    assert {mb: len(v["small|back to back|1"]) for mb, v in results.items()} == dict.fromkeys(quota.MEMORY_SIZES, 6)
    rows = {line.split(" |")[0]: line.rsplit("|", 2)[-2].strip() for line in quota.table(results).splitlines()[2:]}
    assert rows == {
        "| 1769 MB (1.00 vCPU)": "0.86×",
        "| 2048 MB (1.16 vCPU)": "1.00×",
        "| 3538 MB (2.00 vCPU)": "1.73×",
    }


def test_a_child_refused_the_quota_exits_with_its_own_code(tmp_path: Path) -> None:
    procs = tmp_path / "no-such-group" / "cgroup.procs"
    with pytest.raises(SystemExit) as info:
        quota._child(procs, tmp_path, 1, 1)
    assert info.value.code == quota.CANNOT_JOIN


def test_the_pytorch_handler_builds_the_runs_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cataract_inference import events
    from cataract_training.backbones import CataractNet

    run = _configured(tmp_path / "runs", "20260101-efficientnet_lite0", "efficientnet_lite0", size=160)
    net = CataractNet("efficientnet_lite0", n_classes=2, pretrained=False).eval()
    torch.save(net.state_dict(), run / "model.pt")
    monkeypatch.setenv("BENCH_TORCH_RUN", str(run))
    monkeypatch.delitem(sys.modules, "benchmarks.torch_handler", raising=False)
    threads = torch.get_num_threads()  # the module sets one thread, as on Lambda; give the others theirs back
    try:
        handler = importlib.import_module("benchmarks.torch_handler")
        photo = small_photo()
        response = handler.lambda_handler(events.predict_event(photo), None)
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("benchmarks.torch_handler", None)
    assert response["statusCode"] == 200
    # The same answer as the run's network on the photo resized to its size, normalised with its mean and std (0.5).
    img = Image.open(io.BytesIO(photo)).convert("RGB").resize((160, 160))
    x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) - 0.5) / 0.5
    with torch.inference_mode():
        expected = torch.softmax(net(x[None])[0], -1)
    body = json.loads(response["body"])
    assert body["cataract"] == pytest.approx(float(expected[0]), abs=1e-5)


def test_the_quota_table_gives_n_p50_p95_and_min_max() -> None:
    from benchmarks import quota

    samples = [3.0, 1.0, 2.0] + [2.5] * 17  # 20: a p95 to report
    text = quota.table({quota.ONE_VCPU_MB: {"small photo|one at a time|1": samples}})
    assert "| n | p50 ms | p95 ms | min–max ms |" in text
    assert text.splitlines()[-1].endswith("| 1 | 20 | 2.50 | 2.50 | 1.00–3.00 | – |")  # no 2048 MB row to divide by
