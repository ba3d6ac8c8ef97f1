"""What this process measures of itself: write latency, and which warnings it has logged.

Process-wide and thread-safe. A forked child starts empty: its parent's writes are not its.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from dataclasses import dataclass

WRITE_SAMPLES = 1000
"""Write latencies kept: the percentiles describe this many most recent writes."""


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of the kept samples, in seconds (``None`` without samples)."""

    p50: float | None
    p95: float | None
    samples: int


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted, non-empty ``ordered`` (``fraction`` in (0, 1])."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class LatencyRecorder:
    """A bounded ring of the latest samples: adding is O(1), sorting waits for ``summary``."""

    def __init__(self, size: int = WRITE_SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Keep one sample, dropping the oldest when full."""
        with self._lock:
            self._samples.append(seconds)

    def summary(self) -> LatencySummary:
        """p50 and p95 of the samples kept now."""
        with self._lock:
            ordered = sorted(self._samples)
        if not ordered:
            return LatencySummary(None, None, 0)
        return LatencySummary(percentile(ordered, 0.5), percentile(ordered, 0.95), len(ordered))

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._samples.clear()


write_latency = LatencyRecorder()
"""Seconds each successful ``add_items`` of this process took (its backend call)."""


class WarnOnce:
    """Names of the warnings this process has already logged."""

    def __init__(self) -> None:
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def first(self, name: str) -> bool:
        """``True`` the first time ``name`` is seen (the caller then logs it), else ``False``."""
        with self._lock:
            if name in self._done:
                return False
            self._done.add(name)
            return True

    def pending(self, names: set[str]) -> bool:
        """Whether any of ``names`` has not been warned about yet."""
        with self._lock:
            return not names <= self._done

    def clear(self) -> None:
        """Warn again, as in a new process."""
        with self._lock:
            self._done.clear()


threshold_warnings = WarnOnce()
"""The monitoring thresholds already reported by a logged warning."""


def _reset_in_child() -> None:
    # The locks may have been held by another thread at the fork: make new ones.
    global write_latency, threshold_warnings
    write_latency = LatencyRecorder()
    threshold_warnings = WarnOnce()


os.register_at_fork(after_in_child=_reset_in_child)
