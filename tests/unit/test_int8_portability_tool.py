"""The int8 portability check (benchmarks/int8_portability.py), without QEMU: its native run and its comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import int8_portability


def test_native_run_matches_the_session_and_compare_finds_differences(tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = tiny_model_dir / "model.onnx"
    data, source = int8_portability.photos(3)
    assert len(data) == 3 and source
    x = int8_portability.tensors(data, model)
    np.save(tmp_path / "x.npy", x)
    outputs = int8_portability.run(model, tmp_path / "x.npy", tmp_path / "out.npz", cpu=None)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-6)

    assert all(a == 0 and r == 0 for _, a, r in int8_portability.compare(outputs, outputs))
    moved = {**outputs, "logits": outputs["logits"] + 0.5}
    rows = {name: (a, r) for name, a, r in int8_portability.compare(outputs, moved)}
    assert rows["logits"][0] == pytest.approx(0.5)


def test_compare_gives_the_largest_absolute_and_relative_difference_of_each_output() -> None:
    native = {"logits": np.array([[2.0, -4.0]]), "ood_distance": np.array([10.0, 0.0])}
    emulated = {"logits": np.array([[2.5, -4.0]]), "ood_distance": np.array([10.0, 1e-7])}
    rows = {name: (a, r) for name, a, r in int8_portability.compare(native, emulated)}
    assert rows["logits"] == pytest.approx((0.5, 0.25))  # 0.5 off a logit of 2
    assert rows["ood_distance"] == pytest.approx((1e-7, 0.1))  # 1e-7 off 0, relative to the 1e-6 floor


def test_without_qemu_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(int8_portability.shutil, "which", lambda name: None)
    assert int8_portability.main(["model.onnx"]) == 2
    assert "apt-get install qemu-user" in capsys.readouterr().out


def test_without_a_runs_export_it_checks_the_bundled_model_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(int8_portability, "int8_variant", lambda: None)
    asked: list[tuple[Path, Path, Path]] = []

    def rebuild(model_dir: Path, data_root: Path, work: Path) -> int8_portability.int8.Pair:
        asked.append((model_dir, data_root, work))
        return int8_portability.int8.Pair(model_dir, work / "int8", "Rebuilt here, by a stub.", None)

    monkeypatch.setattr(int8_portability.int8, "rebuild", rebuild)
    assert int8_portability.default_model(tmp_path) == [tmp_path / "rebuild" / "int8" / "model.onnx"]
    assert asked == [(int8_portability.BUNDLED_MODEL_DIR, int8_portability.SHARED_TRAIN, tmp_path / "rebuild")]
    assert "Rebuilt here, by a stub." in capsys.readouterr().out


def test_with_nothing_to_check_it_says_why_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(int8_portability.shutil, "which", lambda name: "/usr/bin/qemu-x86_64")
    monkeypatch.setattr(int8_portability, "int8_variant", lambda: None)

    def rebuild(*args: Path) -> int8_portability.int8.Pair:
        raise int8_portability.int8.CannotRebuild("no split of the model's training run is here")

    monkeypatch.setattr(int8_portability.int8, "rebuild", rebuild)
    monkeypatch.setattr(int8_portability, "run", lambda *a: pytest.fail("ran a model it did not have"))
    assert int8_portability.main([]) == 2
    out = capsys.readouterr().out
    assert "none can be rebuilt here: no split of the model's training run is here." in out
