"""Fixtures for the training tests: small synthetic image folders made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_eyes import make_folder


@pytest.fixture
def eye_folder(tmp_path: Path) -> Path:
    """A small, clean one-folder-per-class data set."""
    return make_folder(tmp_path / "eyes", n_per_class=12)
