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


def test_without_qemu_it_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(int8_portability.shutil, "which", lambda name: None)
    assert int8_portability.main(["model.onnx"]) == 2
    assert "apt-get install qemu-user" in capsys.readouterr().out
