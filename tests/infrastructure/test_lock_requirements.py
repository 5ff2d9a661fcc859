"""The image's requirements.txt is pinned by hash, and `make lock` (lock_requirements.py) writes those hashes right.

Offline: the index is a list of files made here. That the committed hashes are the index's own is checked against the
real index by test_dockerfile.py (pip resolves requirements.txt with --require-hashes for both architectures) and by
test_lambda_python.py (pip installs it, downloading and checking every wheel).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTEXT = REPO / "functions" / "inference"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_requirements", CONTEXT / "lock_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lock_requirements = _load()


def _wheel(filename: str, digest: str, *, yanked: bool = False) -> dict[str, object]:
    return {"filename": filename, "hashes": {"sha256": digest}, "yanked": yanked}


INDEX: dict[str, list[dict[str, object]]] = {
    "numpy": [
        _wheel("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "a" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", "b" * 64),
        _wheel("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "c" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-macosx_14_0_arm64.whl", "d" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-musllinux_1_2_x86_64.whl", "e" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-win_amd64.whl", "f" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-manylinux_2_39_x86_64.whl", "0" * 64),  # newer glibc than Lambda's 2.34
        _wheel("numpy-2.4.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "1" * 64),
        _wheel("numpy-2.4.6-cp312-cp312-manylinux_2_17_x86_64.whl", "2" * 64, yanked=True),
        {"filename": "numpy-2.4.6.tar.gz", "hashes": {"sha256": "3" * 64}},
    ],
    "orjson": [_wheel("orjson-3.13.0-cp38-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "4" * 64)],
    "aws-lambda-powertools": [_wheel("aws_lambda_powertools-3.37.0-py3-none-any.whl", "5" * 64)],
    # Old builds: pip on Lambda's x86_64 still takes manylinux1 and manylinux2010 (glibc 2.5 and 2.12).
    "old-abi3": [
        _wheel("old_abi3-1.0-cp37-abi3-manylinux2010_x86_64.whl", "6" * 64),
        _wheel("old_abi3-1.0-cp37-abi3-manylinux_2_5_x86_64.manylinux1_x86_64.whl", "7" * 64),
        _wheel("old_abi3-1.0-cp37-abi3-manylinux2014_aarch64.whl", "8" * 64),
        _wheel("old_abi3-1.0-cp37-abi3-manylinux_2_12_aarch64.whl", "9" * 64),  # no such aarch64 glibc: not pip's
    ],
    # Pinned after its release was yanked: pip still installs it for ==, so its files are what the lock needs.
    "gone": [_wheel("gone-2.0-py2.py3-none-any.whl", "a1" * 32, yanked=True)],
}

TEXT = """# a comment that stays
numpy==2.4.6 \\
    --hash=sha256:{old}
orjson==3.13.0

# another
aws-lambda-powertools[tracer]==3.37.0
""".format(old="9" * 64)


def _read(name: str) -> list[dict[str, object]]:
    return INDEX[name]


def test_lock_keeps_the_comments_and_pins_and_writes_each_pin_its_lambda_wheels_hashes() -> None:
    assert lock_requirements.lock(TEXT, _read) == (
        "# a comment that stays\n"
        "numpy==2.4.6 \\\n"
        f"    --hash=sha256:{'a' * 64} \\\n"
        f"    --hash=sha256:{'b' * 64}\n"
        "orjson==3.13.0 \\\n"
        f"    --hash=sha256:{'4' * 64}\n"
        "\n"
        "# another\n"
        "aws-lambda-powertools[tracer]==3.37.0 \\\n"
        f"    --hash=sha256:{'5' * 64}\n"
    )


def test_locking_a_locked_file_changes_nothing() -> None:
    once = lock_requirements.lock(TEXT, _read)
    assert lock_requirements.lock(once, _read) == once


def test_old_manylinux_tags_pip_takes_are_hashed_and_a_yanked_release_s_files_count() -> None:
    assert lock_requirements.lock("old-abi3==1.0\ngone==2.0\n", _read) == (
        f"old-abi3==1.0 \\\n    --hash=sha256:{'6' * 64} \\\n    --hash=sha256:{'7' * 64} \\\n"
        f"    --hash=sha256:{'8' * 64}\n"
        f"gone==2.0 \\\n    --hash=sha256:{'a1' * 32}\n"
    )


@pytest.mark.parametrize("space", ["  ", "\t"])
def test_a_comment_after_a_pin_moves_above_it(space: str) -> None:
    """Nothing may follow a line's continuation, so it cannot stay where it was."""
    text = f"orjson==3.13.0{space}# keep in step with pyproject\n"
    assert lock_requirements.lock(text, _read) == (
        f"# keep in step with pyproject\norjson==3.13.0 \\\n    --hash=sha256:{'4' * 64}\n"
    )
    assert lock_requirements.lock(lock_requirements.lock(text, _read), _read) == lock_requirements.lock(text, _read)


def test_a_pin_with_no_wheel_for_lambda_is_refused_by_name() -> None:
    with pytest.raises(LookupError, match=r"numpy==2\.4\.5: no wheel for Lambda"):
        lock_requirements.lock("numpy==2.4.5\n", lambda _: INDEX["numpy"][2:7])


@pytest.mark.parametrize("line", ["numpy>=2.4", "numpy", "-e .", "numpy==2.4.6; python_version<'3.13'"])
def test_a_line_that_is_not_an_exact_pin_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="must pin each package exactly"):
        lock_requirements.parse(line + "\n")


def test_check_says_whether_the_file_is_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_requirements, "index_files", lambda index: _read)
    path = tmp_path / "requirements.txt"
    path.write_text(TEXT)
    assert lock_requirements.main(["--check", "--file", str(path)]) == 1
    assert path.read_text() == TEXT, "--check wrote the file"
    assert lock_requirements.main(["--file", str(path)]) == 0
    assert lock_requirements.main(["--check", "--file", str(path)]) == 0


def test_an_unreachable_index_is_a_clear_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(TEXT)
    assert lock_requirements.main(["--file", str(path), "--index", "http://127.0.0.1:9/simple"]) == 2
    assert "lock_requirements:" in capsys.readouterr().err
    assert path.read_text() == TEXT


def test_the_committed_requirements_pin_every_package_by_hash_and_the_image_requires_them() -> None:
    """Every pin carries at least one sha256, and the Dockerfile's pip refuses a wheel that matches none."""
    lines = lock_requirements.parse((CONTEXT / "requirements.txt").read_text())
    pins = [line for line in lines if isinstance(line, lock_requirements.Pin)]
    blocks = re.split(r"\n(?=[A-Za-z])", (CONTEXT / "requirements.txt").read_text())
    hashed = {block.split("==")[0] for block in blocks if re.search(r"--hash=sha256:[0-9a-f]{64}", block)}
    assert pins and {pin.name + pin.extras for pin in pins} <= hashed
    run = next(line for line in (CONTEXT / "Dockerfile").read_text().splitlines() if "pip install" in line)
    assert "--require-hashes" in run.split()
