"""Conversations on every backend: titles, metadata, keyset lists, exact expiry, a user's data."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from agent_sessions import (
    InvalidArgumentError,
    SessionManager,
    SessionNotFoundError,
    get_agent_session,
)
from agent_sessions.conversations import DEFAULT_TITLE_LENGTH, MAX_METADATA_BYTES
from agent_sessions.exporting import conversation_markdown, json_chunks
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

from .helpers import stored_rows, write

RETENTION = timedelta(minutes=30)


def session_for(
    target: str, user_id: str, conversation_id: str, clock: FakeClock, **kw: Any
) -> Any:
    return get_agent_session(
        user_id, conversation_id, db_path=target, clock=clock, retention=RETENTION, **kw
    )


def manager_for(target: str, clock: FakeClock) -> SessionManager:
    return SessionManager(target, clock=clock, retention=RETENTION, max_messages=50)


# --- titles and metadata ---------------------------------------------------------------------


async def test_the_title_is_the_first_user_message_until_the_app_sets_one(
    target: str, clock: FakeClock
) -> None:
    with session_for(target, "alice", "c1", clock) as session:
        assert await session.get_title() is None
        await session.add_items([assistant("Hello! How can I help?")])  # type: ignore[list-item]
        assert await session.get_title() is None  # no user text yet
        await session.add_items([user("  Where is\n my   parcel? ")])  # type: ignore[list-item]
        assert await session.get_title() == "Where is my parcel?"
        await session.add_items([user("A later question")])  # type: ignore[list-item]
        assert await session.get_title() == "Where is my parcel?"
        await session.set_title("Parcel 42")
        await session.add_items([user("more")])  # type: ignore[list-item]
        assert await session.get_title() == "Parcel 42"
        await session.set_title(None)  # back to the default: the next user message
        assert await session.get_title() is None
        await session.add_items([user("Refund please")])  # type: ignore[list-item]
        assert await session.get_title() == "Refund please"


async def test_a_long_first_message_is_shortened_at_a_word(target: str, clock: FakeClock) -> None:
    text = "word " * 60
    with session_for(target, "alice", "c1", clock) as session:
        await session.add_items([user(text)])  # type: ignore[list-item]
        title = await session.get_title()
    assert title is not None
    assert title.endswith("…")
    assert len(title) <= DEFAULT_TITLE_LENGTH
    assert title.removesuffix("…").split() == ["word"] * len(title.removesuffix("…").split())


async def test_metadata_round_trips_and_is_bounded(target: str, clock: FakeClock) -> None:
    with session_for(target, "alice", "c1", clock) as session:
        assert await session.get_metadata() == {}
        await session.set_metadata({"channel": "voice", "locale": "de-CH", "n": [1, 2.5, None]})
        assert await session.get_metadata() == {
            "channel": "voice",
            "locale": "de-CH",
            "n": [1, 2.5, None],
        }
        for bad in (
            {"x": "y" * MAX_METADATA_BYTES},
            {1: "a"},
            ["a"],
            {"f": float("nan")},
            {"o": object()},
        ):
            with pytest.raises(InvalidArgumentError):
                await session.set_metadata(bad)  # type: ignore[arg-type]
        for bad_title in ("", "   ", "x" * 201, "a\nb", "tab\there", 42):
            with pytest.raises(InvalidArgumentError):
                await session.set_title(bad_title)  # type: ignore[arg-type]
        # Nothing was changed by the refused calls.
        assert await session.get_metadata() == {
            "channel": "voice",
            "locale": "de-CH",
            "n": [1, 2.5, None],
        }
        assert await session.get_title() is None


async def test_the_manager_sets_titles_and_shows_them(target: str, clock: FakeClock) -> None:
    sid = await write(target, "alice", "c1", [user("first question")], clock=clock)
    async with manager_for(target, clock) as manager:
        assert (await manager.get_session_stats(sid)).title == "first question"
        await manager.set_title(sid, "Renamed")
        await manager.set_metadata(sid, {"pinned": True})
        stats = await manager.get_session_stats(sid)
        assert (stats.title, stats.metadata) == ("Renamed", {"pinned": True})
        assert stats.last_activity == clock.now - timedelta(0)  # renaming is not activity
        with pytest.raises(SessionNotFoundError):
            await manager.set_title("user_nobody_conv_x", "t")
        with pytest.raises(SessionNotFoundError):
            await manager.set_metadata("user_nobody_conv_x", {})
        assert "user_nobody_conv_x" not in stored_rows(target)
        listed = await manager.list_sessions("alice")
        assert [(s.title, s.metadata) for s in listed] == [("Renamed", {"pinned": True})]


# --- keyset lists ----------------------------------------------------------------------------


async def test_pages_by_cursor_cover_every_session_once_newest_first(
    target: str, clock: FakeClock
) -> None:
    expected = []
    for n in range(23):
        expected.append(await write(target, "alice", f"c{n:02}", [user(f"q{n}")], clock=clock))
        if n % 3:  # some share a timestamp: ties are broken by session id
            clock.advance(seconds=1)
    await write(target, "bob", "c00", [user("not alice's")], clock=clock)
    async with manager_for(target, clock) as manager:
        seen = []
        cursor = None
        while True:
            page = await manager.list_sessions("alice", limit=5, cursor=cursor)
            assert len(page) <= 5
            seen.extend(s.session_id for s in page)
            cursor = page.next_cursor
            if cursor is None:
                break
        everyone = await manager.list_sessions(limit=100)
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))
    activity = {s.session_id: s.last_activity for s in everyone}
    order = [(activity[sid], sid) for sid in seen]
    assert order == sorted(order, key=lambda pair: (-pair[0].timestamp(), pair[1]))
    assert len(everyone) == 24
    assert everyone.next_cursor is None


async def test_a_cursor_is_stable_while_sessions_are_written(target: str, clock: FakeClock) -> None:
    for n in range(6):
        await write(target, "alice", f"c{n}", [user("q")], clock=clock)
        clock.advance(seconds=1)
    async with manager_for(target, clock) as manager:
        first = await manager.list_sessions("alice", limit=3)
        # An older session becomes the newest: it moves to the front, and the next page
        # neither repeats a session of the first page nor skips one that did not move.
        await write(target, "alice", "c0", [user("again")], clock=clock)
        second = await manager.list_sessions("alice", limit=3, cursor=first.next_cursor)
    assert [s.conversation_id for s in first] == ["c5", "c4", "c3"]
    assert [s.conversation_id for s in second] == ["c2", "c1"]
    assert second.next_cursor is None


@pytest.mark.parametrize(
    "cursor", ["", "not a cursor", "eyJ4IjoxfQ", "WzEsIDEsIDJd", "W10", "x" * 9000, 5]
)
async def test_a_bad_cursor_is_a_clear_error(target: str, clock: FakeClock, cursor: Any) -> None:
    await write(target, "alice", "c1", [user("q")], clock=clock)
    async with manager_for(target, clock) as manager:
        with pytest.raises(InvalidArgumentError, match="cursor"):
            await manager.list_sessions("alice", cursor=cursor)


async def test_listing_counts_rows_without_reading_them(target: str, clock: FakeClock) -> None:
    await write(
        target, "alice", "c1", [user("q"), call("k"), output("k"), assistant("a")], clock=clock
    )
    async with manager_for(target, clock) as manager:
        (listed,) = await manager.list_sessions("alice")
    assert (listed.message_count, listed.corrupt_items) == (4, None)


# --- exact expiry ----------------------------------------------------------------------------


async def test_expiry_is_exact_at_the_boundary(target: str, clock: FakeClock) -> None:
    with session_for(target, "alice", "c1", clock) as session:
        await session.add_items([user("hello"), assistant("hi")])  # type: ignore[list-item]
        await session.set_metadata({"channel": "voice"})
        clock.advance(minutes=30)  # idle exactly the retention: not expired
        assert len(await session.get_items()) == 2
        assert await session.get_title() == "hello"
        clock.advance(microseconds=1)  # one microsecond more: expired
        assert await session.get_items() == []
        assert await session.get_items(limit=1) == []
        assert await session.get_title() is None
        assert await session.get_metadata() == {}
        assert await session.pop_item() is None
        async with manager_for(target, clock) as manager:
            assert await manager.list_sessions("alice") == []
            assert len(await manager.list_sessions("alice", include_expired=True)) == 1
            with pytest.raises(SessionNotFoundError):
                await manager.set_title(session.session_id, "too late")
        # Still stored until the sweep; the next write starts the conversation afresh.
        assert stored_rows(target)[session.session_id] == 2
        await session.add_items([user("new start")])  # type: ignore[list-item]
        assert await session.get_items() == [user("new start")]
        assert await session.get_title() == "new start"
        assert await session.get_metadata() == {}
    assert stored_rows(target)[session.session_id] == 1
    async with manager_for(target, clock) as manager:
        stats = await manager.get_session_stats(session.session_id)
    assert stats.created_at == clock.now
    assert stats.message_count == 1


async def test_a_session_written_within_retention_never_expires(
    target: str, clock: FakeClock
) -> None:
    with session_for(target, "alice", "c1", clock) as session:
        for n in range(5):
            await session.add_items([user(f"q{n}")])  # type: ignore[list-item]
            clock.advance(minutes=29)
        assert len(await session.get_items()) == 5


async def test_expiry_then_sweep_leaves_nothing(target: str, clock: FakeClock) -> None:
    sid = await write(target, "alice", "c1", [user("q"), assistant("a")], clock=clock)
    clock.advance(minutes=31)
    async with manager_for(target, clock) as manager:
        assert await manager.cleanup_inactive_sessions() == 1
    assert sid not in stored_rows(target)


async def test_setting_a_field_on_an_expired_session_starts_it_afresh(
    target: str, clock: FakeClock
) -> None:
    with session_for(target, "alice", "c1", clock) as session:
        await session.add_items([user("old")])  # type: ignore[list-item]
        clock.advance(hours=1)
        await session.set_metadata({"channel": "chat"})
        assert await session.get_items() == []
        assert await session.get_metadata() == {"channel": "chat"}
        await session.add_items([user("new")])  # type: ignore[list-item]
        assert await session.get_items() == [user("new")]
        assert await session.get_metadata() == {"channel": "chat"}


# --- a user's data -----------------------------------------------------------------------------


@pytest.mark.parametrize("in_batches", [None, True, False])
async def test_delete_user_leaves_nothing_of_that_user(
    target: str, clock: FakeClock, in_batches: bool | None
) -> None:
    mine = [
        await write(
            target, "alice", f"c{n}", [user("q"), call(f"k{n}"), output(f"k{n}")], clock=clock
        )
        for n in range(7)
    ]
    other = await write(target, "bob", "c1", [user("bob's")], clock=clock)
    async with manager_for(target, clock) as manager:
        manager.cleanup_batch_size = 2  # in batches: several of them
        assert await manager.delete_user("alice", in_batches=in_batches) == 7
        assert await manager.list_sessions("alice", include_expired=True) == []
        assert await manager.delete_user("alice") == 0
        assert await manager.get_items(other) == [user("bob's")]
        with pytest.raises(InvalidArgumentError):
            await manager.delete_user("")
    rows = stored_rows(target)
    assert not set(mine) & set(rows)
    assert rows[other] == 1


async def test_export_user_streams_every_conversation(target: str, clock: FakeClock) -> None:
    ids = []
    for n in range(5):
        ids.append(
            await write(
                target, "alice", f"c{n}", [user(f"question {n}"), assistant("a")], clock=clock
            )
        )
    await write(target, "bob", "c1", [user("bob's")], clock=clock)
    clock.advance(hours=2)  # expired conversations are still exported: they are still stored
    async with manager_for(target, clock) as manager:
        exported = [c async for c in manager.export_user("alice")]
        chunks = [
            c
            async for c in json_chunks("alice", manager.export_user("alice"), exported_at=clock.now)
        ]
        assert [c async for c in manager.export_user("nobody")] == []
        empty = "".join(
            [
                c
                async for c in json_chunks(
                    "nobody", manager.export_user("nobody"), exported_at=clock.now
                )
            ]
        )
    assert sorted(c.session.session_id for c in exported) == sorted(ids)
    assert all(
        c.items == [user(f"question {c.session.conversation_id[1:]}"), assistant("a")]
        for c in exported
    )
    document = json.loads("".join(chunks))
    assert document["user_id"] == "alice"
    assert len(document["conversations"]) == 5
    assert document["conversations"][0]["title"].startswith("question")
    assert json.loads(empty)["conversations"] == []
    markdown = conversation_markdown(exported[0])
    assert markdown.startswith("# Session `user_alice_conv_c")
    assert "\n- title: question " in markdown
    assert "**User:** question" in markdown
