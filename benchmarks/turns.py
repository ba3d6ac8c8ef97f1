"""Turn workloads: what the Runner does to a session per turn, one task or sixteen at once.

A turn is ``get_items()``, ``add_items([user message])``, ``add_items([function_call,
function_call_output, assistant message])``. Where the Runner would await the model (after
the read, and after saving the user message) the turn yields to the event loop with
``asyncio.sleep(0)``, so concurrent tasks interleave as they do in a server. Sessions start
with 190 items, so the 200-item cap is reached within three turns.

``sdk``, ``sdk_async`` and ``baseline_noprune`` never delete anything: their sessions grow by
4 items a turn and their reads get longer as they do ("items at end" shows how far).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from . import candidates, items, stats
from .core import Context, Figures, Section, latencies_us, rate_table, run_rounds, summarize

TurnItems = tuple[list[items.Item], list[items.Item]]


async def timed_turn(session: Any, turn: TurnItems) -> int:
    """Run one turn on ``session``; return its latency in nanoseconds."""
    user, run = turn
    start = stats.now_ns()
    await session.get_items()
    await asyncio.sleep(0)  # the model call
    await session.add_items(user)
    await asyncio.sleep(0)  # the rest of the run
    await session.add_items(run)
    return stats.now_ns() - start


async def preload(session: Any, count: int = items.PRELOAD_ITEMS) -> None:
    await session.add_items(items.history(count))


async def one_task(candidate: str, path: Path, sizes: dict[str, Any]) -> Figures:
    turns = [items.turn(n) for n in range(sizes["warmup"] + sizes["turns"])]
    store = candidates.Store(candidate, path)
    session = store.open("user-1", "conv-1")
    try:
        await preload(session)
        for turn in turns[: sizes["warmup"]]:
            await timed_turn(session, turn)
        stats.settle()
        latencies = []
        lag = stats.LoopLag()
        watching = asyncio.create_task(lag.watch())
        start = stats.now_ns()
        for turn in turns[sizes["warmup"] :]:
            latencies.append(await timed_turn(session, turn))
        elapsed = stats.now_ns() - start
        lag.stop()
        await watching
        items_end = len(await session.get_items())
    finally:
        await candidates.close_session(session)
        store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "items_end": items_end,
        "loop_lag_max_ms": lag.summary()["max_ms"],
        "latencies_us": latencies_us(latencies),
    }


async def many_tasks(candidate: str, path: Path, sizes: dict[str, Any]) -> Figures:
    tasks, count = sizes["tasks"], sizes["sessions"]
    per_task = sizes["turns"] // tasks
    warmup = sizes["warmup_per_task"]
    turns = [items.turn(n) for n in range((warmup + per_task) * tasks)]
    store = candidates.Store(candidate, path)
    sessions = [store.open(f"user-{n}", "conv-1") for n in range(count)]
    try:
        for session in sessions:
            await preload(session)

        async def worker(task: int, first: int, number: int, latencies: list[int]) -> None:
            own = sessions[task::tasks]  # no two tasks ever share a session
            for k in range(first, first + number):
                turn = turns[k * tasks + task]
                latencies.append(await timed_turn(own[k % len(own)], turn))

        await asyncio.gather(*(worker(task, 0, warmup, []) for task in range(tasks)))
        stats.settle()
        latencies: list[int] = []
        start = stats.now_ns()
        await asyncio.gather(*(worker(task, warmup, per_task, latencies) for task in range(tasks)))
        elapsed = stats.now_ns() - start
        items_end = max([len(await session.get_items()) for session in sessions])
    finally:
        for session in sessions:
            await candidates.close_session(session)
        store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "items_end": items_end,
        "latencies_us": latencies_us(latencies),
    }


def _section(
    name: str,
    title: str,
    results: list[dict[str, Figures]],
    notes: list[str],
    extra: list[tuple[str, str]] | None = None,
) -> Section:
    names = candidates.ALL
    summary = summarize(results, names)
    columns = [("items_end", "items at end"), *(extra or [])]
    headers, rows = rate_table(summary, names, "turns/s", columns)
    return Section(name, title, headers, rows, notes, summary, results)


def turn_1task(ctx: Context) -> Section:
    sizes = ctx.sizes["turn_1task"]
    results = run_rounds(ctx, "turn_1task", candidates.ALL, lambda c, p: one_task(c, p, sizes))
    title = (
        f"turn_1task: one task, one session preloaded with {items.PRELOAD_ITEMS} items, "
        f"{sizes['turns']} measured turns after {sizes['warmup']} warm-up turns"
    )
    notes = [
        "loop lag: how late a task sleeping 1 ms beside the turns was woken, i.e. the longest "
        "the event loop was blocked by one session call (the threaded SDK sessions block it "
        "least, at a thread hop per call)"
    ]
    extra = [("loop_lag_max_ms", "loop lag max ms")]
    return _section("turn_1task", title, results, notes, extra)


def turn_16tasks(ctx: Context) -> Section:
    sizes = ctx.sizes["turn_16tasks"]
    results = run_rounds(ctx, "turn_16tasks", candidates.ALL, lambda c, p: many_tasks(c, p, sizes))
    title = (
        f"turn_16tasks: {sizes['tasks']} concurrent tasks over {sizes['sessions']} sessions "
        f"(each preloaded with {items.PRELOAD_ITEMS} items, each task owning every "
        f"{sizes['tasks']}th session, round-robin), {sizes['turns']} measured turns"
    )
    notes = ["latency of a turn includes waiting for the other tasks' work in the event loop"]
    return _section("turn_16tasks", title, results, notes)
