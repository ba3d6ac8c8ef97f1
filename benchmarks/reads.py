"""Read workloads: ``get_items`` on a full session, and opening a session per request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import candidates, items, stats
from .core import Context, Figures, Section, latencies_us, rate_table, run_rounds, summarize


async def get_items_block(
    candidate: str, path: Path, sizes: dict[str, Any], limit: int | None
) -> Figures:
    store = candidates.Store(candidate, path)
    session = store.open("user-1", "conv-1")
    try:
        await session.add_items(items.history(sizes["items"]))
        for _ in range(sizes["warmup"]):
            got = await session.get_items(limit)
        expected = sizes["items"] if limit is None else min(limit, sizes["items"])
        if len(got) != expected:
            raise AssertionError(f"{candidate}: get_items({limit}) returned {len(got)} items")
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for _ in range(sizes["ops"]):
            before = stats.now_ns()
            await session.get_items(limit)
            latencies.append(stats.now_ns() - before)
        elapsed = stats.now_ns() - start
    finally:
        await candidates.close_session(session)
        store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "latencies_us": latencies_us(latencies),
    }


async def open_block(candidate: str, path: Path, sizes: dict[str, Any]) -> Figures:
    store = candidates.Store(candidate, path)
    count = sizes["sessions"]
    try:
        for n in range(count):  # the file's existing sessions
            session = store.open(f"user-{n}", "conv-1")
            await session.add_items(items.history(sizes["items"]))
            await candidates.close_session(session)

        async def request(n: int) -> int:
            before = stats.now_ns()
            session = store.open(f"user-{n % count}", "conv-1")
            await session.get_items()
            await candidates.close_session(session)
            return stats.now_ns() - before

        for n in range(sizes["warmup"]):
            await request(n)
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for n in range(sizes["ops"]):
            latencies.append(await request(n))
        elapsed = stats.now_ns() - start
    finally:
        store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "latencies_us": latencies_us(latencies),
    }


def _get_items(ctx: Context, name: str, limit: int | None) -> Section:
    sizes = ctx.sizes[name]
    results = run_rounds(
        ctx, name, candidates.ALL, lambda c, p: get_items_block(c, p, sizes, limit)
    )
    summary = summarize(results, candidates.ALL)
    headers, rows = rate_table(summary, candidates.ALL, "ops/s")
    call = "get_items()" if limit is None else f"get_items({limit})"
    title = (
        f"{name}: {call} on a session holding {sizes['items']} items, "
        f"{sizes['ops']} measured calls after {sizes['warmup']} warm-up calls"
    )
    return Section(name, title, headers, rows, [], summary, results)


def get_items_200(ctx: Context) -> Section:
    return _get_items(ctx, "get_items_200", None)


def get_items_20(ctx: Context) -> Section:
    return _get_items(ctx, "get_items_20", 20)


def open_per_request(ctx: Context) -> Section:
    sizes = ctx.sizes["open_per_request"]
    results = run_rounds(
        ctx, "open_per_request", candidates.ALL, lambda c, p: open_block(c, p, sizes)
    )
    summary = summarize(results, candidates.ALL)
    headers, rows = rate_table(summary, candidates.ALL, "ops/s")
    title = (
        f"open_per_request: create the session object + get_items() + close, round-robin over "
        f"{sizes['sessions']} existing sessions of {sizes['items']} items, "
        f"{sizes['ops']} measured requests"
    )
    notes = [
        "the baselines share one connection per file, so for them 'open' costs nothing: "
        "they are the floor, not a like-for-like design"
    ]
    return Section("open_per_request", title, headers, rows, notes, summary, results)
