"""Stopping a run cleanly: SIGTERM/SIGINT set a flag that the loop checks after each iteration."""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """SIGTERM/SIGINT set ``signum``; the loop saves last.pt after the current iteration and exits."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
