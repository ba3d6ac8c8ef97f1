"""Small statistics helpers: percentiles of latencies, medians across rounds, timing."""

from __future__ import annotations

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
