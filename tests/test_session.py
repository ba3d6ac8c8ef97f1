from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import threading
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from agents import SQLiteSession
from agents.memory import SessionSettings

from agent_sessions import (
    AgentSession,
    AgentSessionSettings,
    CorruptDatabaseError,
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidItemError,
    SessionClosedError,
    SessionManager,
    SessionStats,
    StorageUnavailableError,
    get_agent_session,
)
from agent_sessions.backends.sqlite import sql
from tests.conftest import FakeClock
from tests.items import assistant, user


async def test_file_backed_by_default_under_settings_path(tmp_path: Path) -> None:
    with get_agent_session("alice", "c1") as session:  # cwd is tmp_path (conftest)
        await session.add_items([user("hi")])
        assert Path(session.db_path).resolve() == tmp_path / "data" / "agent_sessions.db"
    assert (tmp_path / "data" / "agent_sessions.db").is_file()
    with get_agent_session("alice", "c1") as reopened:
        assert await reopened.get_items() == [user("hi")]


async def test_attributes(db_path: Path) -> None:
    uid = uuid.uuid4()
    with AgentSession(uid, "conv-1", db_path=db_path, max_messages=7) as session:
        assert session.user_id == str(uid)
        assert session.conversation_id == "conv-1"
        assert session.session_id == f"user_{uid}_conv_conv-1"
        assert session.max_messages == 7
        assert "conv-1" in repr(session)


async def test_parent_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.db"
    with AgentSession("u", "c", db_path=path) as session:
        await session.add_items([user("x")])
    assert path.is_file()


async def test_memory_database_does_not_persist() -> None:
    with AgentSession("u", "c", db_path=":memory:") as session:
        await session.add_items([user("x")])
        assert await session.get_items() == [user("x")]
    with AgentSession("u", "c", db_path=":memory:") as other:
        assert await other.get_items() == []


async def test_settings_object_and_explicit_arguments(db_path: Path) -> None:
    settings = AgentSessionSettings(db_path=db_path, max_messages=3)
    with get_agent_session("u", "c", settings=settings) as session:
        assert session.max_messages == 3
        assert Path(session.db_path) == db_path
    with AgentSession("u", "c", settings=settings, max_messages=9) as session:
        assert session.max_messages == 9


async def test_factory_takes_the_constructors_keyword_arguments(
    db_path: Path, clock: FakeClock
) -> None:
    settings = AgentSessionSettings(db_path=db_path, max_messages=3)
    with get_agent_session(
        "u",
        "c",
        settings=settings,
        max_messages=5,
        session_settings=SessionSettings(limit=2),
        clock=clock,
    ) as session:
        assert session.max_messages == 5, "explicit arguments win over settings"
        await session.add_items([user(f"m{n}") for n in range(6)])
        assert await session.get_items() == [user("m4"), user("m5")], "limit=2 read"
    stats = await _stats(db_path, "user_u_conv_c")
    assert stats.message_count == 5
    assert stats.last_activity == clock.now
    with get_agent_session("u", "c", max_messages=5) as default_path:  # cwd is tmp_path
        assert Path(default_path.db_path).name == "agent_sessions.db"
        assert default_path.max_messages == 5
    with pytest.raises(InvalidArgumentError, match="max_messages"):
        get_agent_session("u", "c", db_path=db_path, max_messages=0)


async def _stats(db_path: Path, session_id: str) -> SessionStats:
    async with SessionManager(db_path) as manager:
        return await manager.get_session_stats(session_id)


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x" * 129, 42, None, b"bytes"])
def test_invalid_ids_are_rejected_before_anything_is_created(db_path: Path, bad: object) -> None:
    with pytest.raises(InvalidIdentifierError):
        AgentSession(bad, "c", db_path=db_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifierError):
        AgentSession("u", bad, db_path=db_path)  # type: ignore[arg-type]
    assert not db_path.exists()


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10", 2**62 + 1])
def test_invalid_max_messages(db_path: Path, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="max_messages"):
        AgentSession("u", "c", db_path=db_path, max_messages=bad)  # type: ignore[arg-type]
    assert not db_path.exists()


def test_db_path_under_a_file_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = blocker / "sessions.db"
    with pytest.raises(StorageUnavailableError, match="not-a-folder") as info:
        AgentSession("u", "c", db_path=path)
    assert info.value.path == str(path)
    assert "a folder on the path is a file" in str(info.value)


def test_db_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailableError, match="is a folder"):
        AgentSession("u", "c", db_path=tmp_path)


@pytest.mark.parametrize("bad", [123, b"sessions.db", "", None])
def test_db_path_that_is_not_a_path_is_refused(tmp_path: Path, bad: object) -> None:
    settings = AgentSessionSettings(db_path=tmp_path / "default.db")
    if bad is None:  # None means "the settings' path": refused only as an explicit setting
        settings = settings.model_copy(update={"db_path": 123})
    with pytest.raises(InvalidArgumentError, match="db_path"):
        AgentSession("u", "c", db_path=bad, settings=settings)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


async def test_get_items_limit_follows_the_sdk_and_refuses_non_integers(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        items = [user(f"m{n}") for n in range(5)]
        await session.add_items(items)  # type: ignore[arg-type]
        assert await session.get_items(limit=2) == items[-2:]
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=-1) == items  # the SDK's meaning: everything
        assert await session.get_items(limit=2**70) == items  # past any SQLite integer
        for bad in ("3", 2.5, True):
            with pytest.raises(InvalidArgumentError, match="limit"):
                await session.get_items(limit=bad)  # type: ignore[arg-type]


def test_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(CorruptDatabaseError, match=r"notes\.db"):
        AgentSession("u", "c", db_path=path)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "bad",
    [
        ["not a dict"],
        [user("ok"), 42],
        [{"role": "user", "content": object()}],
        [{"role": "user", "content": math.nan}],
        [{"role": "user", "content": {1, 2}}],
    ],
)
async def test_bad_items_are_rejected_and_change_nothing(db_path: Path, bad: list[object]) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("before")])
        with pytest.raises(InvalidItemError, match="item"):
            await session.add_items(bad)  # type: ignore[arg-type]
        assert await session.get_items() == [user("before")]


@pytest.mark.parametrize("bad", [{"role": "user", "content": "hi"}, "hi", 42, b"x"])
async def test_items_that_are_not_a_list_are_refused(db_path: Path, bad: object) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        with pytest.raises(InvalidItemError, match="items must be a list"):
            await session.add_items(bad)  # type: ignore[arg-type]
        assert await session.get_items() == []


async def test_items_from_any_iterable_are_stored(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items(user(f"m{n}") for n in range(3))  # type: ignore[arg-type]
        await session.add_items((user("m3"),))  # type: ignore[arg-type]
        assert await session.get_items() == [user(f"m{n}") for n in range(4)]


def test_settings_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="settings must be an AgentSessionSettings"):
        AgentSession("u", "c", db_path=tmp_path / "x.db", settings="x")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


async def test_closed_session_raises_our_error(db_path: Path) -> None:
    session = AgentSession("u", "c", db_path=db_path)
    session.close()
    for call in (
        session.get_items(),
        session.add_items([user("x")]),
        session.add_items([]),
        session.pop_item(),
        session.clear_session(),
    ):
        with pytest.raises(SessionClosedError, match="closed"):
            await call
    session.close()  # closing twice is harmless


async def test_errors_are_caught_as_the_sdks_sqlitesession_errors_are(db_path: Path) -> None:
    # Code written for SQLiteSession catches TypeError for an unserialisable item and
    # matches RuntimeError("SQLiteSession is closed"); it must work unchanged with ours.
    sdk = SQLiteSession("s", db_path=":memory:")
    with pytest.raises(TypeError):
        await sdk.add_items([{"role": "user", "content": object()}])  # type: ignore[list-item]
    sdk.close()
    session = AgentSession("u", "c", db_path=db_path)
    with pytest.raises(TypeError):
        await session.add_items([{"role": "user", "content": object()}])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        await session.add_items({"role": "user", "content": "x"})  # type: ignore[arg-type]
    session.close()
    with pytest.raises(RuntimeError, match="SQLiteSession is closed") as raised:
        await session.get_items()
    assert isinstance(raised.value, SessionClosedError)
    assert "'user_u_conv_c'" in str(raised.value)


async def test_async_context_manager(db_path: Path) -> None:
    async with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("x")])
    with pytest.raises(SessionClosedError):
        await session.get_items()


async def test_session_row_records_owner_and_activity_from_the_clock(
    db_path: Path, clock: FakeClock
) -> None:
    with AgentSession("alice", "c1", db_path=db_path, clock=clock) as session:
        await session.add_items([user("a")])
        created = clock.now.timestamp()
        clock.advance(hours=5)
        await session.add_items([user("b")])
    with sqlite3.connect(db_path) as conn:
        row = conn.execute(
            "SELECT user_id, conversation_id, created_ts, last_activity_ts FROM agent_sessions"
        ).fetchone()
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(agent_sessions)")}
    conn.close()
    assert row == ("alice", "c1", created, clock.now.timestamp())
    assert {"idx_agent_sessions_user_list", "idx_agent_sessions_last_activity"} <= indexes


async def test_pruning_runs_on_every_write(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path, max_messages=4) as session:
        for turn in range(10):
            await session.add_items([user(f"q{turn}")])
            await session.add_items([assistant(f"a{turn}")])
            assert len(await session.get_items()) <= 4
        assert await session.get_items() == [
            user("q8"),
            assistant("a8"),
            user("q9"),
            assistant("a9"),
        ]


async def test_pop_item_and_clear(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        assert await session.pop_item() is None
        await session.add_items([user("a"), assistant("b")])
        assert await session.pop_item() == assistant("b")
        assert await session.get_items() == [user("a")]
        await session.clear_session()
        assert await session.get_items() == []
    with sqlite3.connect(db_path) as conn:
        counts = conn.execute(
            "SELECT (SELECT COUNT(*) FROM agent_sessions), (SELECT COUNT(*) FROM agent_messages)"
        ).fetchone()
    conn.close()
    assert counts == (0, 0)


async def test_write_waits_for_another_connections_lock_without_blocking_the_loop(
    db_path: Path,
) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("first")])
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        write = asyncio.create_task(session.add_items([user("second")]))
        ticks = 0
        while ticks < 50:  # the loop keeps running other tasks while the write waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not write.done()
        assert await session.get_items() == [user("first")]  # reads are not blocked
        blocker.execute("COMMIT")
        blocker.close()
        await write
        assert await session.get_items() == [user("first"), user("second")]


async def test_cancelled_while_waiting_for_the_lock_writes_nothing(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(session.add_items([user("never")]))
        await asyncio.sleep(0.01)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        blocker.execute("COMMIT")
        blocker.close()
        assert await session.get_items() == []


async def test_lock_held_past_the_busy_timeout_is_a_clear_error(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_sessions import StorageBusyError
    from agent_sessions.backends.sqlite import connection

    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 100)
    with AgentSession("u", "c", db_path=db_path) as session:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageBusyError, match=r"sessions\.db"):
                await session.add_items([user("x")])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await session.get_items() == []


async def test_concurrent_writers_on_one_file_lose_nothing(db_path: Path) -> None:
    sessions = [AgentSession(f"u{i}", "c", db_path=db_path, max_messages=1000) for i in range(8)]
    try:
        await asyncio.gather(
            *(s.add_items([user(f"{s.user_id}-{n}")]) for s in sessions for n in range(25))
        )
        for s in sessions:
            contents = sorted(item["content"] for item in await s.get_items())
            assert contents == sorted(f"{s.user_id}-{n}" for n in range(25))
    finally:
        for s in sessions:
            s.close()


async def test_output_whose_call_was_pruned_away_is_not_stored(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    call = {"type": "function_call", "call_id": "late", "name": "t", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "late", "output": "done"}
    with AgentSession("u", "c", db_path=db_path, max_messages=2) as session:
        await session.add_items([user("q0"), call])  # parked, waiting for approval
        await session.add_items([user("q1"), assistant("a1")])  # pruning drops the call
        assert await session.get_items() == [user("q1"), assistant("a1")]
        with caplog.at_level("WARNING", logger="agent_sessions"):
            await session.add_items([output, assistant("a0")])
        assert await session.get_items() == [user("q1"), assistant("a1"), assistant("a0")]
        assert "no longer stored (call:late)" in caplog.text
        # an output whose call is still stored is kept, even in a later batch
        await session.add_items([user("q2"), call])
        await session.add_items([output])
        assert (await session.get_items())[-2:] == [call, output]


async def test_rows_that_parse_only_when_joined_are_still_corrupt(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("ok")])
        with sqlite3.connect(db_path) as conn:
            conn.executemany(
                "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                [
                    (session.session_id, text)
                    # each is invalid alone; joined with commas they would parse as items
                    for text in ('{"a": [1', "2]}", '{"a":"}', '{","c":1}', '{"d":1},{"e":2}')
                ],
            )
        conn.close()
        await session.add_items([assistant("after")])
        assert await session.get_items() == [user("ok"), assistant("after")]


async def test_items_nested_deeper_than_can_be_read_back_are_refused(db_path: Path) -> None:
    from agent_sessions.codec import MAX_ITEM_DEPTH

    def nested(levels: int) -> dict[str, object]:
        value: object = "leaf"
        for _ in range(levels - 1):
            value = {"a": value}
        return {"role": "user", "content": value}

    with AgentSession("u", "c", db_path=db_path) as session:
        deepest = nested(MAX_ITEM_DEPTH)
        await session.add_items([deepest])
        assert await session.get_items() == [deepest]
        with pytest.raises(InvalidItemError, match="deeper than"):
            await session.add_items([nested(MAX_ITEM_DEPTH + 1)])
        assert await session.get_items() == [deepest]


def test_sessions_created_in_one_thread_work_from_others(db_path: Path) -> None:
    import threading

    sessions = [AgentSession(f"u{n}", "c", db_path=db_path, max_messages=1000) for n in range(2)]
    errors: list[BaseException] = []

    def use(session: AgentSession) -> None:
        async def write() -> None:
            for n in range(300):
                await session.add_items([user(f"{session.user_id}-{n}")])

        try:
            asyncio.run(write())
        except BaseException as exc:  # reported below with the count
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not errors, f"{len(errors)} thread(s) failed: {errors[:2]}"
        for session in sessions:
            stored = asyncio.run(session.get_items())
            assert len(stored) == 300, f"{session.user_id}: {len(stored)} of 300 items stored"
    finally:
        for session in sessions:
            session.close()


def test_a_forked_child_does_not_reuse_the_parents_connection(db_path: Path) -> None:
    import multiprocessing

    with AgentSession("u", "c", db_path=db_path, max_messages=1000) as session:
        asyncio.run(session.add_items([user("parent-1")]))

        def child() -> None:
            asyncio.run(session.add_items([user("child")]))

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(timeout=60)
        assert process.exitcode == 0
        asyncio.run(session.add_items([user("parent-2")]))
        contents = [item["content"] for item in asyncio.run(session.get_items())]
    assert contents == ["parent-1", "child", "parent-2"]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


async def test_a_late_answered_call_is_never_cut_from_its_output(db_path: Path) -> None:
    call = {"type": "function_call", "call_id": "late", "name": "t", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "late", "output": "done"}

    def late_call_row() -> object:
        with sqlite3.connect(db_path) as conn:
            row = conn.execute("SELECT late_call_row FROM agent_sessions").fetchone()
        conn.close()
        return row[0]

    with AgentSession("u", "c", db_path=db_path, max_messages=6) as session:
        await session.add_items([user("q0"), call])  # parked for approval
        for turn in (1, 2):  # the user moves on
            await session.add_items([user(f"q{turn}"), assistant(f"a{turn}")])
        await session.add_items([output, assistant("a0")])  # approved late
        stored = await session.get_items()
        # Cutting at q1 or q2 would keep the output without its call: nothing is cut yet.
        assert stored == [
            user("q0"),
            call,
            user("q1"),
            assistant("a1"),
            user("q2"),
            assistant("a2"),
            output,
            assistant("a0"),
        ]
        assert late_call_row() not in (None, sql.LATE_CALL_NONE)
        await session.add_items([user("q3"), assistant("a3")])
        assert await session.get_items() == [user("q3"), assistant("a3")]
        assert late_call_row() == sql.LATE_CALL_NONE  # the pair is gone: fast path again


async def test_a_whole_turn_in_one_batch_keeps_the_fast_prune(db_path: Path) -> None:
    # Only a call answered after a later user message needs the whole-session check; a
    # turn saved in one add_items (user message, call, output, answer) is not one.
    call = {"type": "function_call", "call_id": "c1", "name": "t", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "done"}
    with AgentSession("u", "c", db_path=db_path, max_messages=4) as session:
        for turn in range(3):
            await session.add_items([user(f"q{turn}"), call, output, assistant(f"a{turn}")])
        assert await session.get_items() == [user("q2"), call, output, assistant("a2")]
    with closing(sqlite3.connect(db_path)) as conn:
        state = conn.execute("SELECT late_call_row FROM agent_sessions").fetchone()
    assert state == (sql.LATE_CALL_NONE,)


async def test_a_clock_returning_a_naive_datetime_is_a_clear_error(db_path: Path) -> None:
    from datetime import datetime

    with AgentSession("u", "c", db_path=db_path, clock=lambda: datetime(2026, 1, 1)) as session:
        with pytest.raises(InvalidArgumentError, match="aware datetime"):
            await session.add_items([user("x")])
        with pytest.raises(InvalidArgumentError, match="aware datetime"):
            await session.get_items()  # expiry is decided by the clock: reads need it too
    with AgentSession("u", "c", db_path=db_path) as session:
        assert await session.get_items() == []


def _remove_database(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


async def test_a_deleted_database_is_created_again_by_the_next_session(db_path: Path) -> None:
    # The process's cached connection still points at the deleted file: writing through it
    # would be acknowledged, then lost with the process.
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("before")])
    _remove_database(db_path)
    with AgentSession("u", "c", db_path=db_path) as session:
        await session.add_items([user("after")])
        assert await session.get_items() == [user("after")]
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT message_data FROM agent_messages").fetchall()
    conn.close()
    assert rows == [('{"role": "user", "content": "after"}',)]


async def test_a_replaced_database_is_read_by_the_next_session(tmp_path: Path) -> None:
    live, backup = tmp_path / "live.db", tmp_path / "backup.db"
    with AgentSession("u", "c", db_path=tmp_path / "earlier.db") as session:
        await session.add_items([user("from the backup")])
    earlier = closing(sqlite3.connect(tmp_path / "earlier.db"))
    with earlier as source, closing(sqlite3.connect(backup)) as target:
        source.backup(target)
    with AgentSession("u", "c", db_path=live) as session:
        await session.add_items([user("current")])
    # A backup restored over the live file, the way SQLite requires (the live file's WAL and
    # shared memory removed first, or SQLite would read the old WAL into the restored file).
    for suffix in ("-wal", "-shm"):
        Path(f"{live}{suffix}").unlink()
    os.replace(backup, live)
    with AgentSession("u", "c", db_path=live) as session:
        assert await session.get_items() == [user("from the backup")]


async def test_a_relative_path_names_one_file_whatever_the_thread_or_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    session = AgentSession("u", "c", db_path="app.db")
    await session.add_items([user("hello")])
    monkeypatch.chdir(second)
    in_thread: list[object] = []
    reader = threading.Thread(target=lambda: in_thread.append(asyncio.run(session.get_items())))
    reader.start()
    reader.join()
    assert in_thread == [[user("hello")]], "another thread opened another file"
    assert session.db_path == str(first / "app.db")
    session.close()
    with AgentSession("u", "c", db_path="app.db") as later:  # opened here: second/app.db
        assert await later.get_items() == []
    async with SessionManager("app.db", max_messages=10, retention_days=7) as manager:
        assert manager.db_path == str(second / "app.db")
        assert await manager.list_sessions() == []
    async with SessionManager(first / "app.db", max_messages=10, retention_days=7) as manager:
        assert [s.conversation_id for s in await manager.list_sessions()] == ["c"]


async def test_sessions_already_open_follow_once_a_session_reopens_the_file(
    db_path: Path,
) -> None:
    with AgentSession("u", "old", db_path=db_path) as earlier:
        await earlier.add_items([user("before")])
        _remove_database(db_path)
        with AgentSession("u", "new", db_path=db_path):  # notices the file is gone
            pass
        await earlier.add_items([user("after")])
        assert await earlier.get_items() == [user("after")]
    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT session_id, message_data FROM agent_messages").fetchall()
    assert rows == [("user_u_conv_old", '{"role": "user", "content": "after"}')]
