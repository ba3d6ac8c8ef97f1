"""Rounds over the PostgreSQL candidates, and their summaries (as ``benchmarks.core`` does).

Each round runs every candidate once, in an order rotated from round to round, each on freshly
emptied tables (``server.reset``) and in its own ``asyncio.run``. Medians are taken across
rounds; ratios to ``sdk_sqlalchemy`` are taken within a round, then their median reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from .. import stats
from ..core import Figures, fmt, progress, rotated
from . import server
from .candidates import SDK

Block = Callable[[str, str], Coroutine[Any, Any, Figures]]


@dataclass
class PgContext:
    quick: bool
    rounds: int
    url: str
    """The run's own database."""
    sizes: dict[str, dict[str, Any]]


def run_rounds(
    ctx: PgContext, workload: str, names: Sequence[str], block: Block, rounds: int | None = None
) -> list[dict[str, Figures]]:
    """Run ``block(candidate, url)`` for every candidate in every round."""
    results: list[dict[str, Figures]] = []
    total = rounds or ctx.rounds
    for round_index in range(total):
        figures: dict[str, Figures] = {}
        for name in rotated(names, round_index):
            server.reset(ctx.url)
            stats.settle()
            figures[name] = asyncio.run(block(name, ctx.url))
        results.append({name: figures[name] for name in names})
        progress(
            f"{workload} round {round_index + 1}/{total}: "
            + ", ".join(f"{name} {figures[name]['rate']:,.0f}/s" for name in names)
        )
    return results


def summarize(
    results: list[dict[str, Figures]], names: Sequence[str], reference: str = SDK
) -> dict[str, Figures]:
    """Medians across rounds, and medians of within-round ratios to ``reference``."""
    summary: dict[str, Figures] = {}
    for name in names:
        per_round = [result[name] for result in results]
        row: Figures = {
            key: stats.median([figures[key] for figures in per_round])
            for key in per_round[0]
            if isinstance(per_round[0][key], int | float)
            and not isinstance(per_round[0][key], bool)
        }
        row["rate_vs_sdk"] = stats.median(
            [stats.ratio(r[name]["rate"], r[reference]["rate"]) for r in results]
        )
        row["p99_vs_sdk"] = stats.median(
            [stats.ratio(r[name]["p99_ms"], r[reference]["p99_ms"]) for r in results]
        )
        summary[name] = row
    return summary


def rate_table(
    summary: dict[str, Figures],
    names: Sequence[str],
    unit: str,
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: rate, p50, p99, max, ratios to sdk_sqlalchemy, then ``extra``."""
    headers = ["candidate", unit, "p50 ms", "p99 ms", "max ms", f"x {SDK}", f"p99 / {SDK} p99"]
    headers += [header for _, header in extra]
    rows = []
    for name in names:
        row = summary[name]
        rows.append(
            [
                name,
                fmt(row["rate"], 0),
                fmt(row["p50_ms"], 3),
                fmt(row["p99_ms"], 3),
                fmt(row["max_ms"], 2),
                fmt(row.get("rate_vs_sdk")),
                fmt(row.get("p99_vs_sdk")),
                *[fmt(row.get(key), 0 if key == "items_end" else 2) for key, _ in extra],
            ]
        )
    return headers, rows
