"""``SessionManager(target)``: stats, listing, pruning, clearing, counts, corrupt rows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent_sessions import (
    InvalidArgumentError,
    SessionClosedError,
    SessionManager,
    SessionNotFoundError,
    SessionStats,
    get_agent_session,
)
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

from .helpers import insert_corrupt_rows, stored_rows, write

CORRUPT_PAYLOADS = ["{not json", "42", "[1, 2]", '{"a": 1} {"b": 2}']


def manager_for(target: str, clock: FakeClock | None = None, **kwargs: Any) -> SessionManager:
    options: dict[str, Any] = {"max_messages": 50, "retention_days": 7, "clock": clock}
    return SessionManager(target, **{**options, **kwargs})


async def five_sessions(target: str, clock: FakeClock) -> list[str]:
    """Five sessions written an hour apart, oldest first; alice owns three."""
    owners = [("alice", "c1"), ("bob", "c1"), ("alice", "c2"), ("carol", "c1"), ("alice", "c3")]
    ids = []
    for n, (owner, conversation) in enumerate(owners):
        ids.append(await write(target, owner, conversation, [user(f"m{n}")] * (n + 1), clock=clock))
        clock.advance(hours=1)
    return ids


async def test_stats_give_owner_counts_and_exact_utc_times(target: str, clock: FakeClock) -> None:
    created = clock.now
    sid = await write(target, "alice", "c1", [user("q1"), assistant("a1")], clock=clock)
    clock.advance(hours=3, microseconds=250)
    await write(target, "alice", "c1", [user("q2")], clock=clock)
    await write(target, "bob", "c9", [user("other")], clock=clock)
    async with manager_for(target, clock) as manager:
        stats = await manager.get_session_stats(sid)
        with pytest.raises(SessionNotFoundError, match="user_nobody_conv_c") as missing:
            await manager.get_session_stats("user_nobody_conv_c")
        with pytest.raises(LookupError):
            await manager.get_items("missing")
        assert await manager.get_items(sid) == [user("q1"), assistant("a1"), user("q2")]
    assert isinstance(stats, SessionStats)
    assert missing.value.session_id == "user_nobody_conv_c"
    assert (stats.session_id, stats.user_id, stats.conversation_id) == (sid, "alice", "c1")
    assert (stats.message_count, stats.corrupt_items) == (3, 0)
    assert (stats.created_at, stats.last_activity) == (created, clock.now)
    for moment in (stats.created_at, stats.last_activity):
        assert moment.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="frozen"):
        stats.message_count = 99


async def test_list_newest_first_by_user_paged(target: str, clock: FakeClock) -> None:
    ids = await five_sessions(target, clock)
    newest_first = ids[::-1]
    async with manager_for(target, clock) as manager:
        listed = await manager.list_sessions()
        assert [s.session_id for s in listed] == newest_first
        assert [s.message_count for s in listed] == [5, 4, 3, 2, 1]
        alice = await manager.list_sessions("alice")
        assert [s.conversation_id for s in alice] == ["c3", "c2", "c1"]
        assert {s.user_id for s in alice} == {"alice"}
        assert await manager.list_sessions("nobody") == []
        paged = await manager.list_sessions("alice", limit=1, offset=1)
        assert [s.conversation_id for s in paged] == ["c2"]
        pages = [
            [s.session_id for s in await manager.list_sessions(limit=2, offset=offset)]
            for offset in (0, 2, 4, 6)
        ]
        assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:], []]
        for bad, named in (
            ({"limit": 0}, "limit"),
            ({"offset": -1}, "offset"),
            ({"limit": True}, "limit"),
        ):
            with pytest.raises(InvalidArgumentError, match=named):
                await manager.list_sessions(**bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=named):
                await manager.list_sessions("alice", **bad)  # type: ignore[arg-type]
        # New activity on the oldest session moves it to the front.
        await write(target, "alice", "c1", [user("back again")], clock=clock)
        assert (await manager.list_sessions(limit=1))[0].session_id == ids[0]
        assert [s.conversation_id for s in await manager.list_sessions("alice")] == [
            "c1",
            "c3",
            "c2",
        ]
    assert sum(stored_rows(target).values()) == 16, "listing changed nothing"


def tool_turn(n: int) -> list[dict[str, Any]]:
    return [user(f"q{n}"), call(f"c{n}"), output(f"c{n}"), assistant(f"a{n}")]


async def test_prune_after_lowering_max_messages_and_prune_all(target: str) -> None:
    turns = [item for n in range(10) for item in tool_turn(n)]
    long_turn = [user("q"), *[assistant(f"a{n}") for n in range(10)]]
    no_user = [*[assistant(f"a{n}") for n in range(4)], call("k"), output("k")]
    no_user += [assistant(f"b{n}") for n in range(5)]
    turns_id = await write(target, "u", "turns", turns, max_messages=100)
    long_id = await write(target, "u", "long", long_turn, max_messages=100)
    no_user_id = await write(target, "u", "nouser", no_user, max_messages=100)
    plain = [
        await write(target, "v", f"p{n}", [user(f"{n}-{i}") for i in range(10)]) for n in range(3)
    ]

    async with manager_for(target, max_messages=6) as manager:
        assert await manager.prune_session_messages(turns_id) == 36  # whole turns: turn 9
        assert await manager.prune_session_messages(long_id) == 0  # the newest turn whole
        assert await manager.prune_session_messages(no_user_id) == 6  # not at k's output
        for sid in (turns_id, long_id, no_user_id):
            assert await manager.prune_session_messages(sid) == 0, "a second pass does nothing"
        assert await manager.get_items(turns_id) == tool_turn(9)
        assert await manager.get_items(long_id) == long_turn
        assert await manager.get_items(no_user_id) == no_user[6:]
        with pytest.raises(SessionNotFoundError):
            await manager.prune_session_messages("user_nobody_conv_x")
    async with manager_for(target, max_messages=4) as manager:
        # The plain sessions lose 6 each, the one without user messages 1 (b0).
        assert await manager.prune_all_sessions() == 3 * 6 + 1
        counts = {s.session_id: s.message_count for s in await manager.list_sessions()}
    assert counts == {turns_id: 4, long_id: 11, no_user_id: 4, **dict.fromkeys(plain, 4)}
    with get_agent_session("u", "turns", db_path=target) as session:
        assert await session.get_items() == tool_turn(9), "sessions see the pruned history"


async def test_clear_session_deletes_every_row_of_that_session(target: str) -> None:
    sid = await write(target, "alice", "c1", [user("a"), assistant("b"), user("c")])
    insert_corrupt_rows(target, sid, ["{corrupt"])
    other = await write(target, "bob", "c1", [user("keep me")])
    async with manager_for(target) as manager:
        assert await manager.clear_session(sid) == 4, "corrupt rows are stored rows too"
        with pytest.raises(SessionNotFoundError):
            await manager.get_session_stats(sid)
        with pytest.raises(SessionNotFoundError):
            await manager.clear_session(sid)
        assert (await manager.get_session_stats(other)).message_count == 1
    assert stored_rows(target) == {other: 1}


async def test_counts_and_average(target: str, clock: FakeClock) -> None:
    start = clock.now
    async with manager_for(target, clock) as manager:
        empty = await manager.get_average_messages_per_session()
        assert (empty, type(empty)) == (0.0, float)
        assert await manager.get_session_count() == 0
        await write(target, "u", "idle", [user("x")] * 2, clock=clock)  # start
        clock.advance(days=3)
        await write(target, "u", "boundary", [user("x")] * 4, clock=clock)  # start + 3 d
        clock.advance(days=6)
        await write(target, "u", "recent", [user("x")] * 9, clock=clock)  # start + 9 d
        clock.now = start + timedelta(days=10)  # "boundary" idle exactly 7 days: active
        assert await manager.get_session_count() == 3
        assert await manager.get_active_session_count() == 2
        assert await manager.get_average_messages_per_session() == pytest.approx(5.0)
        clock.advance(microseconds=1)
        assert await manager.get_active_session_count() == 1
        clock.advance(days=30)
        assert await manager.get_active_session_count() == 0


async def test_corrupt_rows_are_skipped_counted_and_never_a_cut_point(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await write(target, "u", "c", [user("q1"), assistant("a1")])
    insert_corrupt_rows(target, sid, CORRUPT_PAYLOADS)
    await write(target, "u", "c", [user("q2")])
    with (
        caplog.at_level("WARNING", logger="agent_sessions"),
        get_agent_session("u", "c", db_path=target) as session,
    ):
        assert await session.get_items() == [user("q1"), assistant("a1"), user("q2")]
        assert await session.get_items(limit=2) == [assistant("a1"), user("q2")]
    assert f"'{sid}'" in caplog.text
    assert "4 corrupt" in caplog.text
    async with manager_for(target) as manager:
        stats = await manager.get_session_stats(sid)
        assert (stats.message_count, stats.corrupt_items) == (3, 4)
        (listed,) = await manager.list_sessions()
        assert (listed.message_count, listed.corrupt_items) == (
            7,
            None,
        )  # a listing counts rows, without decoding them
        assert await manager.get_items(sid) == [user("q1"), assistant("a1"), user("q2")]
        assert await manager.get_average_messages_per_session() == 7.0, "rows, corrupt included"
    # No user message after the corrupt rows but q2: a cut there is the only one.
    async with manager_for(target, max_messages=2) as manager:
        assert await manager.prune_session_messages(sid) == 6
        assert await manager.get_items(sid) == [user("q2")]
    # Without user messages, a corrupt row is never where the history starts.
    nouser = await write(target, "u", "nouser", [assistant("a")])
    insert_corrupt_rows(target, nouser, ["{bad"])
    await write(target, "u", "nouser", [assistant("b")])
    async with manager_for(target, max_messages=2) as manager:
        assert await manager.prune_session_messages(nouser) == 2
        assert await manager.get_items(nouser) == [assistant("b")]
    assert stored_rows(target)[nouser] == 1


async def test_a_closed_manager_refuses_everything_and_changes_nothing(target: str) -> None:
    sid = await write(target, "u", "c", [user("x"), user("y")])
    async with manager_for(target, max_messages=1) as manager:
        assert (await manager.get_session_stats(sid)).message_count == 2
    for call_it in (
        lambda: manager.get_session_stats(sid),
        lambda: manager.get_items(sid),
        lambda: manager.list_sessions(),
        lambda: manager.get_session_count(),
        lambda: manager.prune_session_messages(sid),
        lambda: manager.prune_all_sessions(),
        lambda: manager.clear_session(sid),
        lambda: manager.cleanup_inactive_sessions(retention_days=1),
        lambda: manager.open(),
    ):
        with pytest.raises(SessionClosedError, match="closed"):
            await call_it()
    await manager.close()  # twice is harmless
    assert stored_rows(target) == {sid: 2}
