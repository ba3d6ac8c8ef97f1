"""Small statistics helpers: percentiles of latencies, medians across rounds, timing."""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99 and max of nanosecond latencies, in milliseconds."""
    ms = [value / 1e6 for value in latencies_ns]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "n": len(ms),
    }


def median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def settle() -> None:
    """Collect garbage before a measured block so earlier work's garbage is not charged."""
    gc.collect()


def now_ns() -> int:
    return time.perf_counter_ns()


class LoopLag:
    """How late the event loop wakes a task sleeping 1 ms: the longest stretch it was blocked.

    Run ``watch()`` as a task beside a workload, then ``stop()``; ``summary()`` gives the
    lateness in milliseconds (p50, p99, max).
    """

    INTERVAL_S = 0.001

    def __init__(self) -> None:
        self.late_ns: list[int] = []
        self._stopped = False

    async def watch(self) -> None:
        while not self._stopped:
            start = time.perf_counter_ns()
            await asyncio.sleep(self.INTERVAL_S)
            self.late_ns.append(max(0, time.perf_counter_ns() - start - int(self.INTERVAL_S * 1e9)))

    def stop(self) -> None:
        self._stopped = True

    def summary(self) -> dict[str, float]:
        return latency_summary(self.late_ns)
