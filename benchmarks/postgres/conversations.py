"""Conversations on big tables (agent only): listing a user's sessions, and deleting a user.

As ``benchmarks/conversations.py`` does on SQLite, with tables filled as ``bulk.py`` fills
them: session rows by ``COPY`` with ``user_id``, ``conversation_id`` and ``title`` (the first
user message cut by ``conversations.default_title``, NULL for one session in ten), so the
``(user_id, last_activity DESC, session_id)`` index serves a user's list; small items by
``bulk.INSERT_ITEMS``; then ``VACUUM (ANALYZE)`` and a checkpoint. A deleted user's items are
realistic turn items (``items.history``) copied with the ``is_user``/``call_key`` columns the
library derives (``batch.Batch``), ``next_seq`` past the last, ``late_call_seq`` 0.

``list_sessions``: random users listed page by page (``limit=20``, then ``cursor=``); first
and following pages timed apart. The same statements run bare on one psycopg connection
(``sql only``) split the server's part from the library's; ``EXPLAIN (ANALYZE, BUFFERS)`` of
both pages is kept in the JSON file.

``delete_user``: ``SessionManager.delete_user(user)`` of a user with ``sessions`` sessions
(in batches sized as cleanup's, each a transaction) while a live ``PostgresSession`` of
another user adds a 4-item turn every 5 ms in the same event loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from agent_sessions import SessionManager
from agent_sessions.backends.postgres import sql as pg_sql
from agent_sessions.backends.postgres.batch import Batch
from agent_sessions.codec import encode_items
from agent_sessions.conversations import default_title
from agent_sessions.ids import get_session_id

from .. import items, stats
from ..conversations import (
    DAY,
    DELETED_USER,
    IDLE_WRITER_S,
    PAGE,
    RETENTION_DAYS,
    WRITE_EVERY_S,
    activity,
    pooled,
    title_of,
)
from ..core import Figures, Section, fmt, latencies_us, progress
from . import server
from .bulk import INSERT_ITEMS
from .candidates import MAX_MESSAGES
from .rounds import PgContext

SESSION_COLUMNS = (
    "session_id, user_id, conversation_id, created_at, last_activity, next_seq, late_call_seq, "
    "title"
)
TABLES = (pg_sql.SESSIONS, pg_sql.ITEMS)


def moment(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def load_many(url: str, count: int, per_user: int, per_session: int, base: float) -> float:
    """Empty the tables, then ``count`` sessions (n is user ``n // per_user``'s). Seconds taken."""
    server.reset(url)
    start = time.perf_counter()
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.transaction(),
        conn.cursor() as cur,
    ):
        with cur.copy(f"COPY {pg_sql.SESSIONS} ({SESSION_COLUMNS}) FROM STDIN") as copy:
            for n in range(count):
                user, conversation = f"user-{n // per_user:07d}", f"conv-{n % per_user}"
                when = activity(n, base)
                sid = get_session_id(user, conversation)
                copy.write_row(
                    (
                        sid,
                        user,
                        conversation,
                        moment(when - 600),
                        moment(when),
                        per_session + 1,
                        0,
                        title_of(n),
                    )
                )
        cur.execute(INSERT_ITEMS, {"per": per_session})
    server.settle_tables(url, TABLES)
    return time.perf_counter() - start


def load_user(url: str, user: str, sessions: int, per_session: int, base: float) -> None:
    """Add ``user`` with ``sessions`` sessions of ``per_session`` realistic turn items."""
    history = items.history(per_session)
    batch = Batch.of(history, encode_items(history))
    title = default_title(history)
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.transaction(),
        conn.cursor() as cur,
    ):
        ids = [get_session_id(user, f"conv-{n}") for n in range(sessions)]
        with cur.copy(f"COPY {pg_sql.SESSIONS} ({SESSION_COLUMNS}) FROM STDIN") as copy:
            for n, sid in enumerate(ids):
                when = activity(n, base)
                first, last = moment(when - 600), moment(when)
                copy.write_row((sid, user, f"conv-{n}", first, last, per_session + 1, 0, title))
        columns = "session_id, seq, message_data, is_user, call_key"
        with cur.copy(f"COPY {pg_sql.ITEMS} ({columns}) FROM STDIN") as copy:
            for sid in ids:
                for seq, (payload, is_user, key) in enumerate(
                    zip(batch.payloads, batch.is_user, batch.call_keys, strict=True), start=1
                ):
                    copy.write_row((sid, seq, payload, is_user, key))
    server.settle_tables(url, TABLES)


# --- list_sessions --------------------------------------------------------------------------


FIRST_PAGE = (
    f"{pg_sql.LIST_WITH_COUNTS} WHERE {pg_sql.LIST_BY_USER} AND {pg_sql.LIST_ACTIVE_SINCE} "
    f"{pg_sql.LIST_ORDER}"
)
NEXT_PAGE = (
    f"{pg_sql.LIST_WITH_COUNTS} WHERE {pg_sql.LIST_BY_USER} AND {pg_sql.LIST_ACTIVE_SINCE} "
    f"AND {pg_sql.LIST_AFTER} {pg_sql.LIST_ORDER}"
)
"""The statements ``PostgresBackend.list_sessions`` builds for a user's pages."""


async def bare_pages(
    url: str, picks: list[str], since: datetime
) -> tuple[list[int], list[int], dict[str, list[str]]]:
    """Each pick's pages by the library's statements on one plain connection, and two plans."""
    first: list[int] = []
    following: list[int] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for user in picks:
            params: dict[str, Any] = {"user": user, "since": since, "limit": PAGE + 1, "offset": 0}
            query, took = FIRST_PAGE, first
            while True:
                start = stats.now_ns()
                rows = await (await conn.execute(query, params)).fetchall()
                took.append(stats.now_ns() - start)
                if len(rows) <= PAGE:
                    break
                last = rows[PAGE - 1]
                params.update(after=last[4].replace(tzinfo=UTC), after_id=last[0])
                query, took = NEXT_PAGE, following
        plans: dict[str, list[str]] = {}
        for name, query in (("first page", FIRST_PAGE), ("next page", NEXT_PAGE)):
            cursor = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params)
            plans[name] = [str(row[0]) for row in await cursor.fetchall()]
    return first, following, plans


async def measure_list(url: str, picks: list[str], warmup: int, base: float) -> Figures:
    from agent_sessions.backends.postgres import close_pools

    frozen = moment(base)
    manager = SessionManager(database_url=url, retention_days=RETENTION_DAYS, clock=lambda: frozen)
    first: list[int] = []
    following: list[int] = []
    listed = 0
    try:
        await manager.open()
        for index, user in enumerate(picks):
            if index == warmup:
                stats.settle()
            start = stats.now_ns()
            page = await manager.list_sessions(user, limit=PAGE)
            took = [stats.now_ns() - start]
            seen = len(page)
            while page.next_cursor is not None:
                start = stats.now_ns()
                page = await manager.list_sessions(user, limit=PAGE, cursor=page.next_cursor)
                took.append(stats.now_ns() - start)
                seen += len(page)
            if index >= warmup:
                first.append(took[0])
                following.extend(took[1:])
                listed += seen
    finally:
        await manager.close()
        await close_pools()
    bare_first, bare_following, plans = await bare_pages(
        url, picks[warmup:], moment(base - RETENTION_DAYS * DAY)
    )
    return {
        "first": stats.latency_summary(first),
        "following": stats.latency_summary(following),
        "all": stats.latency_summary(first + following),
        "sql_only_first": stats.latency_summary(bare_first),
        "sql_only_following": stats.latency_summary(bare_following),
        "sessions_per_user": listed / max(1, len(picks) - warmup),
        "plans": plans,
        "first_latencies_us": latencies_us(first),
        "following_latencies_us": latencies_us(following),
    }


def _plan_summary(plan: list[str]) -> str:
    """The plan's node lines (not its timing or buffer details), joined."""
    nodes = [line.strip().lstrip("-> ").split("  (")[0] for line in plan if "cost=" in line]
    return " / ".join(nodes)


def list_sessions(ctx: PgContext) -> Section:
    sizes = ctx.sizes["list_sessions"]
    count, per_user, per = sizes["sessions"], sizes["per_user"], sizes["items"]
    base = time.time()
    built_s = load_many(ctx.url, count, per_user, per, base)
    progress(f"list_sessions: loaded {count:,} sessions in {built_s:.1f} s")
    users = -(-count // per_user)
    rng = random.Random(7)
    picks = [f"user-{rng.randrange(users):07d}" for _ in range(sizes["warmup"] + sizes["users"])]
    figures = asyncio.run(measure_list(ctx.url, picks, sizes["warmup"], base))
    figures["build_s"] = built_s
    headers = ["page", "calls", "p50 ms", "p99 ms", "max ms"]
    rows = [
        [label, str(figures[key]["n"])]
        + [fmt(figures[key][name], 3) for name in ("p50_ms", "p99_ms", "max_ms")]
        for label, key in (
            ("first (no cursor)", "first"),
            ("following (cursor=)", "following"),
            ("all pages", "all"),
            ("first, sql only", "sql_only_first"),
            ("following, sql only", "sql_only_following"),
        )
    ]
    notes = [
        f"{count:,} sessions, {per_user} per user ({users:,} users, "
        f"{figures['sessions_per_user']:.0f} listed per user in pages of {PAGE}), {per} items "
        "each; titles set (1 in 10 NULL); all active within the 7-day retention",
        "sql only: the library's statements on one plain psycopg connection, rows fetched "
        "but not made into SessionStats",
        "plans: "
        + "; ".join(f"{name}: {_plan_summary(plan)}" for name, plan in figures["plans"].items()),
        f"tables loaded by COPY and INSERT ... SELECT in {built_s:.1f} s, then VACUUM (ANALYZE)",
    ]
    title = (
        f"list_sessions: SessionManager.list_sessions(user, limit={PAGE}) page by page on "
        f"{count:,} sessions, {sizes['users']} users after {sizes['warmup']} (agent only)"
    )
    summary = {
        key: {name: figures[key][name] for name in ("p50_ms", "p99_ms", "max_ms", "n")}
        for key in ("first", "following", "all")
    }
    return Section("list_sessions", title, headers, rows, notes, summary, figures)


# --- delete_user ----------------------------------------------------------------------------


async def measure_delete(url: str, expected: int) -> Figures:
    from agent_sessions.backends.postgres import close_pools
    from agent_sessions.session import PostgresSession

    writer = PostgresSession("live-writer", "conv-1", database_url=url, max_messages=MAX_MESSAGES)
    await writer.add_items(items.history(items.PRELOAD_ITEMS))
    before: list[int] = []
    during: list[int] = []
    deleting = asyncio.Event()
    stop = asyncio.Event()

    async def write_turns() -> None:
        n = 0
        due = time.monotonic()
        while not stop.is_set():
            user, run = items.turn(n)
            start = stats.now_ns()
            await writer.add_items(user + run)
            (during if deleting.is_set() else before).append(stats.now_ns() - start)
            n += 1
            due += WRITE_EVERY_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    manager = SessionManager(database_url=url)
    try:
        await manager.open()
        stats.settle()
        writing = asyncio.create_task(write_turns())
        await asyncio.sleep(IDLE_WRITER_S)
        deleting.set()
        lag = stats.LoopLag()
        watching = asyncio.create_task(lag.watch())
        start = stats.now_ns()
        deleted = await manager.delete_user(DELETED_USER)
        seconds = (stats.now_ns() - start) / 1e9
        lag.stop()
        await watching
        stop.set()
        await writing
    finally:
        await manager.close()
        writer.close()
        await close_pools()
    if deleted != expected:
        raise AssertionError(f"delete_user deleted {deleted} sessions, expected {expected}")
    return {
        "delete_s": seconds,
        "deleted": deleted,
        "writer_before": stats.latency_summary(before),
        "writer_during": stats.latency_summary(during),
        "loop_lag_during": lag.summary(),
        "writer_before_latencies_us": latencies_us(before),
        "writer_during_latencies_us": latencies_us(during),
    }


def delete_user(ctx: PgContext) -> Section:
    sizes = ctx.sizes["delete_user"]
    others, count, repeats = sizes["others"], sizes["sessions"], sizes["repeats"]
    raw: dict[str, Any] = {}
    for per in sizes["items"]:
        base = time.time()
        built_s = load_many(ctx.url, others, 10, 20, base)
        runs = []
        for _ in range(repeats):
            load_user(ctx.url, DELETED_USER, count, per, base)
            runs.append(asyncio.run(measure_delete(ctx.url, count)))
            progress(
                f"delete_user {per} items: {runs[-1]['delete_s'] * 1000:.0f} ms, writer "
                f"max {runs[-1]['writer_during']['max_ms']:.1f} ms"
            )
        raw[f"{per} items"] = {**pooled(runs), "items": per, "build_s": built_s, "runs": runs}
    headers = [
        "items per session",
        "item rows deleted",
        "runs",
        "delete_user ms (median)",
        "delete_user ms (max)",
        "writes during",
        "writer p50 ms",
        "writer p99 ms",
        "writer max ms",
        "writer p50 ms before",
        "writer max ms before",
        "loop lag max ms",
    ]
    rows = []
    for figures in raw.values():
        during, before = figures["writer_during"], figures["writer_before"]
        rows.append(
            [
                str(figures["items"]),
                f"{count * figures['items']:,}",
                str(repeats),
                fmt(figures["delete_s"] * 1000, 1),
                fmt(figures["delete_s_max"] * 1000, 1),
                str(during["n"]),
                fmt(during["p50_ms"], 3),
                fmt(during["p99_ms"], 3),
                fmt(during["max_ms"], 2),
                fmt(before["p50_ms"], 3),
                fmt(before["max_ms"], 2),
                fmt(figures["loop_lag_max_ms"], 2),
            ]
        )
    notes = [
        f"a user with {count:,} sessions among {others:,} sessions of other users (10 each, "
        "20 small items); the deleted user's items are realistic turn items (items.history)",
        f"the live writer (another user, {items.PRELOAD_ITEMS} items preloaded) adds a 4-item "
        f"turn every {WRITE_EVERY_S * 1000:.0f} ms; its latency is also measured for "
        f"{IDLE_WRITER_S} s before delete_user starts; writer figures pool all runs",
        "PostgreSQL's delete_user works in batches sized as cleanup's (about 10 ms each); it "
        "locks only the deleted user's rows, so another user's writer waits on no lock",
    ]
    title = (
        f"delete_user: SessionManager.delete_user() of a user with {count:,} sessions, "
        "with a live writer (agent only)"
    )
    summary = {
        label: {
            "delete_ms": figures["delete_s"] * 1000,
            "writer_p99_ms": figures["writer_during"]["p99_ms"],
            "writer_max_ms": figures["writer_during"]["max_ms"],
        }
        for label, figures in raw.items()
    }
    return Section("delete_user", title, headers, rows, notes, summary, raw)
