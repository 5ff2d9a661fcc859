"""A clock for code that waits: ``time.monotonic`` and ``time.sleep`` that only sleeping (and the test) move."""

from __future__ import annotations

from types import ModuleType

import pytest


class FakeClock:
    """``monotonic`` reads ``now``; ``sleep`` adds to it at once, so a wait of minutes takes none."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def install(self, monkeypatch: pytest.MonkeyPatch, time_module: ModuleType) -> FakeClock:
        """Stand in for ``time_module``'s monotonic and sleep (the ``time`` a module under test imported)."""
        monkeypatch.setattr(time_module, "monotonic", self.monotonic)
        monkeypatch.setattr(time_module, "sleep", self.sleep)
        return self
