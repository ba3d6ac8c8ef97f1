"""Sessions from ``get_agent_session(..., db_path=target)``: the SDK protocol and our extras."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from agents.memory import SessionSettings

from agent_sessions import (
    AgentSession,
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidItemError,
    SessionClosedError,
    SessionManager,
    SessionNotFoundError,
    get_agent_session,
    get_session_id,
)
from agent_sessions.codec import MAX_ITEM_DEPTH
from agent_sessions.session import PostgresSession
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

from .helpers import is_postgres, write


async def session_count(target: str) -> int:
    async with SessionManager(target, max_messages=10, retention_days=7) as manager:
        return await manager.get_session_count()


# --- the factory ------------------------------------------------------------------------------


async def check_the_factory_gives_the_session_class_of_the_target(target: str) -> None:
    uid = uuid.uuid4()
    with get_agent_session(uid, "conv-1", db_path=target, max_messages=7) as session:
        assert type(session) is (PostgresSession if is_postgres(target) else AgentSession)
        assert session.user_id == str(uid)
        assert session.conversation_id == "conv-1"
        assert session.session_id == f"user_{uid}_conv_conv-1" == get_session_id(uid, "conv-1")
        assert session.max_messages == 7
        assert "conv-1" in repr(session)
        password = urlsplit(target).password if is_postgres(target) else None
        if password:
            assert password not in repr(session)


# --- add, get, pop, clear ---------------------------------------------------------------------

ODD_ITEMS: list[dict[str, Any]] = [
    user("héllo wörld 你好 👋 Ελληνικά"),
    user("'; DROP TABLE agent_sessions_item; --"),
    user('Robert"); DELETE FROM agent_messages WHERE ("1"="1'),
    user("a NUL \x00 inside, and a lone surrogate \ud800"),
    {"role": "user", "content": [{"type": "input_text", "text": "parts"}], "extra": None},
    {"type": "message", "role": "assistant", "content": [], "n": 2**80, "f": 0.1, "t": True},
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "…"}]},
    {"role": "user", "content": "   trailing and leading spaces   \n\t"},
]


async def check_items_come_back_exactly_as_added_in_order(target: str) -> None:
    with get_agent_session("u", "c", db_path=target, max_messages=10_000) as session:
        assert await session.get_items() == []
        for item in ODD_ITEMS:
            await session.add_items([item])  # type: ignore[list-item]
        expected = list(ODD_ITEMS)
        for batch in range(3):
            items = [user(f"b{batch}-{n}") for n in range(150)]
            await session.add_items(items)  # type: ignore[arg-type]
            expected += items
        await session.add_items([])  # a no-op
        assert await session.get_items() == expected
    with get_agent_session("u", "c", db_path=target) as reopened:
        assert await reopened.get_items() == expected


async def test_get_items_limit_follows_the_sdk_and_refuses_non_integers(target: str) -> None:
    items = [user(f"m{n}") for n in range(6)]
    with get_agent_session("u", "c", db_path=target) as session:
        await session.add_items(items)  # type: ignore[arg-type]
        assert await session.get_items(limit=2) == items[-2:]
        assert await session.get_items(limit=6) == items
        assert await session.get_items(limit=50) == items
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=-1) == items  # the SDK's meaning: everything
        assert await session.get_items(limit=2**70) == items
        assert await session.get_items(limit=None) == items
        for bad in ("3", 2.5, True, [1]):
            with pytest.raises(InvalidArgumentError, match="limit"):
                await session.get_items(limit=bad)  # type: ignore[arg-type]
        assert await session.get_items() == items
    settings = SessionSettings(limit=2)
    with get_agent_session("u", "c", db_path=target, session_settings=settings) as session:
        assert await session.get_items() == items[-2:]
        assert await session.get_items(limit=4) == items[-4:], "an explicit limit wins"
    with get_agent_session("u", "c", db_path=target, session_settings={"limit": 3}) as session:
        assert await session.get_items() == items[-3:]


async def check_pop_item_removes_the_newest_of_its_own_session(target: str) -> None:
    with (
        get_agent_session("u", "c", db_path=target) as session,
        get_agent_session("u", "other", db_path=target) as other,
    ):
        assert await session.pop_item() is None
        await session.add_items([user("a"), assistant("b"), user("c")])  # type: ignore[list-item]
        await other.add_items([user("x")])  # type: ignore[list-item]
        assert await session.pop_item() == user("c")
        assert await session.pop_item() == assistant("b")
        assert await session.get_items() == [user("a")]
        assert await other.get_items() == [user("x")]
        assert await session.pop_item() == user("a")
        assert await session.pop_item() is None
        assert await other.get_items() == [user("x")]
        await session.add_items([user("again")])  # type: ignore[list-item]
        assert await session.get_items() == [user("again")]


async def check_clear_session_deletes_it_and_nothing_else(target: str) -> None:
    with (
        get_agent_session("v", "c", db_path=target) as session,
        get_agent_session("v", "other", db_path=target) as other,
    ):
        await session.add_items([user("a"), assistant("b")])  # type: ignore[list-item]
        await other.add_items([user("x")])  # type: ignore[list-item]
        await session.clear_session()
        assert await session.get_items() == []
        assert await other.get_items() == [user("x")]
        await session.clear_session()  # clearing an empty session is harmless
        async with SessionManager(target, max_messages=10, retention_days=7) as manager:
            with pytest.raises(SessionNotFoundError):
                await manager.get_session_stats(session.session_id)
            assert [s.session_id for s in await manager.list_sessions("v")] == [other.session_id]
        await session.add_items([user("fresh start")])  # type: ignore[list-item]
        assert await session.get_items() == [user("fresh start")]


# --- isolation and sharing --------------------------------------------------------------------

PAIRS = [
    ("alice", "c1"),
    ("bob", "c1"),
    ("alice", "c2"),
    ("a_b", "c"),  # these two would collide in a naive f"user_{u}_conv_{c}"
    ("a", "b_c"),
    ("a_conv_b", "c"),
    ("a", "conv_b_c"),
    ("José", "c1"),
    ("x'; DROP TABLE agent_sessions_session; --", "c1"),
    ("100%", "c1"),
    ("100%25", "c1"),
]


async def test_every_user_and_conversation_has_its_own_history(target: str) -> None:
    for n, (user_id, conversation_id) in enumerate(PAIRS):
        await write(target, user_id, conversation_id, [user(f"{n}:{user_id}/{conversation_id}")])
    ids = set()
    for n, (user_id, conversation_id) in enumerate(PAIRS):
        with get_agent_session(user_id, conversation_id, db_path=target) as session:
            assert await session.get_items() == [user(f"{n}:{user_id}/{conversation_id}")]
            ids.add(session.session_id)
    assert len(ids) == len(PAIRS)
    async with SessionManager(target, max_messages=10, retention_days=7) as manager:
        owners = {(s.user_id, s.conversation_id) for s in await manager.list_sessions(limit=100)}
        assert owners == set(PAIRS)
        alice = await manager.list_sessions("alice")
        assert {s.conversation_id for s in alice} == {"c1", "c2"}


async def check_objects_on_one_session_share_its_history(target: str) -> None:
    with (
        get_agent_session("u", "c", db_path=target) as first,
        get_agent_session("u", "c", db_path=target) as second,
    ):
        await first.add_items([user("from first")])  # type: ignore[list-item]
        await second.add_items([assistant("from second")])  # type: ignore[list-item]
        assert await first.get_items() == await second.get_items()
        assert await first.get_items() == [user("from first"), assistant("from second")]
        assert await second.pop_item() == assistant("from second")
        assert await first.get_items() == [user("from first")]
    with get_agent_session("u", "c", db_path=target) as later:
        assert await later.get_items() == [user("from first")]


async def check_concurrent_writes_lose_nothing(target: str) -> None:
    sessions = [get_agent_session(f"u{n}", "c", db_path=target) for n in range(4)]
    shared = [get_agent_session("shared", "c", db_path=target) for _ in range(3)]

    async def writer(session: Any, name: str) -> None:
        for n in range(10):
            await session.add_items([user(f"{name}-{n}")])

    try:
        await asyncio.gather(
            *(writer(s, s.user_id) for s in sessions),
            *(writer(s, f"shared{i}") for i, s in enumerate(shared)),
        )
        for s in sessions:
            assert await s.get_items() == [user(f"{s.user_id}-{n}") for n in range(10)]
        contents = [item["content"] for item in await shared[0].get_items()]
        assert sorted(contents) == sorted(f"shared{i}-{n}" for i in range(3) for n in range(10))
        for i in range(3):  # each writer's items in the order it wrote them
            mine = [c for c in contents if c.startswith(f"shared{i}-")]
            assert mine == [f"shared{i}-{n}" for n in range(10)]
    finally:
        for s in [*sessions, *shared]:
            s.close()


# --- bounded on every write ---------------------------------------------------------------------


async def check_every_write_prunes_to_max_messages_at_a_user_message(target: str) -> None:
    with get_agent_session("u", "c", db_path=target, max_messages=4) as session:
        for turn in range(10):
            await session.add_items([user(f"q{turn}")])  # type: ignore[list-item]
            await session.add_items([assistant(f"a{turn}")])  # type: ignore[list-item]
            stored = await session.get_items()
            assert len(stored) <= 4
            assert stored[0]["role"] == "user"
        assert await session.get_items() == [
            user("q8"),
            assistant("a8"),
            user("q9"),
            assistant("a9"),
        ]
    async with SessionManager(target, max_messages=10, retention_days=7) as manager:
        stats = await manager.get_session_stats(session.session_id)
        assert (stats.message_count, stats.corrupt_items) == (4, 0)


async def check_an_output_whose_call_was_pruned_away_is_not_stored(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    with get_agent_session("u", "parked", db_path=target, max_messages=2) as session:
        await session.add_items([user("q0"), call("late")])  # type: ignore[list-item]
        await session.add_items([user("q1"), assistant("a1")])  # type: ignore[list-item]
        assert await session.get_items() == [user("q1"), assistant("a1")]
        with caplog.at_level("WARNING", logger="agent_sessions"):
            await session.add_items([output("late"), assistant("a0")])  # type: ignore[list-item]
        assert await session.get_items() == [user("q1"), assistant("a1"), assistant("a0")]
        assert "late" in caplog.text
        await session.add_items([user("q2"), call("c2")])  # type: ignore[list-item]
        await session.add_items([output("c2")])  # type: ignore[list-item]
        assert (await session.get_items())[-2:] == [call("c2"), output("c2")]


# --- bad input changes nothing ----------------------------------------------------------------


def nested(levels: int) -> dict[str, object]:
    value: object = "leaf"
    for _ in range(levels - 1):
        value = {"a": value}
    return {"role": "user", "content": value}


BAD_ITEMS: list[object] = [
    ["not a dict"],
    [user("ok"), 42],
    [{"role": "user", "content": object()}],
    [{"role": "user", "content": float("nan")}],
    [{"role": "user", "content": {1, 2}}],
    [{"role": "user", 1: "a", "1": "b"}],  # keys equal as JSON: a value would be lost
    [nested(MAX_ITEM_DEPTH + 1)],
    {"role": "user", "content": "a dict, not a list"},
    "a string",
    42,
]


async def test_bad_items_are_refused_and_change_nothing_and_good_ones_are_stored(
    target: str,
) -> None:
    with get_agent_session("u", "c", db_path=target, max_messages=1) as session:
        await session.add_items([user("before")])  # type: ignore[list-item]
        for bad in BAD_ITEMS:
            with pytest.raises(InvalidItemError) as raised:
                await session.add_items(bad)  # type: ignore[arg-type]
            assert isinstance(raised.value, TypeError), "code written for SQLiteSession"
            assert await session.get_items() == [user("before")], bad
    # What is just inside the limits is stored: the deepest nesting, any iterable of items.
    with get_agent_session("u", "good", db_path=target) as session:
        await session.add_items([nested(MAX_ITEM_DEPTH)])  # type: ignore[list-item]
        await session.add_items(user(f"g{n}") for n in range(2))  # type: ignore[arg-type]
        await session.add_items((user("t"),))  # type: ignore[arg-type]
        assert await session.get_items() == [
            nested(MAX_ITEM_DEPTH),
            user("g0"),
            user("g1"),
            user("t"),
        ]


BAD_IDS: list[object] = ["", "   ", "a\nb", "a\x00b", "\ud800", "x" * 129, 42, None, b"u"]


async def test_bad_arguments_are_refused_and_create_nothing(target: str) -> None:
    for bad in BAD_IDS:
        with pytest.raises(InvalidIdentifierError):
            get_agent_session(bad, "c", db_path=target)  # type: ignore[arg-type]
        with pytest.raises(InvalidIdentifierError):
            get_agent_session("u", bad, db_path=target)  # type: ignore[arg-type]
    for bad in (0, -1, True, 2.5, "10", 2**62 + 1):
        with pytest.raises(InvalidArgumentError, match="max_messages"):
            get_agent_session("u", "c", db_path=target, max_messages=bad)  # type: ignore[arg-type]
    naive = datetime(2026, 1, 1)  # a clock must return aware datetimes
    with get_agent_session("u", "c", db_path=target, clock=lambda: naive) as session:
        with pytest.raises(InvalidArgumentError, match="aware datetime"):
            await session.add_items([user("x")])  # type: ignore[list-item]
        with pytest.raises(InvalidArgumentError, match="aware datetime"):
            await session.get_items()  # expiry is decided by the clock: reads need it too
    for bad in ("", "0m", "-5m", "3x", "7 days", 0, -1.0, float("nan"), True, [1], "36501d"):
        with pytest.raises(InvalidArgumentError, match="retention"):
            get_agent_session("u", "c", db_path=target, retention=bad)  # type: ignore[arg-type]
    assert await session_count(target) == 0


# --- closing ----------------------------------------------------------------------------------


async def test_a_closed_session_refuses_everything_and_context_managers_close(target: str) -> None:
    session = get_agent_session("u", "c", db_path=target)
    await session.add_items([user("kept")])  # type: ignore[list-item]
    session.close()
    for operation in (
        session.get_items(),
        session.add_items([user("x")]),  # type: ignore[list-item]
        session.add_items([]),
        session.pop_item(),
        session.clear_session(),
    ):
        with pytest.raises(SessionClosedError, match="closed") as raised:
            await operation
        assert isinstance(raised.value, RuntimeError)
        assert "'user_u_conv_c'" in str(raised.value)
    with pytest.raises(SessionClosedError):
        async with session.turn_lock(timeout=0):
            pytest.fail("locked a closed session")
    session.close()  # twice is harmless
    with get_agent_session("u", "c", db_path=target) as reopened:
        assert await reopened.get_items() == [user("kept")]
    # with and async with close it, also on an exception.
    with get_agent_session("u", "c", db_path=target) as session:
        await session.add_items([user("sync")])  # type: ignore[list-item]
    with pytest.raises(SessionClosedError):
        await session.get_items()
    async with get_agent_session("u", "c", db_path=target) as session:
        assert await session.get_items() == [user("kept"), user("sync")]
    with pytest.raises(SessionClosedError):
        await session.get_items()
    with pytest.raises(ZeroDivisionError), get_agent_session("u", "c", db_path=target) as failing:
        _ = 1 / 0
    with pytest.raises(SessionClosedError):
        await failing.get_items()


# --- activity times ---------------------------------------------------------------------------


async def test_activity_comes_from_the_clock_and_never_goes_back(
    target: str, clock: FakeClock
) -> None:
    created = clock.now
    with get_agent_session("u", "c", db_path=target, clock=clock) as session:
        await session.add_items([user("a")])  # type: ignore[list-item]
        clock.advance(hours=5, microseconds=7)
        await session.add_items([user("b")])  # type: ignore[list-item]
    latest = clock.now
    behind = FakeClock(latest - timedelta(days=20))
    with get_agent_session("u", "c", db_path=target, clock=behind) as session:
        await session.add_items([user("c")])  # type: ignore[list-item]
    async with SessionManager(target, max_messages=10, retention_days=7, clock=clock) as manager:
        stats = await manager.get_session_stats("user_u_conv_c")
    assert (stats.created_at, stats.last_activity) == (created, latest)
    assert stats.last_activity.utcoffset() == timedelta(0)
    assert (stats.user_id, stats.conversation_id, stats.message_count) == ("u", "c", 3)


# --- the checks above, a database each (making one is most of a test's cost) -------------------


async def test_the_factory_and_exact_round_trips(target: str) -> None:
    await check_the_factory_gives_the_session_class_of_the_target(target)
    await check_items_come_back_exactly_as_added_in_order(target)


async def test_pop_item_and_clear_session(target: str) -> None:
    await check_pop_item_removes_the_newest_of_its_own_session(target)
    await check_clear_session_deletes_it_and_nothing_else(target)


async def test_sharing_and_concurrent_writes(target: str) -> None:
    await check_objects_on_one_session_share_its_history(target)
    await check_concurrent_writes_lose_nothing(target)


async def test_bounded_and_valid_after_every_write(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    await check_every_write_prunes_to_max_messages_at_a_user_message(target)
    await check_an_output_whose_call_was_pruned_away_is_not_stored(target, caplog)
