"""The PostgreSQL targets, checked against a run (printed as ``benchmarks.targets`` does).

Ratios are the median over rounds of the ratio measured within each round, against
``sdk_sqlalchemy`` (the SDK's ``SQLAlchemySession`` on one shared engine).
"""

from __future__ import annotations

from typing import Any

from ..core import Section, fmt
from ..targets import (
    CONVERSATION_TARGETS,
    Check,
    Target,
    _at_least,
    _at_most,
    _errors_check,
    _ratio_check,
)

SIMILAR = 1.5
"""'Similar' ms per idle session: within this factor either way."""


def _cleanup_writer(label: str) -> Check:
    def check(summary: dict[str, Any]) -> tuple[str, bool]:
        value = summary[label]["writer_max_ms"]
        return f"{fmt(value)} ms", _at_most(value, 50.0)

    return check


def _cleanup_follows_idle(summary: dict[str, Any]) -> tuple[str, bool]:
    value = summary["ms_per_idle_ratio"]
    met = _at_least(value, 1 / SIMILAR) and _at_most(value, SIMILAR)
    large, small = summary["large"]["ms_per_idle"], summary["small (1/10)"]["ms_per_idle"]
    return f"{fmt(large, 3)} vs {fmt(small, 3)} ms (ratio {fmt(value)})", met


TARGETS: tuple[tuple[str, str, Check], ...] = (
    (
        "turn_1task",
        "turn_1task agent >= 2x sdk_sqlalchemy turns/s",
        _ratio_check("rate_vs_sdk", 2.0),
    ),
    (
        "turn_16tasks",
        "turn_16tasks agent >= 2x sdk_sqlalchemy turns/s",
        _ratio_check("rate_vs_sdk", 2.0),
    ),
    (
        "turn_16tasks",
        "turn_16tasks agent p99 <= sdk_sqlalchemy p99",
        _ratio_check("p99_vs_sdk", 1.0, at_most=True),
    ),
    (
        "get_items_200",
        "get_items_200 agent >= 1x sdk_sqlalchemy ops/s",
        _ratio_check("rate_vs_sdk", 1.0),
    ),
    (
        "open_per_request",
        "open_per_request agent >= 3x sdk_sqlalchemy (shared engine) ops/s",
        _ratio_check("rate_vs_sdk", 3.0),
    ),
    ("multiprocess", "multiprocess agent 0 errors", _errors_check),
    (
        "multiprocess",
        "multiprocess agent >= 1.5x sdk_sqlalchemy turns/s",
        _ratio_check("rate_vs_sdk", 1.5),
    ),
    (
        "cleanup",
        f"cleanup ms per idle session similar at both table sizes (within {SIMILAR}x)",
        _cleanup_follows_idle,
    ),
    ("cleanup", "cleanup (large) live writer max latency <= 50 ms", _cleanup_writer("large")),
    (
        "cleanup",
        "cleanup (small) live writer max latency <= 50 ms",
        _cleanup_writer("small (1/10)"),
    ),
    *CONVERSATION_TARGETS,
)


def evaluate(sections: dict[str, Section]) -> list[Target]:
    results = []
    for workload, text, check in TARGETS:
        section = sections.get(workload)
        if section is None:
            results.append(Target(workload, text, "-", None))
            continue
        measured, met = check(section.summary)
        results.append(Target(workload, text, measured, met))
    return results
