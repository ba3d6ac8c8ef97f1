"""Conversations on a big file (agent only): listing a user's sessions, and deleting a user.

Files are filled with raw ``executemany`` into the tables ``schema.connect`` creates, rows as
the library writes them: ``user_id`` and ``conversation_id`` set (so the
``(user_id, last_activity_ts DESC, session_id)`` index of migration 5 serves a user's list),
``title`` the first user message cut as ``conversations.default_title`` cuts it (NULL for one
session in ten, as for a conversation with no user text yet), ``late_call_row`` 0.

``list_sessions``: ``sessions`` sessions of ``per_user`` each (so every user has several
pages), ``items`` small items each. Random users are listed page by page with
``SessionManager.list_sessions(user, limit=20)``, then ``cursor=next_cursor`` until the last
page; first pages and following pages are timed apart. ``sql.list_sessions`` on a plain
connection (no worker thread, no manager) is timed beside it, and ``EXPLAIN QUERY PLAN`` of
both pages is kept in the JSON file.

``delete_user``: a user with ``sessions`` sessions of realistic turn items (``items.history``;
each count in ``items`` is a row of the table) among ``others`` sessions of other users. While
a live ``AgentSession`` of another user adds a 4-item turn every 5 ms in the same event loop,
``SessionManager.delete_user(user)`` deletes them (one transaction on SQLite); the writer's
per-write latency is recorded before and during it. Repeated ``repeats`` times per item count
(the user reloaded in between), since one delete lasts only a handful of writes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_sessions import SessionManager
from agent_sessions.backends.sqlite import schema
from agent_sessions.backends.sqlite import sql as sqlite_sql
from agent_sessions.codec import encode_items
from agent_sessions.conversations import default_title
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
PAGE = 20
"""``limit`` of every ``list_sessions`` call."""
WRITE_EVERY_S = 0.005
IDLE_WRITER_S = 0.5
"""How long the writer runs before ``delete_user`` starts, for its latency without it."""
DELETED_USER = "deleted-user"
RETENTION_DAYS = 7

SESSION_COLUMNS = (
    "session_id, user_id, conversation_id, created_ts, last_activity_ts, title, late_call_row"
)
INSERT_SESSION = (
    f"INSERT INTO {schema.SESSIONS_TABLE} ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)"
)
INSERT_ROW = f"INSERT INTO {schema.MESSAGES_TABLE} (session_id, message_data) VALUES (?, ?)"


def title_of(n: int) -> str | None:
    """Session ``n``'s title: its first user message's, or none for one session in ten."""
    return None if n % 10 == 9 else default_title([items.user_message(n)])


def activity(n: int, base: float) -> float:
    """Session ``n``'s last activity: spread over the 6 days before ``base`` (not expired)."""
    return base - (n * 7919 % int(6 * DAY)) - (n % 1000) / 1000


def small_rows(session_id: str, n: int, per_session: int) -> Iterator[tuple[str, str]]:
    """The first user message (the title's), then small plain messages."""
    yield session_id, json.dumps(items.user_message(n))
    for k in range(1, per_session):
        role = "user" if k % 2 == 0 else "assistant"
        yield session_id, f'{{"role": "{role}", "content": "message {k} of {n}"}}'


class Loader:
    """Raw inserts into a file ``schema.connect`` creates, as a bulk load (no fsync).

    A ``fresh`` file is loaded without WAL (no copy of every page), then switched back to it;
    that needs the file to itself, so later loads into it stay in WAL.
    """

    def __init__(self, path: Path, *, fresh: bool = True) -> None:
        schema.connect(path).close()
        self.fresh = fresh
        self.conn = sqlite3.connect(path, isolation_level=None)
        if fresh:
            self.conn.execute("PRAGMA journal_mode = DELETE")
        self.conn.execute("PRAGMA synchronous = OFF")

    def many(self, first: int, count: int, per_user: int, per_session: int, base: float) -> None:
        """Sessions ``first`` .. ``first + count - 1``; session n is user ``n // per_user``'s."""

        def sessions() -> Iterator[tuple[Any, ...]]:
            for n in range(first, first + count):
                user, conversation = f"user-{n // per_user:07d}", f"conv-{n % per_user}"
                when = activity(n, base)
                sid = get_session_id(user, conversation)
                yield sid, user, conversation, when - 600, when, title_of(n)

        def rows() -> Iterator[tuple[str, str]]:
            for n in range(first, first + count):
                sid = get_session_id(f"user-{n // per_user:07d}", f"conv-{n % per_user}")
                yield from small_rows(sid, n, per_session)

        self.conn.execute("BEGIN")
        self.conn.executemany(INSERT_SESSION, sessions())
        self.conn.executemany(INSERT_ROW, rows())
        self.conn.execute("COMMIT")

    def user(self, user: str, sessions: int, per_session: int, base: float) -> None:
        """``user`` with ``sessions`` sessions of ``per_session`` realistic turn items."""
        payloads = encode_items(items.history(per_session))
        title = default_title(items.history(per_session))
        self.conn.execute("BEGIN")
        for n in range(sessions):
            sid = get_session_id(user, f"conv-{n}")
            when = activity(n, base)
            self.conn.execute(INSERT_SESSION, (sid, user, f"conv-{n}", when - 600, when, title))
            self.conn.executemany(INSERT_ROW, [(sid, payload) for payload in payloads])
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.execute("ANALYZE")
        if self.fresh:
            self.conn.execute("PRAGMA journal_mode = WAL")
        else:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


# --- list_sessions --------------------------------------------------------------------------


def plans(path: Path, user: str, since: float) -> dict[str, list[str]]:
    """``EXPLAIN QUERY PLAN`` of a user's first page and of a following page."""
    first = (
        f"{sqlite_sql.LIST_WITH_COUNTS} WHERE s.user_id = ? AND s.last_activity_ts >= ? "
        f"{sqlite_sql.LIST_ORDER}"
    )
    following = (
        f"{sqlite_sql.LIST_WITH_COUNTS} WHERE s.user_id = ? AND s.last_activity_ts >= ? AND "
        "s.last_activity_ts <= ? AND (s.last_activity_ts < ? OR s.session_id > ?) "
        f"{sqlite_sql.LIST_ORDER}"
    )
    conn = sqlite3.connect(path)
    try:
        return {
            name: [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
            for name, query, params in (
                ("first page", first, (user, since, PAGE + 1, 0)),
                ("next page", following, (user, since, since + DAY, since + DAY, "", PAGE + 1, 0)),
            )
        }
    finally:
        conn.close()


async def measure_list(path: Path, picks: list[str], warmup: int, base: float) -> Figures:
    frozen = datetime.fromtimestamp(base, UTC)
    manager = SessionManager(path, retention_days=RETENTION_DAYS, clock=lambda: frozen)
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
    # The backend's own function on a plain connection: the query and row building only.
    since = base - RETENTION_DAYS * DAY
    bare: list[int] = []
    conn = schema.connect(path)
    try:
        for user in picks:
            start = stats.now_ns()
            sqlite_sql.list_sessions(conn, user, PAGE + 1, 0, None, since)
            bare.append(stats.now_ns() - start)
    finally:
        conn.close()
    users = len(picks) - warmup
    return {
        "first": stats.latency_summary(first),
        "following": stats.latency_summary(following),
        "all": stats.latency_summary(first + following),
        "sql_only_first": stats.latency_summary(bare[warmup:]),
        "sessions_per_user": listed / max(1, users),
        "plans": plans(path, picks[-1], since),
        "first_latencies_us": latencies_us(first),
        "following_latencies_us": latencies_us(following),
    }


def list_sessions(ctx: Context) -> Section:
    sizes = ctx.sizes["list_sessions"]
    count, per_user, per = sizes["sessions"], sizes["per_user"], sizes["items"]
    path = ctx.tmp / "list-sessions.db"
    base = time.time()
    start = time.perf_counter()
    loader = Loader(path)
    loader.many(0, count, per_user, per, base)
    loader.close()
    built_s = time.perf_counter() - start
    progress(f"list_sessions: loaded {count:,} sessions in {built_s:.1f} s")
    users = -(-count // per_user)
    rng = random.Random(7)
    picks = [f"user-{rng.randrange(users):07d}" for _ in range(sizes["warmup"] + sizes["users"])]
    try:
        figures = asyncio.run(measure_list(path, picks, sizes["warmup"], base))
    finally:
        release_idle_connections()
        candidates.remove_file(path)
    figures["build_s"] = built_s
    headers = ["page", "calls", "p50 ms", "p99 ms", "max ms"]
    rows = [
        [label, str(figures[key]["n"])]
        + [fmt(figures[key][name], 3) for name in ("p50_ms", "p99_ms", "max_ms")]
        for label, key in (
            ("first (no cursor)", "first"),
            ("following (cursor=)", "following"),
            ("all pages", "all"),
            ("first, sql.list_sessions on a plain connection", "sql_only_first"),
        )
    ]
    notes = [
        f"{count:,} sessions, {per_user} per user ({users:,} users, "
        f"{figures['sessions_per_user']:.0f} listed per user in pages of {PAGE}), {per} items "
        "each; titles set (1 in 10 NULL); all active within the 7-day retention",
        "plans: "
        + "; ".join(f"{name}: {' / '.join(plan)}" for name, plan in figures["plans"].items()),
        f"file loaded by executemany in {built_s:.1f} s, then ANALYZE",
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


async def measure_delete(path: Path, expected: int, in_batches: bool) -> Figures:
    from agent_sessions import AgentSession

    writer: Any = AgentSession("live-writer", "conv-1", db_path=path, max_messages=200)
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

    manager = SessionManager(path)
    try:
        await manager.open()
        stats.settle()
        writing = asyncio.create_task(write_turns())
        await asyncio.sleep(IDLE_WRITER_S)
        deleting.set()
        lag = stats.LoopLag()
        watching = asyncio.create_task(lag.watch())
        start = stats.now_ns()
        deleted = await manager.delete_user(DELETED_USER, in_batches=in_batches)
        seconds = (stats.now_ns() - start) / 1e9
        lag.stop()
        await watching
        stop.set()
        await writing
    finally:
        await manager.close()
        writer.close()
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


def pooled(runs: list[Figures]) -> dict[str, Any]:
    """The writer's latencies during every run together, and the runs' delete durations."""
    before = [v * 1000 for run in runs for v in run["writer_before_latencies_us"]]
    during = [v * 1000 for run in runs for v in run["writer_during_latencies_us"]]
    return {
        "delete_s": stats.median([run["delete_s"] for run in runs]),
        "delete_s_max": max(run["delete_s"] for run in runs),
        "writer_before": stats.latency_summary(before),
        "writer_during": stats.latency_summary(during),
        "loop_lag_max_ms": max(run["loop_lag_during"]["max_ms"] for run in runs),
    }


MODES = (("one transaction", False), ("in batches", True))


def delete_user(ctx: Context) -> Section:
    sizes = ctx.sizes["delete_user"]
    others, count, repeats = sizes["others"], sizes["sessions"], sizes["repeats"]
    raw: dict[str, Any] = {}
    for per in sizes["items"]:
        path = ctx.tmp / f"delete-user-{per}.db"
        base = time.time()
        start = time.perf_counter()
        loader = Loader(path)
        loader.many(0, others, 10, 20, base)
        loader.close()
        built_s = time.perf_counter() - start
        try:
            for mode, in_batches in MODES:
                runs = []
                for _ in range(repeats):
                    loader = Loader(path, fresh=False)
                    loader.user(DELETED_USER, count, per, base)
                    loader.close()
                    runs.append(asyncio.run(measure_delete(path, count, in_batches)))
                    release_idle_connections()
                    progress(
                        f"delete_user {per} items, {mode}: {runs[-1]['delete_s'] * 1000:.0f} "
                        f"ms, writer max {runs[-1]['writer_during']['max_ms']:.1f} ms"
                    )
                raw[f"{per} items, {mode}"] = {
                    **pooled(runs),
                    "items": per,
                    "mode": mode,
                    "build_s": built_s,
                    "runs": runs,
                }
        finally:
            release_idle_connections()
            candidates.remove_file(path)
    headers = [
        "items per session",
        "mode",
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
                figures["mode"],
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
        "one transaction (the default on SQLite): a writer waits for all of it; in batches "
        "(delete_user(..., in_batches=True)): short transactions sized as cleanup's",
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
