"""The benchmark runner's report: partial runs, failing sections, --skip, and which PyTorch network it times.

Every section's measuring is replaced by a stub: these tests check what ``benchmarks.run`` writes, not timings.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from benchmarks import run
from benchmarks.common import BUNDLED_MODEL_DIR, small_photo

COMMITTED_REPORT = Path(run.__file__).resolve().parent / "results" / "latest.md"
SMALL, PHONE = "small photo (320×240 JPEG)", "phone photo (3000×2000 JPEG)"


def _targets(report: str) -> dict[str, tuple[str, str]]:
    """The report's targets table: what → (measured, verdict)."""
    table = report.split("### Targets", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    names = [cells[0].strip() for cells in rows]
    assert len(names) == len(set(names)), f"a target is listed twice: {names}"
    return {cells[0].strip(): (cells[2].strip(), cells[3].strip()) for cells in rows}


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``run.main`` with the machine description, photos and handler stubbed; results go under ``tmp_path``."""
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(run.tempfile, "mkdtemp", lambda prefix="": str(tmp_path / "scratch"))
    monkeypatch.setattr(run, "quiet_environment", lambda: None)
    monkeypatch.setattr(run, "_machine", lambda: "a test machine")
    monkeypatch.setattr(run, "_provenance", lambda model_dir: "a test commit")
    monkeypatch.setattr(run, "small_photo", lambda: b"small")
    monkeypatch.setattr(run, "phone_photo", lambda **_: b"phone")
    model_path = SimpleNamespace(model_path=tmp_path / "model.onnx")
    handler = SimpleNamespace(classifier=SimpleNamespace(artifact=model_path))
    monkeypatch.setattr(run.latency, "load_handler", lambda model_dir, threads=1: handler)
    return tmp_path


def _model(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def _all_but(*sections: str) -> str:
    return ",".join(s for s in run.SECTIONS if s not in sections)


def _export_pair(tmp_path: Path) -> Path:
    """A training run's export folder under ``tmp_path/runs``, with an fp32 and an int8 model.json."""
    export = tmp_path / "runs" / "a-run" / "export"
    for variant in ("fp32", "int8"):
        (export / variant).mkdir(parents=True)
        (export / variant / "model.json").write_bytes((BUNDLED_MODEL_DIR / "model.json").read_bytes())
    return export


def test_an_unknown_section_to_skip_is_an_error(bench: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--skip", "deps,tunnig"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "tunnig" in err
    assert "latency, reference, torch, int8, tuning, quota" in err  # the valid names, to correct the typo
    assert not (bench / "results").exists()


def test_a_partial_run_says_so_and_leaves_the_full_set_alone(bench: Path) -> None:
    assert run.main(["--quick", "--skip", ",".join(run.SECTIONS)]) == 0
    assert not (bench / "results" / "latest.md").exists()
    report = (bench / "results" / "partial.md").read_text(encoding="utf-8")
    assert "Partial run, not the full set: `--quick` (fewer repeats); sections skipped: latency, reference" in report
    targets = _targets(report)
    # Every target the committed full run reports is still listed, marked as not measured.
    full = _targets(COMMITTED_REPORT.read_text(encoding="utf-8"))
    assert full
    assert set(full) <= set(targets)
    assert {row for what, row in targets.items() if what in full} == {("not measured", "skipped (--skip)")}


def test_an_explicit_output_is_written_for_a_partial_run(bench: Path) -> None:
    assert run.main(["--skip", ",".join(run.SECTIONS), "--output", str(bench / "mine.md")]) == 0
    assert "sections skipped: latency" in (bench / "mine.md").read_text(encoding="utf-8")
    assert not (bench / "results").exists()


def test_a_run_leaves_no_scratch_files(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def int8_section(*args: Any, **kwargs: Any) -> None:
        (bench / "scratch" / "int8-rebuild").mkdir()  # what a rebuild leaves there: megabytes of model
        raise RuntimeError("a section failed")

    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: None)
    monkeypatch.setattr(run.int8, "rebuild", lambda *args: run.int8.Pair(bench, bench, "stub", None))
    monkeypatch.setattr(run, "int8_section", int8_section)
    with pytest.raises(RuntimeError):
        run.main(["--skip", _all_but("int8"), "--output", str(bench / "mine.md")])
    assert (bench / "mine.md").is_file() and not (bench / "scratch").exists()


def test_a_failing_section_still_writes_what_was_measured(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {"serving: 1 thread, ENABLE_ALL, no spin": [1.0, 1.2], "other": [2.0, 2.2]}
    monkeypatch.setattr(run.tuning, "compare", lambda path, reps: (runs, {"serving options": [17.0, 16.0, 18.5]}))

    def child_fails(*args: str, **kwargs: Any) -> Any:
        raise RuntimeError("python -m benchmarks.memory failed (1):\nMemoryError")

    monkeypatch.setattr(run, "json_from_child", child_fails)
    out = bench / "report.md"
    with pytest.raises(RuntimeError):
        run.main(["--skip", _all_but("tuning", "memory", "deps"), "--output", str(out)])
    report = out.read_text(encoding="utf-8")
    assert "| serving options | 3 | 17.0 | 16.0–18.5 |" in report  # the tuning section, measured before memory failed
    assert "stopped early: section `memory` failed (RuntimeError: python -m benchmarks.memory failed (1):)" in report
    targets = _targets(report)
    assert targets["peak RSS after 1,000 requests"] == ("not measured", "not measured: the run stopped")
    assert targets["installed runtime dependencies"] == ("not measured", "not measured: the run stopped")
    assert targets[f"handler ÷ bare, {SMALL}"] == ("not measured", "skipped (--skip)")


def _torch_tables(forward_ratio: float) -> dict[str, dict[str, list[float]]]:
    samples = {
        "ORT session.run": [1.0],
        "torch eager forward": [forward_ratio],
        "our handler": [2.0],
        "torch photo→probabilities": [7.0],
    }
    return {SMALL: samples, PHONE: samples}


def test_torch_times_the_measured_models_backbone(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path | None, str]] = []

    def versus_torch(
        handler: Any, photos: Any, run_dir: Path | None, repeats: int, backbone: str = "mobilenet_v2"
    ) -> tuple[dict[str, dict[str, list[float]]], str]:
        calls.append((run_dir, backbone))
        return _torch_tables(2.996), "stub"

    monkeypatch.setattr(run.latency, "versus_torch", versus_torch)
    # An efficientnet model whose run is not here: never another run, whatever runs/ holds.
    config = {"run": "20260101-not-here", "config": {"backbone": "efficientnet_lite0"}}
    model = _model(bench / "model", {"input": {"size": 192}, "metrics": {"training_run": config}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("torch"), "--model", str(model), "--output", str(out)]) == 0
    assert calls == [(None, "efficientnet_lite0")]
    report = out.read_text(encoding="utf-8")
    assert "`CataractNet(efficientnet_lite0)` at 192 px with random weights" in report
    assert f"for the measured model ({model})" in report
    # 2.996 misses "≥ 3×": shown as 2.996×, not rounded to the limit it misses.
    assert _targets(report)[f"torch forward ÷ ORT run, {SMALL}"] == ("2.996×", "NOT met")


def test_torch_is_not_measured_for_a_model_of_unknown_backbone(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def versus_torch(*args: Any, **kwargs: Any) -> tuple[dict[str, dict[str, list[float]]], str]:
        raise AssertionError("a network that may not be the served one was timed")

    monkeypatch.setattr(run.latency, "versus_torch", versus_torch)
    model = _model(bench / "model", {"input": {"size": 224}, "metrics": {}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("torch"), "--model", str(model), "--output", str(out)]) == 0
    report = out.read_text(encoding="utf-8")
    assert "_Not measured: " in report
    assert "records no backbone" in report
    targets = _targets(report)
    rows = [targets[f"torch forward ÷ ORT run, {name}"] for name in (SMALL, PHONE)]
    assert all(measured == "not measured" for measured, _ in rows)


def test_int8_refuses_an_export_of_another_backbone(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = bench / "runs" / "20261231-efficientnet_lite0"
    (other / "export" / "fp32").mkdir(parents=True)
    (other / "export" / "int8").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "size": 224}))
    pair = (other / "export" / "fp32", other / "export" / "int8")
    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: pair)

    def int8_section(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("another backbone's export was measured")

    monkeypatch.setattr(run, "int8_section", int8_section)
    training_run = {"run": "20260101-not-here", "config": {"backbone": "mobilenet_v2"}}
    model = _model(bench / "model", {"input": {"size": 224}, "metrics": {"training_run": training_run}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("int8"), "--model", str(model), "--output", str(out)]) == 0
    report = out.read_text(encoding="utf-8")
    assert re.search(r"Not measured: .*20261231-efficientnet_lite0.* efficientnet_lite0.* mobilenet_v2", report)
    assert _targets(report)["int8 speed-up over fp32"][0] == "not measured"


def test_int8_verdict_judges_the_unrounded_speed_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = _export_pair(tmp_path)
    monkeypatch.setattr(run, "SHARED_TRAIN", tmp_path / "no-photos")
    # 2.999 ÷ 2.0 = 1.4995 misses "≥ 1.5×": shown with the digit that says so, not rounded up to the limit.
    monkeypatch.setattr(run.int8, "latency", lambda *args: {"fp32 session.run": [2.999], "int8 session.run": [2.0]})
    targets: list[run.Row] = []
    unmeasured: dict[str, str] = {}
    run.int8_section(
        run.int8.from_export(export / "fp32", export / "int8"),
        small_photo(),
        1,
        lambda text: None,
        targets,
        unmeasured=unmeasured,
    )
    assert targets[0] == ("int8 speed-up over fp32", "≥ 1.5×", "1.4995×", "NOT met")  # its own export: no label
    # No validation photos here: the accuracy row is not measured, not failed, and the run is not the full set.
    why = "not measured: no validation photos (the data or the run's split.json is absent)"
    assert targets[1] == ("int8 accuracy loss on validation", "≤ 1 point", "not measured", why)
    assert unmeasured == {"int8": why} and run.run_kind(False, set(), None, unmeasured)[0]


def _measurable_int8_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An export pair with its split.json and a photo folder, the int8 section's latency stubbed at 3.0 and 2.0 ms:
    what the section needs to go on to the validation rows."""
    export = _export_pair(tmp_path)
    (tmp_path / "photos").mkdir()
    (export.parent / "split.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(run, "SHARED_TRAIN", tmp_path / "photos")
    monkeypatch.setattr(run.int8, "latency", lambda *args: {"fp32 session.run": [3.0], "int8 session.run": [2.0]})
    return run.int8.from_export(export / "fp32", export / "int8")


def test_one_validation_photo_lost_of_97_misses_the_int8_accuracy_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 of 97 is 1.03 points: judged after rounding to one decimal it read "+1.0 points", met.
    pair = _measurable_int8_export(tmp_path, monkeypatch)
    outputs = {"logits": np.zeros((97, 2))}
    fp32_labels = np.array(["cataract"] * 50 + ["normal"] * 47)
    int8_labels = fp32_labels.copy()
    int8_labels[60] = "cataract"
    val = {
        "fp32": {
            "n": 97,
            "accuracy": 100 * 95 / 97,
            "sensitivity": 100.0,
            "positives": 50,
            "outputs": outputs,
            "labels": fp32_labels,
            "probabilities": np.full(97, 0.5),
        },
        "int8": {
            "n": 97,
            "accuracy": 100 * 94 / 97,
            "sensitivity": 100.0,
            "positives": 50,
            "outputs": outputs,
            "labels": int8_labels,
            "probabilities": np.full(97, 0.5) + np.arange(97) / 1000,
        },
    }
    transforms: list[tuple[Any, ...]] = []

    def validation(*args: Any) -> dict[str, dict[str, Any]]:
        transforms.append(args[3:])
        return val

    monkeypatch.setattr(run.int8, "validation", validation)
    assert pair.split is not None and pair.split.is_file()
    targets: list[run.Row] = []
    lines: list[str] = []
    run.int8_section(pair, small_photo(), 1, lines.append, targets, unmeasured={})
    name, _, measured, mark = targets[1]
    assert name == "int8 accuracy loss on validation" and mark == "NOT met"
    assert measured.startswith("+1.03 points (fp32 − int8)")
    # Then once per shift, each with its transform: a row of both accuracies, the decisions that differ, and the
    # largest probability change.
    shifts = run.int8.shifts()
    assert transforms[0] == () and len(transforms) == 1 + len(shifts)
    assert all(len(t) == 1 and callable(t[0]) for t in transforms[1:])
    assert f"| warmer_white_balance | 97 | {100 * 95 / 97:.1f}% | {100 * 94 / 97:.1f}% | 1 | 0.096 |" in lines
    assert sum(line.startswith(tuple(f"| {shift} |" for shift in shifts)) for line in lines) == len(shifts)


def test_the_memory_targets_are_in_megabytes_and_judged_unrounded(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child reported MiB as "MB" (136.8 for 143.4 MB), and a growth of 10.04 MB read as 10.0, met.
    mem = {
        "peak_bytes": 143_400_000,
        "growth_after_warm_up_bytes": 10_040_000,
        **{k: 1.0 for k in ("rss_init_mb", "rss_warm_mb", "rss_end_mb", "peak_mb", "growth_after_warm_up_mb")},
        "statuses": {200: 1000},
    }
    monkeypatch.setattr(run, "json_from_child", lambda *args, **kwargs: mem)
    out = bench / "report.md"
    run.main(["--skip", _all_but("memory"), "--output", str(out)])
    targets = _targets(out.read_text(encoding="utf-8"))
    assert targets["peak RSS after 1,000 requests"] == ("143.4 MB", "met")
    assert targets["RSS growth after warm-up"] == ("10.04 MB", "NOT met")


def test_only_a_run_that_measured_everything_is_the_full_set() -> None:
    assert run.run_kind(False, set(), None, {}) == (False, "_Full run: every section._")
    # No --quick, no --skip, no failure: int8 with no export here still leaves the full set unmeasured.
    partial, head = run.run_kind(False, set(), None, {"int8": "not measured: no run with an int8 export"})
    assert partial and head == (
        "_Partial run, not the full set: not measured here: int8 (not measured: no run with an int8 export)._"
    )
    partial, head = run.run_kind(False, {"deps"}, None, {"deps": "skipped (--skip)"})
    assert partial and "not measured here" not in head and "sections skipped: deps" in head


def test_ctrl_c_mid_run_writes_a_partial_report_and_stops(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(path: Path, reps: int) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(run.tuning, "compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.main(["--skip", _all_but("tuning", "deps")])
    assert not (bench / "results" / "latest.md").exists()
    report = (bench / "results" / "partial.md").read_text(encoding="utf-8")
    assert "stopped early: section `tuning` failed (KeyboardInterrupt" in report
    assert _targets(report)["installed runtime dependencies"] == ("not measured", "not measured: the run stopped")


def test_int8_refuses_an_export_of_the_same_backbone_at_another_size(
    bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = bench / "runs" / "20261231-mobilenet_v2-160"
    (other / "config.json").parent.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"backbone": "mobilenet_v2", "size": 160}))
    pair = (other / "export" / "fp32", other / "export" / "int8")
    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: pair)
    monkeypatch.setattr(run, "int8_section", lambda *a, **k: pytest.fail("another network's export was measured"))
    training_run = {"run": "20260101-not-here", "config": {"backbone": "mobilenet_v2"}}
    model = _model(bench / "model", {"input": {"size": 224}, "metrics": {"training_run": training_run}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("int8"), "--model", str(model), "--output", str(out)]) == 0
    report = out.read_text(encoding="utf-8")
    assert "at 160 px, but the measured model is mobilenet_v2 at 224 px" in report
    assert _targets(report)["int8 speed-up over fp32"][0] == "not measured"


def test_int8_rows_name_a_run_that_is_not_the_models_own(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = bench / "runs" / "20261231-mobilenet_v2"
    (other / "config.json").parent.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"backbone": "mobilenet_v2", "size": 224}))
    pair = (other / "export" / "fp32", other / "export" / "int8")
    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: pair)

    def int8_section(pair: Any, photo: bytes, reps: int, emit: Any, targets: list[run.Row], **kwargs: Any) -> None:
        targets.append(("int8 speed-up over fp32", "≥ 1.5×", f"1.90×{kwargs['whose']}", "met"))

    monkeypatch.setattr(run, "int8_section", int8_section)
    training_run = {"run": "20260101-not-here", "config": {"backbone": "mobilenet_v2"}}
    model = _model(bench / "model", {"input": {"size": 224}, "metrics": {"training_run": training_run}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("int8"), "--model", str(model), "--output", str(out)]) == 0
    assert _targets(out.read_text(encoding="utf-8"))["int8 speed-up over fp32"] == (
        "1.90× (run 20261231-mobilenet_v2)",
        "met",
    )


def test_int8_without_a_runs_export_measures_a_rebuild_and_says_so(
    bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: None)
    rebuilt = run.int8.Pair(bench / "model", bench / "scratch" / "int8", "Rebuilt here, by a stub.", None)
    asked: list[tuple[Path, Path, Path]] = []

    def rebuild(model_dir: Path, data_root: Path, work: Path) -> run.int8.Pair:
        asked.append((model_dir, data_root, work))
        return rebuilt

    def int8_section(pair: Any, photo: bytes, reps: int, emit: Any, targets: list[run.Row], **kwargs: Any) -> None:
        assert pair is rebuilt
        emit(pair.origin)
        targets.append(("int8 speed-up over fp32", "≥ 1.5×", f"1.80×{kwargs['whose']}", "met"))
        targets.append(("int8 accuracy loss on validation", "≤ 1 point", "not measured", "not measured: no photos"))

    monkeypatch.setattr(run.int8, "rebuild", rebuild)
    monkeypatch.setattr(run, "int8_section", int8_section)
    training_run = {"run": "20260101-not-here", "config": {"backbone": "mobilenet_v2"}}
    model = _model(bench / "model", {"input": {"size": 224}, "metrics": {"training_run": training_run}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("int8"), "--model", str(model), "--output", str(out)]) == 0
    assert asked == [(model, run.SHARED_TRAIN, bench / "scratch" / "int8-rebuild")]
    report = out.read_text(encoding="utf-8")
    assert "Rebuilt here, by a stub." in report
    targets = _targets(report)
    # A measured row names the rebuild; a row it could not measure stays "not measured", with its own reason.
    assert targets["int8 speed-up over fp32"] == ("1.80× (int8 rebuilt here)", "met")
    assert targets["int8 accuracy loss on validation"] == ("not measured", "not measured: no photos")


def test_int8_that_cannot_be_rebuilt_is_not_measured_with_the_reason(
    bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "int8_variant", lambda *args, **kwargs: None)

    def rebuild(*args: Any) -> run.int8.Pair:
        raise run.int8.CannotRebuild("the measured model is already int8")

    monkeypatch.setattr(run.int8, "rebuild", rebuild)
    monkeypatch.setattr(run, "int8_section", lambda *a, **k: pytest.fail("nothing to measure was measured"))
    model = _model(bench / "model", {"input": {"size": 224}})
    out = bench / "report.md"
    assert run.main(["--skip", _all_but("int8"), "--model", str(model), "--output", str(out)]) == 0
    report = out.read_text(encoding="utf-8")
    assert "none can be rebuilt here: the measured model is already int8._" in report
    assert _targets(report)["int8 speed-up over fp32"] == (
        "not measured",
        "not measured: no run with an int8 export, and none rebuilt here",
    )


def test_int8_rows_say_whose_int8_they_measured_even_when_the_section_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = _export_pair(tmp_path)
    (tmp_path / "runs" / "a-run" / "split.json").write_text('{"train": [], "val": []}', encoding="utf-8")
    (tmp_path / "photos").mkdir()
    monkeypatch.setattr(run, "SHARED_TRAIN", tmp_path / "photos")
    monkeypatch.setattr(run.int8, "latency", lambda *args: {"fp32 session.run": [3.6], "int8 session.run": [2.0]})

    def validation(*args: Any) -> Any:
        raise RuntimeError("a photo could not be read")

    monkeypatch.setattr(run.int8, "validation", validation)
    targets: list[run.Row] = []
    pair = run.int8.from_export(export / "fp32", export / "int8")
    with pytest.raises(RuntimeError):
        run.int8_section(
            pair, small_photo(), 1, lambda text: None, targets, unmeasured={}, whose=" (int8 rebuilt here)"
        )
    assert targets == [("int8 speed-up over fp32", "≥ 1.5×", "1.80× (int8 rebuilt here)", "met")]


def test_the_int8_shifts_change_the_photo_as_named() -> None:
    from PIL import Image

    from cataract_inference.imaging import decode_image

    grey = Image.new("RGB", (64, 48), (150, 150, 150))
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    shifts = run.int8.shifts()
    assert {"shrunk_to_128px_jpeg50", "upscaled_to_1024px", "gaussian_blur_2px"} <= set(shifts)
    warmer = np.asarray(decode_image(shifts["warmer_white_balance"](buf.getvalue())).image)
    assert warmer[0, 0].tolist() == [168, 150, 128]  # 150 × (1.12, 1, 0.85)
    darker = np.asarray(decode_image(shifts["darker_by_a_third"](buf.getvalue())).image)
    assert darker[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(decode_image(shifts["upscaled_to_1024px"](buf.getvalue())).image).shape == (768, 1024, 3)


def test_int8_agreement_counts_changed_decisions_and_the_largest_probability_change() -> None:
    reference = {
        "n": 3,
        "accuracy": 100.0,
        "labels": np.array(["cataract", "normal", "normal"]),
        "probabilities": np.array([0.9, 0.1, 0.3]),
    }
    other = {
        "n": 3,
        "accuracy": 200 / 3,
        "labels": np.array(["cataract", "cataract", "normal"]),
        "probabilities": np.array([0.85, 0.35, 0.3]),
    }
    assert run.int8.agreement(reference, other) == {
        "n": 3.0,
        "fp32 accuracy": 100.0,
        "int8 accuracy": 200 / 3,
        "decisions that differ": 1.0,
        "max probability change": pytest.approx(0.25),
    }


def test_a_shift_that_fails_keeps_the_int8_accuracy_target_already_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = _measurable_int8_export(tmp_path, monkeypatch)
    row = {"n": 97, "accuracy": 100.0, "sensitivity": 100.0, "positives": 50, "outputs": {"logits": np.zeros((97, 2))}}

    def validation(*args: Any) -> dict[str, dict[str, Any]]:
        if len(args) > 3:
            raise OSError("a shifted photo could not be written")
        return {"fp32": row, "int8": row}

    monkeypatch.setattr(run.int8, "validation", validation)
    targets: list[run.Row] = []
    with pytest.raises(OSError, match="shifted photo"):
        run.int8_section(pair, small_photo(), 1, lambda text: None, targets, unmeasured={})
    assert [name for name, *_ in targets] == ["int8 speed-up over fp32", "int8 accuracy loss on validation"]
    assert targets[1][3] == "met"
