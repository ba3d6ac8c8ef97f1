"""SessionManager: stats, listing, pruning, clearing, lifecycle, and corrupt stored rows."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner
from agents.testing import ScriptedModel, assistant_message

from agent_sessions import (
    AgentSession,
    EventLoopMismatchError,
    InvalidArgumentError,
    SessionClosedError,
    SessionManager,
    SessionNotFoundError,
    SessionStats,
)
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

# --- helpers ----------------------------------------------------------------------------------


CORRUPT_PAYLOADS = ("{not json", "42", "[1, 2]")


async def write(
    db_path: Path,
    user_id: str,
    conversation_id: str,
    items: list[dict[str, Any]],
    *,
    clock: FakeClock | None = None,
    max_messages: int = 1000,
) -> str:
    with AgentSession(
        user_id, conversation_id, db_path=db_path, max_messages=max_messages, clock=clock
    ) as session:
        await session.add_items(items)  # type: ignore[arg-type]
        return session.session_id


def insert_raw_rows(db_path: Path, session_id: str, payloads: tuple[str, ...]) -> list[int]:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        return [
            int(
                conn.execute(
                    "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                    (session_id, payload),
                ).lastrowid
                or 0
            )
            for payload in payloads
        ]


def stored_rows(db_path: Path, session_id: str) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(
            "SELECT id, message_data FROM agent_messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()


def snapshot(db_path: Path) -> tuple[list[Any], list[Any]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return (
            conn.execute("SELECT * FROM agent_sessions ORDER BY session_id").fetchall(),
            conn.execute("SELECT * FROM agent_messages ORDER BY id").fetchall(),
        )


def contents(items: list[Any]) -> list[Any]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = content[0]["text"]
        out.append(content if content is not None else item.get("call_id"))
    return out


# --- get_session_stats ----------------------------------------------------------------------


async def test_stats_counts_owner_and_aware_utc_times(db_path: Path, clock: FakeClock) -> None:
    created = clock.now
    sid = await write(db_path, "alice", "c1", [user("q1"), assistant("a1")], clock=clock)
    clock.advance(hours=3, microseconds=250)
    await write(db_path, "alice", "c1", [user("q2")], clock=clock)
    await write(db_path, "bob", "c9", [user("other")], clock=clock)

    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        stats = await manager.get_session_stats(sid)

    assert isinstance(stats, SessionStats)
    assert stats.session_id == sid == "user_alice_conv_c1"
    assert (stats.user_id, stats.conversation_id) == ("alice", "c1")
    assert (stats.message_count, stats.corrupt_items) == (3, 0), stats
    for moment in (stats.created_at, stats.last_activity):
        assert moment.tzinfo is not None, moment
        assert moment.utcoffset() == timedelta(0), moment
    assert stats.created_at == created, f"{stats.created_at} != {created}"
    assert stats.last_activity == clock.now, f"{stats.last_activity} != {clock.now}"


async def test_stats_is_frozen(db_path: Path) -> None:
    sid = await write(db_path, "u", "c", [user("x")])
    async with SessionManager(db_path, max_messages=5, retention_days=7) as manager:
        stats = await manager.get_session_stats(sid)
    with pytest.raises(ValueError, match="frozen"):
        stats.message_count = 99


async def test_stats_of_unknown_session(db_path: Path) -> None:
    await write(db_path, "u", "c", [user("x")])
    async with SessionManager(db_path, max_messages=5, retention_days=7) as manager:
        with pytest.raises(SessionNotFoundError, match="user_nobody_conv_c") as info:
            await manager.get_session_stats("user_nobody_conv_c")
        with pytest.raises(LookupError):
            await manager.get_session_stats("missing")
    assert info.value.session_id == "user_nobody_conv_c"


# --- list_sessions --------------------------------------------------------------------------


@pytest.fixture
async def five_sessions(db_path: Path, clock: FakeClock) -> list[str]:
    """Five sessions written one hour apart, oldest first; alice owns three."""
    owners = [("alice", "c1"), ("bob", "c1"), ("alice", "c2"), ("carol", "c1"), ("alice", "c3")]
    ids = []
    for n, (owner, conversation) in enumerate(owners):
        items = [user(f"m{n}")] * (n + 1)
        ids.append(await write(db_path, owner, conversation, items, clock=clock))
        clock.advance(hours=1)
    return ids


async def test_list_most_recent_first(
    db_path: Path, clock: FakeClock, five_sessions: list[str]
) -> None:
    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        listed = await manager.list_sessions()
    assert [s.session_id for s in listed] == five_sessions[::-1]
    assert [s.message_count for s in listed] == [5, 4, 3, 2, 1]


async def test_list_recent_activity_reorders(
    db_path: Path, clock: FakeClock, five_sessions: list[str]
) -> None:
    await write(db_path, "alice", "c1", [user("back again")], clock=clock)  # the oldest
    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        listed = [s.session_id for s in await manager.list_sessions()]
    assert listed[0] == five_sessions[0], listed


async def test_list_filters_by_user(
    db_path: Path, clock: FakeClock, five_sessions: list[str]
) -> None:
    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        alice = await manager.list_sessions("alice")
        nobody = await manager.list_sessions("nobody")
        paged = await manager.list_sessions("alice", limit=1, offset=1)
    assert [s.conversation_id for s in alice] == ["c3", "c2", "c1"]
    assert {s.user_id for s in alice} == {"alice"}
    assert nobody == []
    assert [s.conversation_id for s in paged] == ["c2"]


async def test_list_limit_and_offset(
    db_path: Path, clock: FakeClock, five_sessions: list[str]
) -> None:
    newest_first = five_sessions[::-1]
    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        pages = [
            [s.session_id for s in await manager.list_sessions(limit=2, offset=offset)]
            for offset in (0, 2, 4, 6)
        ]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:], []], pages


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": True}, "limit"),
    ],
)
async def test_list_rejects_bad_paging_and_changes_nothing(
    db_path: Path,
    clock: FakeClock,
    five_sessions: list[str],
    kwargs: dict[str, Any],
    named: str,
) -> None:
    before = snapshot(db_path)
    async with SessionManager(db_path, max_messages=50, retention_days=7, clock=clock) as manager:
        with pytest.raises(InvalidArgumentError, match=named):
            await manager.list_sessions(**kwargs)
        with pytest.raises(ValueError, match=named):  # InvalidArgumentError is a ValueError
            await manager.list_sessions("alice", **kwargs)
        assert len(await manager.list_sessions()) == 5
    assert snapshot(db_path) == before


# --- prune_session_messages -----------------------------------------------------------------


def tool_turn(n: int) -> list[dict[str, Any]]:
    return [user(f"q{n}"), call(f"c{n}"), output(f"c{n}"), assistant(f"a{n}")]


async def test_prune_after_lowering_max_messages(db_path: Path) -> None:
    turns = [item for n in range(10) for item in tool_turn(n)]  # 40 items, user at 0, 4, ...
    one_long_turn = [user("q"), *[assistant(f"a{n}") for n in range(10)]]
    no_user = [
        *[assistant(f"a{n}") for n in range(4)],
        call("k"),  # index 4
        output("k"),  # index 5
        *[assistant(f"b{n}") for n in range(5)],
    ]
    turns_id = await write(db_path, "u", "turns", turns, max_messages=100)
    long_id = await write(db_path, "u", "long", one_long_turn, max_messages=100)
    no_user_id = await write(db_path, "u", "nouser", no_user, max_messages=100)

    async with SessionManager(db_path, max_messages=6, retention_days=7) as manager:
        # Rule 1: the longest suffix of <= 6 items starting at a user message is turn 9.
        assert await manager.prune_session_messages(turns_id) == 36
        # Rule 2: no user message among the newest 6: the current turn stays whole.
        assert await manager.prune_session_messages(long_id) == 0
        # Rule 3: starting at index 5 (of 11) would orphan the output of call k: start at 6.
        assert await manager.prune_session_messages(no_user_id) == 6
        # A second pass finds nothing more to do.
        for sid in (turns_id, long_id, no_user_id):
            assert await manager.prune_session_messages(sid) == 0, sid
        kept = {sid: await manager.get_items(sid) for sid in (turns_id, long_id, no_user_id)}
        stats = await manager.get_session_stats(turns_id)
        with pytest.raises(SessionNotFoundError):
            await manager.prune_session_messages("user_nobody_conv_x")

    assert kept[turns_id] == tool_turn(9)
    assert kept[turns_id][0]["role"] == "user"
    assert stats.message_count == 4
    assert kept[long_id] == one_long_turn
    assert kept[no_user_id] == no_user[6:]
    # The sessions themselves see the pruned history.
    with AgentSession("u", "turns", db_path=db_path) as session:
        assert await session.get_items() == tool_turn(9)


async def test_prune_all_sessions_sums_the_deletions(db_path: Path) -> None:
    for name in ("a", "b", "c"):
        await write(db_path, "u", name, [user(f"{name}{n}") for n in range(10)], max_messages=100)
    async with SessionManager(db_path, max_messages=4, retention_days=7) as manager:
        assert await manager.prune_all_sessions() == 18
        counts = [s.message_count for s in await manager.list_sessions()]
    assert counts == [4, 4, 4], counts


# --- clear_session --------------------------------------------------------------------------


async def test_clear_session_deletes_everything_of_that_session(db_path: Path) -> None:
    sid = await write(db_path, "alice", "c1", [user("a"), assistant("b"), user("c")])
    insert_raw_rows(db_path, sid, ("{corrupt",))
    other = await write(db_path, "bob", "c1", [user("keep me")])

    async with SessionManager(db_path, max_messages=50, retention_days=7) as manager:
        assert await manager.clear_session(sid) == 4  # corrupt rows are items stored too
        with pytest.raises(SessionNotFoundError):
            await manager.get_session_stats(sid)
        with pytest.raises(SessionNotFoundError):
            await manager.clear_session(sid)
        assert (await manager.get_session_stats(other)).message_count == 1

    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute(
            "SELECT COUNT(*) FROM agent_messages WHERE session_id = ?", (sid,)
        ).fetchone()[0]
        sessions = conn.execute(
            "SELECT COUNT(*) FROM agent_sessions WHERE session_id = ?", (sid,)
        ).fetchone()[0]
    assert (rows, sessions) == (0, 0)


# --- counts ---------------------------------------------------------------------------------


async def test_active_session_count(db_path: Path, clock: FakeClock) -> None:
    start = clock.now
    await write(db_path, "u", "idle", [user("x")], clock=clock)  # start
    clock.advance(days=3)
    await write(db_path, "u", "boundary", [user("x")], clock=clock)  # start + 3 d
    clock.advance(days=6)
    await write(db_path, "u", "recent", [user("x")], clock=clock)  # start + 9 d

    clock.now = start + timedelta(days=10)  # "boundary" is idle exactly 7 days: still active
    async with SessionManager(db_path, max_messages=5, retention_days=7, clock=clock) as manager:
        assert await manager.get_active_session_count() == 2
        assert await manager.get_session_count() == 3
        clock.advance(microseconds=1)
        assert await manager.get_active_session_count() == 1
        clock.advance(days=30)
        assert await manager.get_active_session_count() == 0


async def test_average_messages_per_session(db_path: Path) -> None:
    async with SessionManager(db_path, max_messages=50, retention_days=7) as manager:
        empty = await manager.get_average_messages_per_session()
        assert isinstance(empty, float)
        assert empty == 0.0
        for name, count in (("a", 2), ("b", 4), ("c", 9)):
            await write(db_path, "u", name, [user(str(n)) for n in range(count)])
        assert await manager.get_average_messages_per_session() == pytest.approx(5.0)


# --- lifecycle ------------------------------------------------------------------------------


async def test_closed_manager_raises_our_error(db_path: Path) -> None:
    sid = await write(db_path, "u", "c", [user("x")])
    async with SessionManager(db_path, max_messages=5, retention_days=7) as manager:
        assert (await manager.get_session_stats(sid)).message_count == 1
    calls = [
        lambda: manager.get_session_stats(sid),
        lambda: manager.get_items(sid),
        lambda: manager.list_sessions(),
        lambda: manager.get_session_count(),
        lambda: manager.get_active_session_count(),
        lambda: manager.get_average_messages_per_session(),
        lambda: manager.prune_session_messages(sid),
        lambda: manager.prune_all_sessions(),
        lambda: manager.clear_session(sid),
        lambda: manager.cleanup_inactive_sessions(),
        lambda: manager.cleanup_inactive_sessions(dry_run=True),
        lambda: manager.open(),
    ]
    for make in calls:
        with pytest.raises(SessionClosedError, match="closed"):
            await make()
    await manager.close()  # closing twice is harmless
    assert len(snapshot(db_path)[1]) == 1, "a closed manager deleted rows"


async def test_close_waits_for_the_running_operation_and_refuses_the_waiting_ones(
    db_path: Path,
) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user(f"m{n}") for n in range(10)])  # type: ignore[list-item]
    manager = SessionManager(db_path, max_messages=4)
    await manager.open()
    prune = asyncio.create_task(manager.prune_session_messages(session.session_id))
    await asyncio.sleep(0)  # prune holds the connection; its transaction is under way
    waiting = asyncio.create_task(manager.get_session_count())
    await asyncio.sleep(0)  # waiting for its turn
    await manager.close()
    # Closing under a transaction would fail it half-way.
    assert await prune == 6
    with pytest.raises(SessionClosedError):
        await waiting
    with AgentSession("u", "c", db_path=db_path) as session:
        assert await session.get_items() == [user(f"m{n}") for n in range(6, 10)]


async def test_manager_closed_before_first_use(db_path: Path) -> None:
    manager = SessionManager(db_path, max_messages=5, retention_days=7)
    await manager.close()
    with pytest.raises(SessionClosedError):
        await manager.get_session_count()
    assert not db_path.exists(), "a closed manager must not create the database"


async def test_unclosed_manager_warns(db_path: Path) -> None:
    manager = SessionManager(db_path, max_messages=5, retention_days=7)
    await manager.open()  # its worker thread now runs until close()
    holder = [manager]
    del manager
    with pytest.warns(ResourceWarning, match="not closed"):
        holder.clear()  # drops the last reference: __del__ runs here


async def test_closed_manager_does_not_warn(db_path: Path) -> None:
    manager = SessionManager(db_path, max_messages=5, retention_days=7)
    await manager.open()
    await manager.close()
    del manager
    gc.collect()  # filterwarnings=error turns a ResourceWarning here into a failure


# --- corrupt rows ---------------------------------------------------------------------------


@pytest.fixture
async def corrupt_session(db_path: Path) -> str:
    """Session u/c holding q1, a1, three undecodable rows, then q2."""
    sid = await write(db_path, "u", "c", [user("q1"), assistant("a1")])
    insert_raw_rows(db_path, sid, CORRUPT_PAYLOADS)
    await write(db_path, "u", "c", [user("q2")])
    return sid


async def test_get_items_skips_and_logs_corrupt_rows(
    db_path: Path, corrupt_session: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="agent_sessions"),
        AgentSession("u", "c", db_path=db_path) as session,
    ):
        items = await session.get_items()
        newest = await session.get_items(limit=2)
    assert items == [user("q1"), assistant("a1"), user("q2")]
    assert newest == [assistant("a1"), user("q2")], "the read window widens past corrupt rows"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "no warning logged for corrupt rows"
    assert corrupt_session in warnings[0].getMessage()
    assert "3 corrupt" in warnings[0].getMessage(), warnings[0].getMessage()


async def test_stats_count_corrupt_rows(db_path: Path, corrupt_session: str) -> None:
    async with SessionManager(db_path, max_messages=50, retention_days=7) as manager:
        stats = await manager.get_session_stats(corrupt_session)
        listed = await manager.list_sessions()
        items = await manager.get_items(corrupt_session)
    assert (stats.message_count, stats.corrupt_items) == (3, 3), stats
    # A listing counts stored rows without decoding them: corrupt ones included, not told apart.
    assert (listed[0].message_count, listed[0].corrupt_items) == (6, None)
    assert items == [user("q1"), assistant("a1"), user("q2")]


async def test_runner_works_on_a_session_with_corrupt_rows(
    db_path: Path, corrupt_session: str
) -> None:
    model = ScriptedModel([[assistant_message("still fine", item_id="msg-1")]])
    agent = Agent(name="test", model=model)
    with AgentSession("u", "c", db_path=db_path) as session:
        result = await Runner.run(agent, "hello", session=session)
        stored = await session.get_items()
    assert result.final_output == "still fine"
    model.assert_complete()
    sent = model.calls[0].input
    assert isinstance(sent, list)
    assert contents(sent) == ["q1", "a1", "q2", "hello"], sent
    assert contents(stored) == ["q1", "a1", "q2", "hello", "still fine"]
    assert len(stored_rows(db_path, corrupt_session)) == 8  # the corrupt rows are left alone


# Items by letter: u = user message, a = assistant message, X = undecodable row, then a
# call/output pair c/o.
LAYOUTS = ["aaaXaa", "uaXuaXa", "XuaaXaXa", "aacoXaXa", "uaaXXXaua", "Xaaa"]


def layout_payloads(layout: str) -> list[str]:
    items = {
        "u": lambda n: json.dumps(user(f"u{n}")),
        "a": lambda n: json.dumps(assistant(f"a{n}")),
        "c": lambda n: json.dumps(call("k")),
        "o": lambda n: json.dumps(output("k")),
        "X": lambda n: CORRUPT_PAYLOADS[n % 3],
    }
    return [items[letter](n) for n, letter in enumerate(layout)]


def assert_cut_is_sound(
    before: list[tuple[int, str]], after: list[tuple[int, str]], max_items: int, label: str
) -> None:
    assert after == before[len(before) - len(after) :], f"{label}: kept rows are not a suffix"
    if len(after) < len(before):
        first = after[0][1] if after else None
        assert first is not None, f"{label}: pruning emptied the session"
        assert first not in CORRUPT_PAYLOADS, f"{label}: cut at corrupt row {first!r}"
        assert len(after) <= max_items or '"role": "user"' in first, f"{label}: kept {after}"


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_manager_pruning_never_cuts_at_a_corrupt_row(tmp_path: Path, layout: str) -> None:
    total_deleted = 0
    for max_items in range(1, len(layout)):
        path = tmp_path / f"{max_items}.db"
        sid = await write(path, "u", "c", [user("seed")])
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM agent_messages")
        insert_raw_rows(path, sid, tuple(layout_payloads(layout)))
        before = stored_rows(path, sid)
        async with SessionManager(path, max_messages=max_items, retention_days=7) as manager:
            deleted = await manager.prune_session_messages(sid)
        after = stored_rows(path, sid)
        assert deleted == len(before) - len(after), (layout, max_items, deleted)
        assert_cut_is_sound(before, after, max_items, f"{layout} max={max_items}")
        total_deleted += deleted
    assert total_deleted > 0, f"{layout}: no bound made pruning cut anything"


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_write_pruning_never_cuts_at_a_corrupt_row(tmp_path: Path, layout: str) -> None:
    total_deleted = 0
    for max_items in range(1, len(layout)):
        path = tmp_path / f"{max_items}.db"
        sid = await write(path, "u", "c", [user("seed")])
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM agent_messages")
        # All but the last item raw, then the last through AgentSession so its prune runs.
        payloads = layout_payloads(layout)
        insert_raw_rows(path, sid, tuple(payloads[:-1]))
        before_write = stored_rows(path, sid)
        last = layout[-1]
        item = {"a": assistant("last"), "u": user("last"), "o": output("k")}[last]
        await write(path, "u", "c", [item], max_messages=max_items)
        after = stored_rows(path, sid)
        before = [*before_write, after[-1]]
        assert_cut_is_sound(before, after, max_items, f"{layout} max={max_items}")
        total_deleted += len(before) - len(after)
    assert total_deleted > 0, f"{layout}: no bound made pruning cut anything"


async def test_timestamps_are_utc_whatever_the_local_zone(db_path: Path, clock: FakeClock) -> None:
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        sid = await write(db_path, "u", "c", [user("x")], clock=clock)
        async with SessionManager(db_path, max_messages=5, retention_days=7) as manager:
            stats = await manager.get_session_stats(sid)
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
    assert stats.last_activity == clock.now.astimezone(UTC)
    assert stats.last_activity.utcoffset() == timedelta(0)


async def test_concurrent_operations_on_one_manager_do_not_interleave(db_path: Path) -> None:
    from agent_sessions import AgentSession as _Session

    ids = []
    for n in range(6):
        with _Session("u", f"c{n}", db_path=db_path, max_messages=100) as session:
            await session.add_items([{"role": "user", "content": str(i)} for i in range(10)])
            ids.append(session.session_id)
    async with SessionManager(db_path, max_messages=3, retention_days=7) as manager:
        results = await asyncio.gather(
            *(manager.prune_session_messages(i) for i in ids[:3]),
            *(manager.clear_session(i) for i in ids[3:]),
            manager.list_sessions(),
            manager.cleanup_inactive_sessions(),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} of {len(results)} concurrent operations failed: {errors}"
        assert results[:6] == [7, 7, 7, 10, 10, 10]


async def test_cancelled_while_waiting_for_the_lock_leaves_no_transaction(db_path: Path) -> None:
    from agent_sessions import AgentSession as _Session

    with _Session("u", "c", db_path=db_path) as session:
        await session.add_items([{"role": "user", "content": "x"}])
        session_id = session.session_id
    async with SessionManager(db_path, max_messages=3, retention_days=7) as manager:
        await manager.get_session_count()  # opened
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(manager.clear_session(session_id))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        blocker.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await task
        # The manager's connection holds no write lock: another writer gets it at once.
        probe = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()
            blocker.close()
        assert await manager.get_session_count() in (0, 1)  # cleared or not, never half
        assert await manager.list_sessions() is not None


def test_an_in_memory_manager_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="needs a database file"):
        SessionManager(":memory:")


async def test_a_manager_follows_a_database_that_was_deleted_and_created_again(
    db_path: Path,
) -> None:
    with AgentSession("u", "old", db_path=db_path) as session:
        await session.add_items([user("x")])
    async with SessionManager(db_path, max_messages=10, retention_days=7) as manager:
        assert [s.conversation_id for s in await manager.list_sessions()] == ["old"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        with AgentSession("u", "new", db_path=db_path) as session:
            await session.add_items([user("y")])
        # A long-lived manager (the daemon's) must not keep managing the deleted file.
        assert [s.conversation_id for s in await manager.list_sessions()] == ["new"]
        assert await manager.clear_session("user_u_conv_new") == 1
    with AgentSession("u", "new", db_path=db_path) as session:
        assert await session.get_items() == []


def test_a_manager_outlives_the_event_loop_it_was_first_used_in(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio.run per call (scripts, per-test loops): each loop gets a working connection.
    thread_errors: list[object] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    asyncio.run(write(db_path, "u", "c", [user("x")]))
    manager = SessionManager(db_path, max_messages=10, retention_days=7)

    async def counts() -> list[int]:
        return list(await asyncio.gather(*(manager.get_session_count() for _ in range(3))))

    assert [asyncio.run(counts()) for _ in range(3)] == [[1, 1, 1]] * 3
    asyncio.run(manager.close())
    assert thread_errors == [], "a connection thread failed"


def test_a_manager_in_use_by_another_running_loop_is_refused(db_path: Path) -> None:
    manager = SessionManager(db_path, max_messages=10, retention_days=7)
    opened, release = threading.Event(), threading.Event()

    async def hold() -> None:
        await manager.open()
        opened.set()
        await asyncio.to_thread(release.wait)
        await manager.close()

    owner = threading.Thread(target=asyncio.run, args=(hold(),))
    owner.start()
    try:
        assert opened.wait(30)
        with pytest.raises(EventLoopMismatchError, match="another running event loop"):
            asyncio.run(manager.get_session_count())
    finally:
        release.set()
        owner.join(30)


def test_a_loop_closed_in_the_middle_of_a_call_does_not_hang_the_next_one(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager's worker thread finishes the first loop's call after that loop closed,
    # and cannot deliver the result; the next loop must not wait on it forever.
    session_id = asyncio.run(write(db_path, "u", "c", [user("x")]))
    manager = SessionManager(db_path, max_messages=10, retention_days=7)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(manager.open())
        blocker.execute("BEGIN IMMEDIATE")  # the manager's write now waits in its thread
        pending = first.create_task(manager.prune_session_messages(session_id))
        first.run_until_complete(asyncio.sleep(0.3))
        assert not pending.done()
    finally:
        first.close()  # with the call in flight, as a loop closed without draining does
        blocker.execute("ROLLBACK")
        blocker.close()
    started = time.monotonic()
    assert asyncio.run(manager.get_session_count()) == 1
    assert time.monotonic() - started < 10
    asyncio.run(manager.close())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_manager_used_before_a_fork_works_in_the_child(db_path: Path) -> None:
    # gunicorn --preload and fork pools: the parent's worker thread does not exist in the
    # child; the child's first call must start its own, not wait on the parent's forever.
    asyncio.run(write(db_path, "u", "c", [user("x")]))
    manager = SessionManager(db_path, max_messages=10, retention_days=7)
    assert asyncio.run(manager.get_session_count()) == 1
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            count = asyncio.run(asyncio.wait_for(manager.get_session_count(), 10))
            asyncio.run(manager.close())
            code = 0 if count == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(manager.get_session_count()) == 1, "the parent's manager still works"
    asyncio.run(manager.close())
