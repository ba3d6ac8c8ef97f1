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
