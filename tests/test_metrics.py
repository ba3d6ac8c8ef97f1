"""The process's own measurements: write-latency percentiles and one-time warnings."""

from __future__ import annotations

import multiprocessing
import threading

from agent_sessions import metrics
from agent_sessions.metrics import LatencyRecorder, WarnOnce


def test_percentiles_are_nearest_rank() -> None:
    recorder = LatencyRecorder(size=1000)
    assert recorder.summary() == metrics.LatencySummary(None, None, 0)
    for value in reversed(range(1, 101)):  # added out of order: sorted when asked
        recorder.add(value / 1000)
    summary = recorder.summary()
    assert (summary.p50, summary.p95, summary.samples) == (0.050, 0.095, 100)
    recorder.add(7.0)
    assert recorder.summary().p95 == 0.096  # 101 samples: rank ceil(95.95) = 96
    one = LatencyRecorder()
    one.add(0.25)
    assert one.summary() == metrics.LatencySummary(0.25, 0.25, 1)


def test_only_the_latest_samples_are_kept() -> None:
    recorder = LatencyRecorder(size=10)
    for value in range(100):
        recorder.add(float(value))
    summary = recorder.summary()
    assert summary.samples == 10
    assert (summary.p50, summary.p95) == (94.0, 99.0)  # of 90..99
    recorder.clear()
    assert recorder.summary().samples == 0


def test_adding_from_many_threads_loses_nothing() -> None:
    recorder = LatencyRecorder(size=100_000)
    threads = [
        threading.Thread(target=lambda: [recorder.add(0.001) for _ in range(5000)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.summary().samples == 40_000


def test_warn_once_says_first_once_per_name() -> None:
    once = WarnOnce()
    assert once.pending({"a", "b"})
    assert once.first("a")
    assert not once.first("a")
    assert once.pending({"a", "b"})
    assert once.first("b")
    assert not once.pending({"a", "b"})
    assert not once.pending(set())
    once.clear()
    assert once.first("a")


def _child_sees(results: multiprocessing.Queue[tuple[int, bool]]) -> None:
    results.put((metrics.write_latency.summary().samples, metrics.threshold_warnings.first("x")))


def test_a_forked_child_starts_empty() -> None:
    metrics.write_latency.add(0.5)
    assert metrics.threshold_warnings.first("x")
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[tuple[int, bool]] = context.Queue()
    child = context.Process(target=_child_sees, args=(results,))
    child.start()
    try:
        assert results.get(timeout=30) == (0, True), "the parent's writes and warnings leaked"
    finally:
        child.join(timeout=30)
    assert metrics.write_latency.summary().samples == 1
