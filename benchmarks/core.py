"""Running rounds of a workload over candidates, and summarising them.

Each round runs every candidate once, in an order rotated from round to round, each on its own
fresh database file and in its own ``asyncio.run``. Medians are taken across rounds; ratios are
taken within a round (both candidates ran minutes apart at most, under the same machine load)
and then the median of those ratios is reported.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import candidates, stats

Figures = dict[str, Any]
"""What one candidate measured in one round: ``rate``, ``p50_ms``, ``p99_ms`` and extras."""

Block = Callable[[str, Path], Coroutine[Any, Any, Figures]]


@dataclass
class Context:
    quick: bool
    rounds: int
    tmp: Path
    sizes: dict[str, dict[str, Any]]


@dataclass
class Section:
    """One workload's outcome: a markdown table for people, raw figures for the JSON file."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    raw: Any = None
    seconds: float = 0.0


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def release_idle_connections() -> None:
    """Close connections agent_sessions keeps open for reuse (its files are about to go)."""
    try:
        from agent_sessions.backends.sqlite import engine
    except ImportError:
        return
    close = getattr(engine, "close_idle_connections", None)
    if close is not None:
        close()


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def run_rounds(
    ctx: Context, workload: str, names: Sequence[str], block: Block, rounds: int | None = None
) -> list[dict[str, Figures]]:
    """Run ``block(candidate, fresh_path)`` for every candidate in every round."""
    results: list[dict[str, Figures]] = []
    total = rounds or ctx.rounds
    for round_index in range(total):
        figures: dict[str, Figures] = {}
        for name in rotated(names, round_index):
            path = ctx.tmp / f"{workload}-r{round_index}-{name}.db"
            candidates.create_file(name, path)
            stats.settle()
            try:
                figures[name] = asyncio.run(block(name, path))
            finally:
                release_idle_connections()
                candidates.remove_file(path)
        results.append({name: figures[name] for name in names})
        progress(
            f"{workload} round {round_index + 1}/{total}: "
            + ", ".join(f"{name} {figures[name]['rate']:,.0f}/s" for name in names)
        )
    return results


def summarize(results: list[dict[str, Figures]], names: Sequence[str]) -> dict[str, Figures]:
    """Medians across rounds, and medians of within-round ratios to sdk and baseline_prune."""
    summary: dict[str, Figures] = {}
    for name in names:
        per_round = [result[name] for result in results]
        row: Figures = {
            key: stats.median([figures[key] for figures in per_round])
            for key in per_round[0]
            if isinstance(per_round[0][key], int | float)
            and not isinstance(per_round[0][key], bool)
        }
        for reference in ("sdk", "baseline_prune"):
            if reference in names:
                row[f"rate_vs_{reference}"] = stats.median(
                    [stats.ratio(r[name]["rate"], r[reference]["rate"]) for r in results]
                )
                row[f"p99_vs_{reference}"] = stats.median(
                    [stats.ratio(r[name]["p99_ms"], r[reference]["p99_ms"]) for r in results]
                )
        summary[name] = row
    return summary


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def rate_table(
    summary: dict[str, Figures],
    names: Sequence[str],
    unit: str,
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: rate, p50, p99, ratios to sdk and baseline_prune, then ``extra``.

    ``extra`` holds ``(figure key, column header)`` pairs.
    """
    headers = ["candidate", unit, "p50 ms", "p99 ms", "x sdk", "x baseline_prune"]
    headers += ["p99 / baseline_prune p99", *[header for _, header in extra]]
    rows = []
    for name in names:
        row = summary[name]
        rows.append(
            [
                name,
                fmt(row["rate"], 0),
                fmt(row["p50_ms"], 3),
                fmt(row["p99_ms"], 3),
                fmt(row.get("rate_vs_sdk")),
                fmt(row.get("rate_vs_baseline_prune")),
                fmt(row.get("p99_vs_baseline_prune")),
                *[fmt(row.get(key), 0 if key == "items_end" else 2) for key, _ in extra],
            ]
        )
    return headers, rows


def latencies_us(latencies_ns: Sequence[int]) -> list[int]:
    """Raw latencies for the JSON file, in whole microseconds."""
    return [round(value / 1000) for value in latencies_ns]
