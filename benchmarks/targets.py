"""The performance targets agent_sessions is being tuned towards, checked against a run.

Every figure is taken from the summaries: for ratios, the median over rounds of the ratio
measured within each round.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .core import Section, fmt


@dataclass(frozen=True)
class Target:
    workload: str
    text: str
    measured: str
    met: bool | None  # None: the workload was not run

    def line(self) -> str:
        verdict = "NOT RUN" if self.met is None else "MET" if self.met else "NOT MET"
        return f"target: {self.text}  measured: {self.measured}  {verdict}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _at_least(value: float, bound: float) -> bool:
    return not math.isnan(value) and value >= bound


def _at_most(value: float, bound: float) -> bool:
    return not math.isnan(value) and value <= bound


Check = Callable[[dict[str, Any]], tuple[str, bool]]


def _ratio_check(key: str, bound: float, *, at_most: bool = False) -> Check:
    def check(summary: dict[str, Any]) -> tuple[str, bool]:
        value = summary["agent"][key]
        met = _at_most(value, bound) if at_most else _at_least(value, bound)
        return f"{fmt(value)}x", met

    return check


def _cleanup_check(label: str) -> Check:
    def check(summary: dict[str, Any]) -> tuple[str, bool]:
        value = summary[label]["writer_max_ms"]
        return f"{fmt(value)} ms", _at_most(value, 50.0)

    return check


def _search_check(summary: dict[str, Any]) -> tuple[str, bool]:
    value = summary["agent"]["p99_ms"]
    return f"{fmt(value)} ms", _at_most(value, 20.0)


def _page_p99(page: str) -> Check:
    def check(summary: dict[str, Any]) -> tuple[str, bool]:
        value = summary[page]["p99_ms"]
        return f"{fmt(value, 3)} ms", _at_most(value, 5.0)

    return check


def _delete_user_writer(summary: dict[str, Any]) -> tuple[str, bool]:
    """Met if a mode keeps the writer's max within 50 ms at every item count run.

    Rows are labelled "<n> items[, <mode>]"; every row is shown, so a mode that misses does
    not go unseen.
    """
    worst: dict[str, float] = {}
    for label, figures in summary.items():
        mode = label.split(", ", 1)[1] if ", " in label else ""
        worst[mode] = max(worst.get(mode, 0.0), figures["writer_max_ms"])
    shown = ", ".join(f"{label} {fmt(f['writer_max_ms'])} ms" for label, f in summary.items())
    return shown, any(_at_most(value, 50.0) for value in worst.values())


CONVERSATION_TARGETS: tuple[tuple[str, str, Check], ...] = (
    ("list_sessions", "list_sessions first page p99 <= 5 ms", _page_p99("first")),
    ("list_sessions", "list_sessions following pages p99 <= 5 ms", _page_p99("following")),
    (
        "delete_user",
        "delete_user live writer max latency <= 50 ms",
        _delete_user_writer,
    ),
)
"""Issue 11's conversation targets, the same on both suites."""


def _errors_check(summary: dict[str, Any]) -> tuple[str, bool]:
    errors = summary["agent"]["errors"]
    return f"{errors} errors", errors == 0


TARGETS: tuple[tuple[str, str, Check], ...] = (
    ("turn_1task", "turn_1task agent >= 1.2x sdk turns/s", _ratio_check("rate_vs_sdk", 1.2)),
    (
        "turn_1task",
        "turn_1task agent >= 0.8x baseline_prune turns/s",
        _ratio_check("rate_vs_baseline_prune", 0.8),
    ),
    ("turn_16tasks", "turn_16tasks agent >= 2x sdk turns/s", _ratio_check("rate_vs_sdk", 2.0)),
    (
        "turn_16tasks",
        "turn_16tasks agent p99 <= 3x baseline_prune p99",
        _ratio_check("p99_vs_baseline_prune", 3.0, at_most=True),
    ),
    (
        "get_items_200",
        "get_items_200 agent >= 0.9x baseline_prune ops/s",
        _ratio_check("rate_vs_baseline_prune", 0.9),
    ),
    (
        "get_items_20",
        "get_items_20 agent >= 0.8x baseline_prune ops/s",
        _ratio_check("rate_vs_baseline_prune", 0.8),
    ),
    ("open_per_request", "open_per_request agent >= 5x sdk ops/s", _ratio_check("rate_vs_sdk", 5)),
    (
        "cleanup",
        "cleanup (all idle) live writer max latency <= 50 ms",
        _cleanup_check("all idle"),
    ),
    (
        "cleanup",
        "cleanup (1/10 idle) live writer max latency <= 50 ms",
        _cleanup_check("1/10 idle"),
    ),
    ("multiprocess", "multiprocess agent 0 errors", _errors_check),
    (
        "multiprocess",
        "multiprocess agent >= 1x sdk turns/s",
        _ratio_check("rate_vs_sdk", 1.0),
    ),
    ("search", "search_sessions (1,000 conversations of 200 items) p99 <= 20 ms", _search_check),
    (
        "turn_search_index",
        "turn_1task with search_index on >= 0.9x off",
        _ratio_check("rate_vs_index_off", 0.9),
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
