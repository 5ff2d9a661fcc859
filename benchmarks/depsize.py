"""Size of the installed runtime dependencies: `pip install --target` of requirements.txt for the Lambda platform."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO

REQUIREMENTS = REPO / "functions" / "inference" / "requirements.txt"
PLATFORM_ARGS = [
    "--python-version",
    "3.12",
    "--only-binary=:all:",
    "--require-hashes",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
]


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure() -> tuple[int, list[tuple[str, int]]]:
    """Total bytes installed, and the bytes of each top-level folder (largest first)."""
    with tempfile.TemporaryDirectory(prefix="deps-") as tmp:
        target = Path(tmp) / "target"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                *PLATFORM_ARGS,
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
        )
        total = _du(target)
        groups: dict[str, int] = {}
        for child in target.iterdir():
            name = child.name.split("-")[0] if child.name.endswith(".dist-info") else child.name
            groups[name] = groups.get(name, 0) + (_du(child) if child.is_dir() else child.stat().st_size)
        return total, sorted(groups.items(), key=lambda kv: -kv[1])
