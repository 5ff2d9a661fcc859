"""Writing training's files: a model folder's all together or none, keeping what writing over them kept; reports
and printed lines that name photos whatever their file names' bytes."""

from __future__ import annotations

import io
import os
import shutil
import sys
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


def write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8. A photo's file name that is not valid UTF-8 (Python holds its bytes as lone
    surrogates) is written escaped, ``\\udcff``, rather than failing the whole report or card."""
    path.write_text(text, encoding="utf-8", errors="backslashreplace")


def escape_unencodable_output() -> None:
    """Print such file names escaped too: a UTF-8 terminal's stdout is strict, and a line naming one stopped a run.
    A stream set otherwise (surrogateescape in the C locale, or by ``PYTHONIOENCODING``) is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.closed and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
