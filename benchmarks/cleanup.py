"""Cleanup of idle sessions while a live session keeps writing (agent only).

A file is filled with raw ``executemany`` into the tables ``schema.connect`` creates: idle
sessions (last activity 30 days ago) and active ones (last activity within the hour), 50 small
items each. Then ``SessionManager(retention_days=7).cleanup_inactive_sessions()`` runs while a
live ``AgentSession`` on the same file writes a turn every 5 ms in the same event loop; the
writer's per-write latency is recorded, before and during the cleanup.

A second file has 10x fewer idle sessions but the same number of sessions and rows, to show
that the cleanup's cost follows the idle sessions, not the size of the table.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_sessions import SessionManager
from agent_sessions.backends.sqlite import schema
from agent_sessions.ids import get_session_id

from . import candidates, items, stats
from .core import (
    Context,
    Figures,
    Section,
    fmt,
    latencies_us,
    progress,
    release_idle_connections,
)

DAY = 86400.0
WRITE_EVERY_S = 0.005
IDLE_WRITER_S = 0.5
"""How long the writer runs before the cleanup starts, for its latency without cleanup."""


def build(path: Path, idle: int, active: int, per_session: int) -> None:
    """Create ``path`` with ``idle`` + ``active`` sessions of ``per_session`` items each."""
    schema.connect(path).close()
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A bulk load: no WAL copy of every page and no fsync (WAL is restored at the end).
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")

        def sessions() -> Iterator[tuple[str, str, str, float, float]]:
            for n in range(idle + active):
                user, conversation = f"user-{n:07d}", "conv-1"
                when = now - 30 * DAY - n if n < idle else now - (n % 3600)
                yield get_session_id(user, conversation), user, conversation, when, when

        def rows() -> Iterator[tuple[str, str]]:
            for n in range(idle + active):
                session_id = get_session_id(f"user-{n:07d}", "conv-1")
                for k in range(per_session):
                    role = "user" if k % 2 == 0 else "assistant"
                    yield session_id, f'{{"role": "{role}", "content": "message {k} of {n}"}}'

        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO {schema.SESSIONS_TABLE} (session_id, user_id, conversation_id, "
            "created_ts, last_activity_ts) VALUES (?, ?, ?, ?, ?)",
            sessions(),
        )
        conn.executemany(
            f"INSERT INTO {schema.MESSAGES_TABLE} (session_id, message_data) VALUES (?, ?)",
            rows(),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


async def measure(path: Path, expected_idle: int) -> Figures:
    from agent_sessions import AgentSession

    writer: Any = AgentSession("live-writer", "conv-1", db_path=path, max_messages=200)
    await writer.add_items(items.history(items.PRELOAD_ITEMS))
    before: list[int] = []
    during: list[int] = []
    cleaning = asyncio.Event()
    stop = asyncio.Event()

    async def write_turns() -> None:
        n = 0
        due = time.monotonic()
        while not stop.is_set():
            user, run = items.turn(n)
            start = stats.now_ns()
            await writer.add_items(user + run)
            (during if cleaning.is_set() else before).append(stats.now_ns() - start)
            n += 1
            due += WRITE_EVERY_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    manager = SessionManager(path, retention_days=7)
    try:
        await manager.open()
        stats.settle()
        writing = asyncio.create_task(write_turns())
        await asyncio.sleep(IDLE_WRITER_S)
        cleaning.set()
        lag = stats.LoopLag()
        watching = asyncio.create_task(lag.watch())
        start = stats.now_ns()
        deleted = await manager.cleanup_inactive_sessions()
        seconds = (stats.now_ns() - start) / 1e9
        lag.stop()
        await watching
        stop.set()
        await writing
        remaining = await manager.get_session_count()
    finally:
        await manager.close()
        writer.close()
    if deleted != expected_idle:
        raise AssertionError(f"cleanup deleted {deleted} sessions, expected {expected_idle}")
    return {
        "cleanup_s": seconds,
        "deleted": deleted,
        "sessions_left": remaining,
        "writer_before": stats.latency_summary(before),
        "writer_during": stats.latency_summary(during),
        "loop_lag_during": lag.summary(),
        "writer_before_latencies_us": latencies_us(before),
        "writer_during_latencies_us": latencies_us(during),
    }


def cleanup(ctx: Context) -> Section:
    sizes = ctx.sizes["cleanup"]
    idle, active, per = sizes["idle"], sizes["active"], sizes["items"]
    variants = {
        "all idle": (idle, active),
        "1/10 idle": (idle // 10, active + idle - idle // 10),
    }
    raw: dict[str, Any] = {}
    for label, (idle_count, active_count) in variants.items():
        path = ctx.tmp / f"cleanup-{idle_count}.db"
        start = time.perf_counter()
        build(path, idle_count, active_count, per)
        built_s = time.perf_counter() - start
        try:
            figures = asyncio.run(measure(path, idle_count))
        finally:
            release_idle_connections()
            candidates.remove_file(path)
        figures.update(
            idle=idle_count,
            active=active_count,
            rows=(idle_count + active_count) * per,
            build_s=built_s,
        )
        raw[label] = figures
        progress(
            f"cleanup {label}: {figures['cleanup_s']:.2f} s, "
            f"writer max {figures['writer_during']['max_ms']:.1f} ms"
        )
    headers = [
        "file",
        "idle sessions",
        "total sessions",
        "rows",
        "cleanup s",
        "ms per idle session",
        "deleted",
        "writes during",
        "writer p50 ms",
        "writer p99 ms",
        "writer max ms",
        "writer p50 ms before",
        "loop lag max ms",
    ]
    rows = []
    for label, figures in raw.items():
        during, before = figures["writer_during"], figures["writer_before"]
        rows.append(
            [
                label,
                f"{figures['idle']:,}",
                f"{figures['idle'] + figures['active']:,}",
                f"{figures['rows']:,}",
                fmt(figures["cleanup_s"], 3),
                fmt(stats.ratio(figures["cleanup_s"] * 1000, figures["idle"]), 3),
                f"{figures['deleted']:,}",
                str(during["n"]),
                fmt(during["p50_ms"], 3),
                fmt(during["p99_ms"], 3),
                fmt(during["max_ms"], 2),
                fmt(before["p50_ms"], 3),
                fmt(figures["loop_lag_during"]["max_ms"], 2),
            ]
        )
    first, second = raw["all idle"], raw["1/10 idle"]
    notes = [
        f"the live writer adds a 4-item turn every {WRITE_EVERY_S * 1000:.0f} ms; its latency "
        f"is also measured for {IDLE_WRITER_S} s before the cleanup starts",
        f"cost follows idle sessions: {fmt(first['cleanup_s'], 3)} s for {first['idle']:,} "
        f"idle vs {fmt(second['cleanup_s'], 3)} s for {second['idle']:,} idle on a table of "
        f"the same size (ratio {fmt(stats.ratio(first['cleanup_s'], second['cleanup_s']))})",
        "one run per file (building the file dominates); not repeated in rounds",
    ]
    title = (
        f"cleanup: cleanup_inactive_sessions() on {idle + active:,} sessions of {per} items "
        "with a live writer (agent only)"
    )
    summary = {
        label: {
            "cleanup_s": figures["cleanup_s"],
            "deleted": figures["deleted"],
            "writer_p50_ms": figures["writer_during"]["p50_ms"],
            "writer_max_ms": figures["writer_during"]["max_ms"],
        }
        for label, figures in raw.items()
    }
    return Section("cleanup", title, headers, rows, notes, summary, raw)
