"""The SQLite search index beside what the contract suite checks: the SDK's own writes, upgrades."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from agents import SQLiteSession

from agent_sessions import AgentSession, SessionManager
from agent_sessions.backends.sqlite import schema
from agent_sessions.backends.sqlite.engine import close_idle_connections
from tests.items import assistant, user


def indexed(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM agent_sessions_search")]


async def found(path: Path, query: str) -> list[str]:
    async with SessionManager(path) as manager:
        return [hit.session_id for hit in await manager.search_sessions("ada", query)]


async def test_a_plain_sqlite_session_deleting_keeps_the_index_in_step(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("kestrel question"), assistant("falcon answer")])  # type: ignore[list-item]
        sid = session.session_id
    assert await found(path, "falcon") == [sid]
    sdk = SQLiteSession(sid, path)
    try:
        await sdk.pop_item()  # the SDK's own DELETE of the newest row
        assert indexed(path) == ["kestrel question"]
        assert await found(path, "falcon") == []
        await sdk.clear_session()
    finally:
        sdk.close()
    assert indexed(path) == []
    assert await found(path, "kestrel") == []


async def test_a_version_4_database_gets_the_index(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("before the upgrade")])  # type: ignore[list-item]
    close_idle_connections()  # the next open migrates, as in a fresh process
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM agent_sessions_schema WHERE version > 4")
        conn.execute("DROP TRIGGER agent_messages_search_delete")
        conn.execute("DROP TABLE agent_sessions_search")
        conn.execute("DROP TABLE agent_sessions_search_state")
        conn.execute("ALTER TABLE agent_messages DROP COLUMN search_skip")
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("after the upgrade")])  # type: ignore[list-item]
        sid = session.session_id
        # History from before is not indexed (documented); it is still deleted cleanly.
        assert await found(path, "upgrade") == [sid]
        assert indexed(path) == ["after the upgrade"]
        await session.clear_session()
    assert indexed(path) == []
    with closing(schema.connect(path)) as conn:
        assert schema.schema_version(conn) == schema.LATEST_VERSION


# --- deferred indexing (migration 9) ---------------------------------------------------------


def watermark(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (through,) = conn.execute(
            "SELECT indexed_through FROM agent_sessions_search_state"
        ).fetchone()
    return int(through)


def max_row_id(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM agent_messages").fetchone()[0])


async def test_a_write_indexes_nothing_and_the_next_search_finds_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("walrus question"), assistant("walrus answer")])  # type: ignore[list-item]
        sid = session.session_id
        assert indexed(path) == []  # the write path stores nothing for search
        assert watermark(path) < max_row_id(path)
        assert await found(path, "walrus") == [sid]
        assert sorted(indexed(path)) == ["walrus answer", "walrus question"]
        assert watermark(path) == max_row_id(path)
        # Every write is found by the very next search, however many searches came before.
        for n in range(3):
            await session.add_items([user(f"heron{n} again")])  # type: ignore[list-item]
            assert await found(path, f"heron{n}") == [sid]


async def test_deleted_pending_rows_are_never_indexed(tmp_path: Path) -> None:
    from agent_sessions.text import item_text

    path = tmp_path / "s.db"
    with AgentSession("ada", "c1", db_path=path, max_messages=3) as session:
        await session.add_items([user("ibis first"), assistant("ibis reply")])  # type: ignore[list-item]
        await session.add_items([user("later one"), assistant("later two")])  # type: ignore[list-item]
        await session.add_items([user("magpie pending")])  # type: ignore[list-item]
        await session.pop_item()  # deleted while pending: no entry was ever made
        sid = session.session_id
        kept = [item_text(item) for item in await session.get_items()]
    assert "ibis first" not in kept  # pruning deleted pending rows
    assert "later two" in kept
    assert indexed(path) == []
    assert await found(path, "ibis") == []
    assert await found(path, "magpie") == []
    assert await found(path, "later") == [sid]
    assert sorted(indexed(path)) == sorted(text for text in kept if text)


async def test_the_watermark_survives_a_restart_and_nothing_is_indexed_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("osprey one"), assistant("osprey two")])  # type: ignore[list-item]
        sid = session.session_id
    assert await found(path, "osprey") == [sid]
    through = watermark(path)
    close_idle_connections()  # as in a new process
    assert watermark(path) == through
    assert await found(path, "osprey") == [sid]
    assert sorted(indexed(path)) == ["osprey one", "osprey two"]
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("puffin three")])  # type: ignore[list-item]
    close_idle_connections()
    assert await found(path, "puffin") == [sid]
    assert sorted(indexed(path)) == ["osprey one", "osprey two", "puffin three"]


WRITER = """
import asyncio, sys
from agent_sessions import AgentSession

async def main():
    with AgentSession("ada", sys.argv[2], db_path=sys.argv[1]) as session:
        await session.add_items([{"role": "user", "content": sys.argv[3]}])
    print(session.session_id)

asyncio.run(main())
"""


async def test_a_row_another_process_wrote_is_found_by_the_next_search(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "s.db"
    async with SessionManager(path) as manager:
        assert await manager.search_sessions("ada", "anything") == []
        for n in range(2):
            done = subprocess.run(
                [sys.executable, "-c", WRITER, str(path), f"c{n}", f"cormorant{n} here"],
                capture_output=True,
                text=True,
                check=True,
            )
            sid = done.stdout.strip()
            hits = await manager.search_sessions("ada", f"cormorant{n}")
            assert [hit.session_id for hit in hits] == [sid]


async def test_rows_written_with_search_off_stay_out_after_later_searches(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with AgentSession("ada", "off", db_path=path, search_index=False) as session:
        await session.add_items([user("lemur hidden")])  # type: ignore[list-item]
    with AgentSession("ada", "on", db_path=path) as session:
        await session.add_items([user("lemur shown")])  # type: ignore[list-item]
        sid = session.session_id
    assert await found(path, "lemur") == [sid]
    assert indexed(path) == ["lemur shown"]
    assert watermark(path) == max_row_id(path)


async def test_the_cleanup_sweep_indexes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("bittern swept")])  # type: ignore[list-item]
    async with SessionManager(path, retention_days=7) as manager:
        assert await manager.cleanup_inactive_sessions() == 0
    assert indexed(path) == ["bittern swept"]
    assert watermark(path) == max_row_id(path)


async def test_a_plain_sqlite_session_writing_is_indexed_later(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("first")])  # type: ignore[list-item]
        sid = session.session_id
    sdk = SQLiteSession(sid, path)
    try:
        await sdk.add_items([user("grebe by the sdk")])  # type: ignore[list-item]
    finally:
        sdk.close()
    assert await found(path, "grebe") == [sid]


async def test_sealed_rows_are_indexed_only_with_the_key_and_the_plaintext_opt_in(
    tmp_path: Path,
) -> None:
    from agent_sessions import AgentSessionSettings, generate_key

    key = generate_key()
    path = tmp_path / "s.db"
    opted = AgentSessionSettings(encryption_key=key, search_plaintext_index=True)
    with AgentSession("ada", "plain-off", db_path=path, encryption_key=key) as session:
        await session.add_items([user("stork sealed unindexed")])  # type: ignore[list-item]
    with AgentSession("ada", "opted", db_path=path, settings=opted) as session:
        await session.add_items([user("stork sealed indexed")])  # type: ignore[list-item]
        sid = session.session_id
    # A manager without the key cannot open them: they are passed over, never indexed.
    with AgentSession("ada", "x", db_path=path, settings=opted) as session:
        pass
    async with SessionManager(path, settings=opted) as manager:
        hits = await manager.search_sessions("ada", "stork")
    assert [hit.session_id for hit in hits] == [sid]
    assert indexed(path) == ["stork sealed indexed"]


async def test_a_sealed_row_is_not_indexed_by_a_manager_without_the_opt_in(
    tmp_path: Path,
) -> None:
    from agent_sessions import AgentSessionSettings, generate_key

    key = generate_key()
    path = tmp_path / "s.db"
    opted = AgentSessionSettings(encryption_key=key, search_plaintext_index=True)
    with AgentSession("ada", "opted", db_path=path, settings=opted) as session:
        await session.add_items([user("crane sealed")])  # type: ignore[list-item]
    async with SessionManager(path) as manager:  # no key: the sealed row cannot be indexed
        assert await manager.search_sessions("ada", "crane") == []
    assert indexed(path) == []


async def test_an_adopted_table_without_autoincrement_never_reuses_an_indexed_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE agent_sessions (session_id TEXT PRIMARY KEY, "
            "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
            "updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
        )
        conn.execute(
            "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, "
            "message_data TEXT NOT NULL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
        )
    with AgentSession("ada", "c1", db_path=path) as session:
        await session.add_items([user("one"), user("swift two")])  # type: ignore[list-item]
        sid = session.session_id
        assert await found(path, "swift") == [sid]
        await session.pop_item()  # the newest row: its id is free again without AUTOINCREMENT
        await session.add_items([user("swallow three")])  # type: ignore[list-item]
        assert await found(path, "swallow") == [sid]
        assert await found(path, "swift") == []
    assert sorted(indexed(path)) == ["one", "swallow three"]


async def test_a_copied_session_is_found_in_the_copy_and_a_reload_leaves_no_stale_entry(
    tmp_path: Path,
) -> None:
    from agent_sessions.copying import copy_database

    source, copy = tmp_path / "a.db", tmp_path / "b.db"
    with AgentSession("ada", "c1", db_path=source) as session:
        await session.add_items([user("pelican copied")])  # type: ignore[list-item]
        sid = session.session_id
    await copy_database(source, copy)
    assert await found(copy, "pelican") == [sid]
    with AgentSession("ada", "c1", db_path=source) as session:
        await session.clear_session()
        await session.add_items([user("albatross instead")])  # type: ignore[list-item]
    await copy_database(source, copy)  # replaces the copy's session: its entries go with it
    assert await found(copy, "pelican") == []
    assert await found(copy, "albatross") == [sid]
    assert indexed(copy) == ["albatross instead"]


async def test_expired_sessions_do_not_crowd_out_the_candidates(tmp_path: Path) -> None:
    # More matching messages than a search ranks, all in a session that has expired: the
    # active conversation with one match is still found.
    from datetime import UTC, datetime

    from tests.conftest import FakeClock

    path = tmp_path / "crowd.db"
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    with AgentSession("u", "old", db_path=path, clock=clock, max_messages=10_000) as old:
        await old.add_items([user("meet in oslo")])
    with AgentSession("u", "busy", db_path=path, clock=clock, max_messages=10_000) as busy:
        await busy.add_items([user(f"oslo again {n}") for n in range(2100)])
    clock.advance(days=8)  # both idle past the default 7 days: expired
    with AgentSession("u", "old", db_path=path, clock=clock, max_messages=10_000) as old:
        await old.add_items([user("oslo once more")])  # starts "old" afresh, active
    async with SessionManager(path, clock=clock) as manager:
        hits = await manager.search_sessions("u", "oslo")
    assert [hit.conversation_id for hit in hits] == ["old"]
