"""The private SQLiteSession hooks AgentSession relies on, named in one place.

If an SDK upgrade renames or reshapes any of these, this file fails first and says which.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

from agents import SQLiteSession

from agent_sessions import AgentSession

# name -> parameters after self/cls, as SQLiteSession 0.24 defines them
RELIED_ON = {
    "_configure_connection": ["conn"],  # staticmethod: pragmas on every new connection
    "_init_db_for_connection": ["conn"],  # schema set-up, once per object
    "_insert_items": ["conn", "items"],  # SDK paths that write inside their own transaction
    "_locked_connection": [],  # the per-file lock plus this thread's connection
    "_write_connection": [],  # the same, rolling back on error
    "_check_not_closed": [],
}


def test_sdk_still_has_the_hooks_agent_session_overrides_or_calls() -> None:
    for name, params in RELIED_ON.items():
        hook = inspect.getattr_static(SQLiteSession, name, None)
        assert hook is not None, f"SQLiteSession.{name} is gone: AgentSession relies on it"
        function = hook.__func__ if isinstance(hook, staticmethod) else hook
        found = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
        assert found == params, f"SQLiteSession.{name}{found} changed; expected {params}"
    assert isinstance(inspect.getattr_static(SQLiteSession, "_configure_connection"), staticmethod)


def test_sdk_init_calls_the_schema_and_pragma_hooks(tmp_path: Path) -> None:
    calls: list[str] = []

    class Probe(AgentSession):
        @staticmethod
        def _configure_connection(conn: sqlite3.Connection) -> None:
            calls.append("configure")
            AgentSession._configure_connection(conn)

        def _init_db_for_connection(self, conn: sqlite3.Connection) -> None:
            calls.append("init")
            super()._init_db_for_connection(conn)

    with Probe("u", "c", db_path=tmp_path / "db.sqlite", max_messages=5) as session:
        assert session._closed is False  # SQLiteSession keeps its closed flag here
    assert calls[:2] == ["configure", "init"], calls


async def test_sdk_paths_through_insert_items_prune_too(tmp_path: Path) -> None:
    # _insert_items is what the SDK's own transactional writers call; it must prune as well.
    with AgentSession("u", "c", db_path=tmp_path / "db.sqlite", max_messages=2) as session:
        with session._write_connection() as conn:
            session._insert_items(conn, [{"role": "user", "content": str(i)} for i in range(5)])
            conn.commit()
        assert [item["content"] for item in await session.get_items()] == ["3", "4"]
