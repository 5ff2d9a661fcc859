"""Replacing a model folder's files: what writing over them kept, a rename must keep too."""

from __future__ import annotations

import shutil
from pathlib import Path


def keep_mode(target: Path, new: Path) -> None:
    """Give ``new`` the mode of the ``target`` it is about to replace, as writing over ``target`` would have kept it.

    A fresh file takes the umask's mode: under a strict one (027, 077) it is 0640 or 0600, and the image's
    non-root function user could then not read the model the file holds.
    """
    if target.is_file():
        shutil.copymode(target, new)
