"""Workloads on big tables (agent only): cleanup with a live writer.

Tables are filled directly, not through ``add_items`` (100,000 sessions would take minutes
that way): the session rows by ``COPY ... FROM STDIN`` (their ids computed in Python with
``get_session_id``), then their items by one set-based ``INSERT ... SELECT`` on the server
from those rows and ``generate_series``, session by session (a session's items are stored
together, which favours deletes and reads over a table grown by interleaved writes). Items are
small plain messages (``{"role": "user", "content": "message k of <session>"}``, alternating
user and assistant), rows exactly as the library writes them (``is_user``, no ``call_key``,
``next_seq`` past the last item, ``late_call_seq`` 0). Then ``VACUUM (ANALYZE)`` and a
checkpoint, as autovacuum would have got to on a live table.

``cleanup``: ``SessionManager(database_url=url, retention_days=7, clock=frozen)`` runs
``cleanup_inactive_sessions()`` while a live ``PostgresSession`` in the same event loop adds a
4-item turn every 5 ms; the writer's per-write latency is recorded before and during the
cleanup. The clock is injected (frozen at the moment the table was built) so exactly the
sessions loaded as idle (last activity 30 days earlier) are past the cutoff. It runs at two
table sizes, the second 10x smaller with 10x fewer idle sessions: if the cost follows the idle
sessions rather than the table's size, the milliseconds per idle session are about equal.
The manager's batches (how many sessions each transaction deleted, and how long it took as
the manager timed it) are read from its debug log.

``list_sessions`` and ``delete_user`` are in ``conversations.py`` (which loads as ``load`` does).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from agent_sessions import SessionManager
from agent_sessions.backends.postgres import sql as pg_sql
from agent_sessions.ids import get_session_id

from .. import items, stats
from ..core import Figures, Section, fmt, latencies_us, progress
from . import server
from .candidates import MAX_MESSAGES
from .rounds import PgContext

DAY = 86400.0
WRITE_EVERY_S = 0.005
IDLE_WRITER_S = 0.5
"""How long the writer runs before the cleanup starts, for its latency without cleanup."""

INSERT_ITEMS = f"""
    INSERT INTO {pg_sql.ITEMS} (session_id, seq, message_data, is_user, call_key)
    SELECT s.session_id, g.k,
        '{{"role": "' || CASE WHEN mod(g.k, 2) = 1 THEN 'user' ELSE 'assistant' END
            || '", "content": "message ' || g.k || ' of ' || s.session_id || '"}}',
        mod(g.k, 2) = 1, NULL
    FROM {pg_sql.SESSIONS} AS s CROSS JOIN generate_series(1, %(per)s) AS g(k)
    ORDER BY s.session_id, g.k"""


def load(
    url: str, *, idle: int, active: int, per_session: int, per_user: int, base: float
) -> float:
    """Empty the tables, then fill them: ``idle`` + ``active`` sessions. Returns seconds taken.

    Session ``n`` belongs to user ``n // per_user``. Idle sessions were last active 30 days
    (and ``n`` seconds) before ``base``, active ones within the hour before it.
    """
    server.reset(url)
    start = time.perf_counter()
    columns = (
        "session_id, user_id, conversation_id, created_at, last_activity, next_seq, late_call_seq"
    )
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.transaction(),
        conn.cursor() as cur,
    ):
        with cur.copy(f"COPY {pg_sql.SESSIONS} ({columns}) FROM STDIN") as copy:
            for n in range(idle + active):
                user, conversation = f"user-{n // per_user:07d}", f"conv-{n % per_user}"
                when = base - 30 * DAY - n if n < idle else base - (n % 3600)
                moment = datetime.fromtimestamp(when, UTC)
                sid = get_session_id(user, conversation)
                copy.write_row((sid, user, conversation, moment, moment, per_session + 1, 0))
        cur.execute(INSERT_ITEMS, {"per": per_session})
    server.settle_tables(url, (pg_sql.SESSIONS, pg_sql.ITEMS))
    return time.perf_counter() - start


# --- cleanup --------------------------------------------------------------------------------


class BatchLog(logging.Handler):
    """Collects the manager's per-batch debug lines: ``cleanup: %d session(s) in %.1f ms``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.batches: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if str(record.msg).startswith("cleanup:") and isinstance(args, tuple) and len(args) == 2:
            self.batches.append((int(args[0]), float(args[1])))

    def summary(self) -> dict[str, Any]:
        sizes = [size for size, _ in self.batches]
        return {
            "batches": len(sizes),
            "mean_batch": sum(sizes) / len(sizes) if sizes else math.nan,
            "single_batches": sum(1 for size in sizes if size == 1),
            "batch_ms": stats.latency_summary([round(ms * 1e6) for _, ms in self.batches]),
            "batch_log": self.batches,
        }


async def measure_cleanup(url: str, expected_idle: int, base: float) -> Figures:
    from agent_sessions.backends.postgres import close_pools
    from agent_sessions.session import PostgresSession

    writer = PostgresSession("live-writer", "conv-1", database_url=url, max_messages=MAX_MESSAGES)
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

    frozen = datetime.fromtimestamp(base, UTC)
    manager = SessionManager(database_url=url, retention_days=7, clock=lambda: frozen)
    library_log = logging.getLogger("agent_sessions")
    level = library_log.level
    batch_log = BatchLog()
    library_log.addHandler(batch_log)
    library_log.setLevel(logging.DEBUG)
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
        library_log.removeHandler(batch_log)
        library_log.setLevel(level)
        await manager.close()
        writer.close()
        await close_pools()
    if deleted != expected_idle:
        raise AssertionError(f"cleanup deleted {deleted} sessions, expected {expected_idle}")
    return {
        "cleanup_s": seconds,
        "deleted": deleted,
        "sessions_left": remaining,
        "writer_before": stats.latency_summary(before),
        "writer_during": stats.latency_summary(during),
        "loop_lag_during": lag.summary(),
        **batch_log.summary(),
        "writer_before_latencies_us": latencies_us(before),
        "writer_during_latencies_us": latencies_us(during),
    }


def cleanup(ctx: PgContext) -> Section:
    sizes = ctx.sizes["cleanup"]
    idle, active, per = sizes["idle"], sizes["active"], sizes["items"]
    variants = {"large": (idle, active), "small (1/10)": (idle // 10, active // 10)}
    raw: dict[str, Any] = {}
    for label, (idle_count, active_count) in variants.items():
        base = time.time()
        built_s = load(
            ctx.url, idle=idle_count, active=active_count, per_session=per, per_user=1, base=base
        )
        total = idle_count + active_count
        progress(f"cleanup {label}: loaded {total:,} sessions in {built_s:.1f} s")
        figures = asyncio.run(measure_cleanup(ctx.url, idle_count, base))
        figures.update(
            idle=idle_count,
            active=active_count,
            rows=(idle_count + active_count) * per,
            build_s=built_s,
            ms_per_idle=stats.ratio(figures["cleanup_s"] * 1000, idle_count),
        )
        raw[label] = figures
        progress(
            f"cleanup {label}: {figures['cleanup_s']:.2f} s, "
            f"writer max {figures['writer_during']['max_ms']:.1f} ms"
        )
    headers = [
        "table",
        "idle sessions",
        "total sessions",
        "item rows",
        "load s",
        "cleanup s",
        "ms per idle session",
        "deleted",
        "writes during",
        "writer p50 ms",
        "writer p99 ms",
        "writer max ms",
        "writer p50 ms before",
        "loop lag max ms",
        "batches",
        "mean batch",
        "batches of 1",
        "batch p50 ms",
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
                fmt(figures["build_s"], 1),
                fmt(figures["cleanup_s"], 3),
                fmt(figures["ms_per_idle"], 3),
                f"{figures['deleted']:,}",
                str(during["n"]),
                fmt(during["p50_ms"], 3),
                fmt(during["p99_ms"], 3),
                fmt(during["max_ms"], 2),
                fmt(before["p50_ms"], 3),
                fmt(figures["loop_lag_during"]["max_ms"], 2),
                str(figures["batches"]),
                fmt(figures["mean_batch"], 1),
                str(figures["single_batches"]),
                fmt(figures["batch_ms"]["p50_ms"], 2),
            ]
        )
    large, small = raw["large"], raw["small (1/10)"]
    per_idle_ratio = stats.ratio(large["ms_per_idle"], small["ms_per_idle"])
    notes = [
        f"the live writer adds a 4-item turn every {WRITE_EVERY_S * 1000:.0f} ms; its latency "
        f"is also measured for {IDLE_WRITER_S} s before the cleanup starts",
        f"cost follows idle sessions: {fmt(large['ms_per_idle'], 3)} ms per idle session on "
        f"{large['idle'] + large['active']:,} sessions vs {fmt(small['ms_per_idle'], 3)} on "
        f"{small['idle'] + small['active']:,} (ratio {fmt(per_idle_ratio)})",
        "batches: the manager's transactions (from its debug log), sized by it to hold about "
        "10 ms each; batch ms is each one's duration as the manager timed it",
        "tables loaded by COPY and INSERT ... SELECT (see benchmarks/postgres/bulk.py), then "
        "VACUUM (ANALYZE); one run per table size, not repeated in rounds",
    ]
    title = (
        f"cleanup: cleanup_inactive_sessions() of {idle:,} idle sessions ({per} items each) "
        "with a live writer, at two table sizes (agent only)"
    )
    summary: dict[str, Any] = {
        label: {
            "cleanup_s": figures["cleanup_s"],
            "deleted": figures["deleted"],
            "ms_per_idle": figures["ms_per_idle"],
            "writer_p50_ms": figures["writer_during"]["p50_ms"],
            "writer_max_ms": figures["writer_during"]["max_ms"],
            "batches": figures["batches"],
            "mean_batch": figures["mean_batch"],
            "single_batches": figures["single_batches"],
        }
        for label, figures in raw.items()
    }
    summary["ms_per_idle_ratio"] = per_idle_ratio
    return Section("cleanup", title, headers, rows, notes, summary, raw)
