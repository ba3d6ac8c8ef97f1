"""The candidates, behind one async interface: a ``Store`` per database file opens sessions.

Every session object offers ``await get_items(limit)``, ``await add_items(items)`` and
``close()`` (sync for the SQLiteSession family, async for the others: use ``close_session``).
The benchmarks call the candidates' own methods directly, so no adapter sits in the timed path
except for the baselines, which are the adapter.
"""

from __future__ import annotations

import inspect
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent_sessions.backends import base
from agent_sessions.backends.sqlite import connection, schema, sql
from agent_sessions.ids import get_session_id

MAX_MESSAGES = 200
NO_PRUNE = 10**9

ALL = ("agent", "sdk", "sdk_async", "baseline_prune", "baseline_noprune")
DESCRIPTIONS = {
    "agent": f"agent_sessions.AgentSession(max_messages={MAX_MESSAGES}) on a file",
    "sdk": "agents.SQLiteSession(session_id, db_path=file)",
    "sdk_async": "agents.extensions.memory.AsyncSQLiteSession(session_id, db_path=file)",
    "baseline_prune": "plain sqlite3 in the event-loop thread, one connection per file, "
    f"sql.append_items(max_items={MAX_MESSAGES}) / sql.read_items",
    "baseline_noprune": "as baseline_prune, max_items=10**9 (never prunes)",
}


class BaselineSession:
    """The library's own statements on one shared connection, run in the event-loop thread."""

    def __init__(
        self, conn: sqlite3.Connection, user_id: str, conversation_id: str, max_items: int
    ):
        self.session_id = get_session_id(user_id, conversation_id)
        self._conn = conn
        self._key = base.SessionKey(self.session_id, user_id, conversation_id)
        self._max_items = max_items

    async def get_items(self, limit: int | None = None) -> list[Any]:
        return sql.read_items(self._conn, self.session_id, limit).items

    async def add_items(self, items: list[Any]) -> None:
        payloads = [json.dumps(item) for item in items]
        with connection.write_transaction(self._conn):
            sql.append_items(self._conn, self._key, items, payloads, time.time(), self._max_items)

    def close(self) -> None:
        pass  # the connection belongs to the store


class Store:
    """Opens sessions of one candidate on one database file."""

    def __init__(self, candidate: str, path: Path) -> None:
        if candidate not in ALL:
            raise ValueError(f"unknown candidate {candidate!r}; choose from {', '.join(ALL)}")
        self.candidate = candidate
        self.path = path
        self._conn: sqlite3.Connection | None = None
        if candidate.startswith("baseline"):
            self._conn = schema.connect(path)

    def open(self, user_id: str, conversation_id: str) -> Any:
        """Create the candidate's session object (what an app does per request)."""
        if self.candidate == "agent":
            from agent_sessions import AgentSession

            return AgentSession(
                user_id, conversation_id, db_path=self.path, max_messages=MAX_MESSAGES
            )
        session_id = get_session_id(user_id, conversation_id)
        if self.candidate == "sdk":
            from agents import SQLiteSession

            return SQLiteSession(session_id, db_path=self.path)
        if self.candidate == "sdk_async":
            from agents.extensions.memory import AsyncSQLiteSession

            return AsyncSQLiteSession(session_id, db_path=self.path)
        assert self._conn is not None
        max_items = MAX_MESSAGES if self.candidate == "baseline_prune" else NO_PRUNE
        return BaselineSession(self._conn, user_id, conversation_id, max_items)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def close_session(session: Any) -> None:
    """Close a session whether its ``close`` is sync or async."""
    result = session.close()
    if inspect.isawaitable(result):
        await result


def create_file(candidate: str, path: Path) -> None:
    """Create the candidate's schema in ``path`` (so timed code never pays for it)."""
    if candidate == "sdk":
        from agents import SQLiteSession

        SQLiteSession("bench_init", db_path=path).close()
    elif candidate != "sdk_async":  # AsyncSQLiteSession creates its tables on first use
        schema.connect(path).close()


def remove_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
