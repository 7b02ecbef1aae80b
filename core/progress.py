"""The progress-callback protocol shared by every long-running stage.

A stage calls ``on_progress(step, total, metrics)`` as it goes; ``metrics`` is a flat dict of floats (and
short strings). A falsy return asks the stage to stop cleanly at the next safe point (after writing a
checkpoint). The CLI passes a terminal progress bar, the app passes a job, tests pass a lambda.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Mapping

ProgressCallback = Callable[[int, int, Mapping[str, object]], bool]


def keep_going(step: int, total: int, metrics: Mapping[str, object]) -> bool:
    """The default callback: report nothing, never stop."""
    return True


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TerminalProgress:
    """A one-line progress bar with live metrics for the CLI (no dependency beyond the standard library)."""

    def __init__(self, label: str, stream=None, width: int = 24, min_interval: float = 0.2):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_len = 0

    def __call__(self, step: int, total: int, metrics: Mapping[str, object]) -> bool:
        now = time.monotonic()
        if now - self._last_draw < self.min_interval and step < total:
            return True
        self._last_draw = now
        frac = min(1.0, step / total) if total else 0.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self.start
        eta = (elapsed / frac - elapsed) if frac > 0 else float("nan")
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in list(metrics.items())[:6])
        line = f"\r{self.label} [{bar}] {step}/{total} {elapsed:5.0f}s eta {eta:5.0f}s {shown}"
        pad = max(0, self._last_len - len(line))
        self.stream.write(line + " " * pad)
        self.stream.flush()
        self._last_len = len(line)
        return True

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
