"""Replacing a model folder's files: all of them or none, keeping what writing over them kept."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def keep_mode(target: Path, new: Path) -> None:
    """Give ``new`` the mode of the ``target`` it is about to replace, as writing over ``target`` would have kept it.

    A fresh file takes the umask's mode: under a strict one (027, 077) it is 0640 or 0600, and the image's
    non-root function user could then not read the model the file holds.
    """
    if target.is_file():
        shutil.copymode(target, new)


def replace_together(folder: Path, writers: dict[str, Callable[[Path], object]]) -> None:
    """Write each file of ``writers`` (name -> a function that writes it to the path given) beside its target, then
    move them all into place: a failure while writing leaves every old file as it was, modes included."""
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            # Not tempfile.mkstemp: its files are 0600, and the image build and the function must read these.
            tmp = folder / f".{name}.replacing-{os.getpid()}.tmp"
            staged.append((tmp, folder / name))
            write(tmp)
            keep_mode(folder / name, tmp)
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
