"""A database written by a plain ``agents.SQLiteSession`` is adopted in place."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_sessions import (
    AgentSession,
    InvalidIdentifierError,
    SessionManager,
    StorageError,
)
from agent_sessions.backends.sqlite import connection, schema, sql
from agent_sessions.backends.sqlite.engine import close_idle_connections
from tests.conftest import FakeClock
from tests.items import assistant, user

LEGACY_IDS = ("user_42_conv_abc", "user_a_conv_b_conv_c", "legacy-free-form-id")
ORPHANED = "user_7_conv_orphan"  # its session row is deleted by hand before adoption


def legacy_items(session_id: str) -> list[dict[str, Any]]:
    return [
        user(f"{session_id}: hello"),
        assistant(f"{session_id}: hi"),
        user(f"{session_id}: again"),
        assistant(f"{session_id}: sure"),
    ]


def query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql, params).fetchall()


def execute(db_path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


def snapshot(db_path: Path) -> list[Any]:
    with closing(sqlite3.connect(db_path)) as conn:
        return [
            conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("sqlite_master", "agent_sessions", "agent_messages")
        ]


async def write_legacy(db_path: Path) -> None:
    """Write the legacy database with the SDK's own session class only."""
    from agents import SQLiteSession

    for session_id in (*LEGACY_IDS, ORPHANED):
        session = SQLiteSession(session_id, db_path)
        try:
            await session.add_items(legacy_items(session_id))  # type: ignore[arg-type]
        finally:
            session.close()


@pytest.fixture
async def legacy_db(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.db"
    await write_legacy(path)
    execute(
        path,
        "UPDATE agent_sessions SET created_at = '2025-12-31 09:00:00', "
        "updated_at = '2026-01-01 10:00:00' WHERE session_id = 'user_42_conv_abc'",
        f"DELETE FROM agent_sessions WHERE session_id = '{ORPHANED}'",
        "UPDATE agent_messages SET created_at = '2025-06-0' || (id % 3 + 1) || ' 08:00:00' "
        f"WHERE session_id = '{ORPHANED}'",
        "PRAGMA user_version = 77",
    )
    assert query(path, "PRAGMA user_version") == [(77,)]
    assert not query(path, "SELECT name FROM sqlite_master WHERE name = 'agent_sessions_schema'")
    return path


# --- reading the adopted data ---------------------------------------------------------------


async def test_history_is_readable_through_agent_session(legacy_db: Path) -> None:
    with AgentSession("42", "abc", db_path=legacy_db) as session:
        assert session.session_id == "user_42_conv_abc"
        assert await session.get_items() == legacy_items("user_42_conv_abc")
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        for session_id in (*LEGACY_IDS, ORPHANED):
            assert await manager.get_items(session_id) == legacy_items(session_id), session_id


async def test_owners_filled_in_only_for_splittable_ids(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        owners = {
            session_id: (stats.user_id, stats.conversation_id, stats.message_count)
            for session_id in (*LEGACY_IDS, ORPHANED)
            for stats in [await manager.get_session_stats(session_id)]
        }
        by_user = [s.session_id for s in await manager.list_sessions("42")]
    assert owners == {
        "user_42_conv_abc": ("42", "abc", 4),
        "user_a_conv_b_conv_c": (None, None, 4),  # "_conv_" twice: ambiguous
        "legacy-free-form-id": (None, None, 4),
        ORPHANED: ("7", "orphan", 4),
    }
    assert by_user == ["user_42_conv_abc"]


async def test_sdk_timestamps_become_aware_utc(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        stats = await manager.get_session_stats("user_42_conv_abc")
    assert stats.created_at.utcoffset() == timedelta(0)
    assert stats.last_activity.utcoffset() == timedelta(0)
    # Naive SDK text read as UTC, not as local time: an hour's error would show here.
    assert stats.created_at == datetime(2025, 12, 31, 9, 0, tzinfo=UTC), stats.created_at
    assert stats.last_activity == datetime(2026, 1, 1, 10, 0, tzinfo=UTC), stats.last_activity


async def test_sdk_timestamps_convert_exactly(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        touched = await manager.get_session_stats("user_42_conv_abc")
        orphaned = await manager.get_session_stats(ORPHANED)
    found = [
        touched.created_at.isoformat(),
        touched.last_activity.isoformat(),
        orphaned.created_at.isoformat(),
        orphaned.last_activity.isoformat(),
    ]
    assert found == [
        "2025-12-31T09:00:00+00:00",
        "2026-01-01T10:00:00+00:00",
        "2025-06-01T08:00:00+00:00",
        "2025-06-03T08:00:00+00:00",
    ], found


async def test_messages_without_a_session_row_get_one(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        stats = await manager.get_session_stats(ORPHANED)
        listed = {s.session_id for s in await manager.list_sessions()}
    # The messages' created_at were set to 2025-06-01..03 08:00: MIN and MAX of them.
    assert stats.created_at == datetime(2025, 6, 1, 8, 0, tzinfo=UTC), stats.created_at
    assert stats.last_activity == datetime(2025, 6, 3, 8, 0, tzinfo=UTC), stats.last_activity
    assert listed == {*LEGACY_IDS, ORPHANED}
    orphans = query(
        legacy_db,
        "SELECT COUNT(*) FROM agent_messages "
        "WHERE session_id NOT IN (SELECT session_id FROM agent_sessions)",
    )
    assert orphans == [(0,)]


async def test_adopted_sessions_expire_like_the_rest(legacy_db: Path) -> None:
    # Idle since 2025/2026 by the SDK's timestamps; the real clock says it is later.
    clock = FakeClock(datetime(2026, 1, 5, tzinfo=UTC))
    async with SessionManager(legacy_db, max_messages=100, retention_days=7, clock=clock) as m:
        assert await m.cleanup_inactive_sessions(dry_run=True) == 1  # the orphaned one
        assert await m.cleanup_inactive_sessions() == 1
        clock.advance(days=365)
        assert await m.cleanup_inactive_sessions() == 3
    assert query(legacy_db, "SELECT COUNT(*) FROM agent_messages") == [(0,)]


async def test_schema_version_is_recorded_and_user_version_untouched(legacy_db: Path) -> None:
    with AgentSession("42", "abc", db_path=legacy_db) as session:
        await session.get_items()
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        await manager.get_session_count()
    versions = query(legacy_db, "SELECT version FROM agent_sessions_schema")
    assert versions == [(m.version,) for m in schema.MIGRATIONS], versions
    assert query(legacy_db, "PRAGMA user_version") == [(77,)]


async def test_agent_session_writes_to_an_adopted_session(legacy_db: Path) -> None:
    clock = FakeClock(datetime(2026, 2, 1, tzinfo=UTC))
    with AgentSession("42", "abc", db_path=legacy_db, max_messages=3, clock=clock) as session:
        await session.add_items([user("new turn"), assistant("new reply")])
        items = await session.get_items()
    # Pruning applies to the legacy items too: the newest turn that fits is kept.
    assert items == [user("new turn"), assistant("new reply")], items
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        stats = await manager.get_session_stats("user_42_conv_abc")
    assert stats.created_at == datetime(2025, 12, 31, 9, 0, tzinfo=UTC), "created_at moved"
    assert stats.last_activity == clock.now


# --- the SDK keeps working on the adopted file ----------------------------------------------


async def test_plain_sqlite_session_still_reads_and_writes(legacy_db: Path) -> None:
    from agents import SQLiteSession

    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        await manager.open()  # adopt

    # The SDK's CURRENT_TIMESTAMP has one-second resolution; the millisecond allows for the
    # conversion error covered by test_sdk_timestamps_convert_exactly.
    before = int(time.time()) - 0.001
    sdk = SQLiteSession("user_42_conv_abc", legacy_db)
    fresh = SQLiteSession("user_9_conv_new", legacy_db)
    try:
        assert await sdk.get_items() == legacy_items("user_42_conv_abc")
        await sdk.add_items([user("from the sdk")])  # type: ignore[list-item]
        await fresh.add_items([user("brand new")])  # type: ignore[list-item]
        assert (await sdk.get_items())[-1] == user("from the sdk")
    finally:
        sdk.close()
        fresh.close()
    after = time.time()

    with AgentSession("42", "abc", db_path=legacy_db) as session:
        assert (await session.get_items())[-1] == user("from the sdk")
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        touched = await manager.get_session_stats("user_42_conv_abc")
        new = await manager.get_session_stats("user_9_conv_new")
        listed = {s.session_id for s in await manager.list_sessions()}
    for stats in (touched, new):
        seconds = stats.last_activity.timestamp()
        assert before <= seconds <= after + 1, (stats.session_id, stats.last_activity)
    assert touched.created_at == datetime(2025, 12, 31, 9, 0, tzinfo=UTC)
    assert before <= new.created_at.timestamp() <= after + 1, new.created_at
    assert new.message_count == 1
    assert "user_9_conv_new" in listed, listed


# --- concurrency and versions ---------------------------------------------------------------


def _adopt_worker(path: str, index: int, barrier: Any, applied: Any, results: Any) -> None:
    """Open the legacy file in a fresh process, counting migrations that actually ran."""

    def counted(migration: schema.Migration) -> schema.Migration:
        def apply(conn: sqlite3.Connection) -> None:
            migration.apply(conn)
            with applied.get_lock():
                applied.value += 1

        return dataclasses.replace(migration, apply=apply)

    schema.MIGRATIONS = tuple(counted(m) for m in schema.MIGRATIONS)

    async def open_and_read() -> int:
        if index % 2 == 0:
            with AgentSession("42", "abc", db_path=path) as session:
                return len(await session.get_items())
        async with SessionManager(path, max_messages=100, retention_days=7) as manager:
            return (await manager.get_session_stats("user_42_conv_abc")).message_count

    try:
        barrier.wait(timeout=60)
        results.put((index, asyncio.run(open_and_read()), None))
    except Exception as exc:  # reported to the parent, which asserts there were none
        results.put((index, None, repr(exc)))


def test_four_processes_adopt_the_file_exactly_once(legacy_db: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    applied = context.Value("i", 0)
    results = context.Queue()
    processes = [
        context.Process(
            target=_adopt_worker, args=(str(legacy_db), index, barrier, applied, results)
        )
        for index in range(4)
    ]
    for process in processes:
        process.start()
    try:
        outcome = sorted(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert outcome == [(index, 4, None) for index in range(4)], outcome
    migrations = len(schema.MIGRATIONS)
    assert applied.value == migrations, f"{applied.value} migrations ran, not {migrations}"
    assert query(legacy_db, "SELECT version FROM agent_sessions_schema") == [
        (m.version,) for m in schema.MIGRATIONS
    ]
    assert query(legacy_db, "PRAGMA user_version") == [(77,)]
    columns = [row[1] for row in query(legacy_db, "PRAGMA table_info(agent_sessions)")]
    assert sorted(columns) == sorted(
        [
            "session_id",
            "created_at",
            "updated_at",
            "user_id",
            "conversation_id",
            "created_ts",
            "last_activity_ts",
            "late_call_row",
        ]
    ), columns


async def test_newer_schema_version_is_refused(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        await manager.open()
    execute(
        legacy_db,
        "INSERT INTO agent_sessions_schema (version, description) "
        f"VALUES ({schema.LATEST_VERSION + 1}, 'from the future')",
    )
    before = snapshot(legacy_db)
    with pytest.raises(StorageError, match="newer"):
        AgentSession("42", "abc", db_path=legacy_db)
    manager = SessionManager(legacy_db, max_messages=100, retention_days=7)
    try:
        with pytest.raises(StorageError, match=f"version {schema.LATEST_VERSION + 1}"):
            await manager.get_session_count()
    finally:
        await manager.close()
    assert snapshot(legacy_db) == before


async def test_newer_schema_version_error_names_the_database(legacy_db: Path) -> None:
    async with SessionManager(legacy_db, max_messages=100, retention_days=7) as manager:
        await manager.open()
    execute(
        legacy_db,
        "INSERT INTO agent_sessions_schema (version, description) "
        f"VALUES ({schema.LATEST_VERSION + 1}, 'x')",
    )
    with pytest.raises(StorageError) as info:
        AgentSession("42", "abc", db_path=legacy_db)
    assert info.value.path == str(legacy_db), info.value.path
    assert str(legacy_db) in str(info.value), str(info.value)


async def test_hand_built_ids_with_underscores_keep_their_history(tmp_path: Path) -> None:
    from agents import SQLiteSession

    path = tmp_path / "legacy.db"
    legacy = SQLiteSession("user_ada_lovelace_conv_trip-1", path)
    await legacy.add_items([{"role": "user", "content": "remember me"}])
    legacy.close()
    with AgentSession("ada_lovelace", "trip-1", db_path=path) as session:
        assert session.session_id == "user_ada_lovelace_conv_trip-1"
        assert await session.get_items() == [{"role": "user", "content": "remember me"}]
        await session.add_items([{"role": "user", "content": "still here"}])
    with AgentSession("ada_lovelace", "trip-2", db_path=path) as fresh:
        assert fresh.session_id == "user_ada%5Flovelace_conv_trip-2"  # new ones are encoded
    async with SessionManager(path, max_messages=100, retention_days=7) as manager:
        listed = [s.session_id for s in await manager.list_sessions("ada_lovelace")]
    assert listed == ["user_ada_lovelace_conv_trip-1"]


async def test_a_hand_built_id_that_is_also_ours_stays_with_its_author(tmp_path: Path) -> None:
    # "user_a%5Fb_conv_c" is what an app that built ids by hand wrote for user "a%5Fb", and
    # also get_session_id("a_b", "c"): user "a_b" must never read "a%5Fb"'s history.
    from agents import SQLiteSession

    path = tmp_path / "legacy.db"
    for session_id in ("user_a%5Fb_conv_c", "user_a_b_conv_c"):
        legacy = SQLiteSession(session_id, path)
        await legacy.add_items([user(f"written as {session_id}")])  # type: ignore[list-item]
        legacy.close()
    async with SessionManager(path, max_messages=100, retention_days=7) as manager:
        owners = {
            s.session_id: (s.user_id, s.conversation_id) for s in await manager.list_sessions()
        }
    assert owners == {"user_a%5Fb_conv_c": ("a%5Fb", "c"), "user_a_b_conv_c": ("a_b", "c")}
    with AgentSession("a_b", "c", db_path=path) as session:
        assert session.session_id == "user_a_b_conv_c"  # its own hand-built id
        assert await session.get_items() == [user("written as user_a_b_conv_c")]
    with AgentSession("a%5Fb", "c", db_path=path) as session:
        assert session.session_id == "user_a%5Fb_conv_c"  # its own hand-built id
        assert await session.get_items() == [user("written as user_a%5Fb_conv_c")]

    execute(path, "DELETE FROM agent_sessions WHERE session_id = 'user_a_b_conv_c'")
    with pytest.raises(InvalidIdentifierError, match=r"user_a%5Fb_conv_c.*belongs.*'a%5Fb'"):
        AgentSession("a_b", "c", db_path=path)
    rows = query(path, "SELECT session_id, COUNT(*) FROM agent_messages GROUP BY session_id")
    assert rows == [("user_a%5Fb_conv_c", 1), ("user_a_b_conv_c", 1)], "something was written"


async def test_a_session_row_without_owner_is_claimed_by_its_pair(tmp_path: Path) -> None:
    # A plain SQLiteSession sharing the file may create or recreate (after its own
    # clear_session) the row of one of our ids: it has no owner, and the pair claims it.
    from agents import SQLiteSession

    path = tmp_path / "shared.db"
    with AgentSession("alice smith", "c1", db_path=path) as ours:
        await ours.add_items([user("ours")])
        sdk = SQLiteSession(ours.session_id, path)
        await sdk.clear_session()
        await sdk.add_items([user("the SDK's")])  # type: ignore[list-item]
        sdk.close()
    assert query(path, "SELECT user_id FROM agent_sessions") == [(None,)]
    with AgentSession("alice smith", "c1", db_path=path) as again:
        assert await again.get_items() == [user("the SDK's")]
        await again.add_items([user("claimed")])
    assert query(path, "SELECT user_id, conversation_id FROM agent_sessions") == [
        ("alice smith", "c1")
    ]


async def test_a_version_2_database_is_upgraded_and_its_sessions_rechecked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    with closing(schema.connect(path)):
        pass
    # Version 2 as it was released: its SDK-write trigger only recorded activity, and a
    # NULL late_call_row meant "no late answer".
    execute(
        path,
        "DELETE FROM agent_sessions_schema WHERE version >= 3",
        "DROP TRIGGER agent_sessions_sdk_touch",
        "CREATE TRIGGER agent_sessions_sdk_touch AFTER UPDATE OF updated_at ON agent_sessions "
        "BEGIN UPDATE agent_sessions SET last_activity_ts = 1 WHERE session_id = "
        "NEW.session_id; END",
        "INSERT INTO agent_sessions (session_id, late_call_row, last_activity_ts) "
        "VALUES ('s', 0, 1)",
    )
    with closing(schema.connect(path)) as conn:
        assert schema.schema_version(conn) == schema.LATEST_VERSION
        conn.execute("UPDATE agent_sessions SET updated_at = '2026-01-01 00:00:00'")
        row = conn.execute("SELECT late_call_row, last_activity_ts FROM agent_sessions").fetchone()
    assert row == (None, datetime(2026, 1, 1, tzinfo=UTC).timestamp())


async def test_a_version_3_database_gets_turn_locks(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("before the upgrade")])
    close_idle_connections()  # the next open migrates, as in a fresh process
    # Version 3 as it was released: no turn lock table.
    execute(
        path,
        "DELETE FROM agent_sessions_schema WHERE version >= 4",
        f"DROP TABLE {schema.TURN_LOCKS_TABLE}",
    )
    with AgentSession("ada", "c1", db_path=path) as session:
        assert await session.get_items() == [user("before the upgrade")]
    assert query(path, "SELECT MAX(version) FROM agent_sessions_schema") == [
        (schema.LATEST_VERSION,)
    ]
    with closing(schema.connect(path)) as conn, connection.write_transaction(conn):
        assert sql.take_turn_lock(conn, "user_ada_conv_c1", "me", 1.0, 31.0)
        assert not sql.take_turn_lock(conn, "user_ada_conv_c1", "other", 30.0, 60.0)
        assert sql.take_turn_lock(conn, "user_ada_conv_c1", "other", 31.0, 61.0)
