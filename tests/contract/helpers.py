"""What the contract tests share: writing through a session, and raw rows of either backend.

Raw SQL is used only to arrange what the library cannot write itself (corrupt rows) and to
count stored rows behind its back; everything under test goes through the public API.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from agent_sessions import get_agent_session
from agent_sessions.backends import is_url
from tests.conftest import FakeClock

Item = dict[str, Any]


def is_postgres(target: str) -> bool:
    return is_url(target)


async def write(
    target: str,
    user_id: str,
    conversation_id: str,
    items: list[Item],
    *,
    clock: FakeClock | None = None,
    max_messages: int = 1000,
    retention: str | None = None,
) -> str:
    """Add ``items`` in one ``add_items`` through a fresh session; return its session id."""
    with get_agent_session(
        user_id,
        conversation_id,
        db_path=target,
        max_messages=max_messages,
        clock=clock,
        retention=retention,
    ) as session:
        await session.add_items(items)  # type: ignore[arg-type]
        return session.session_id


def pg_query(target: str, statement: str, params: Any = None) -> list[Any]:
    import psycopg

    with psycopg.connect(target, autocommit=True, prepare_threshold=None) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description is not None else []


def _sqlite(target: str, statement: str, params: Any = ()) -> list[Any]:
    with closing(sqlite3.connect(target)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def sqlite_query(target: str, statement: str, params: Any = ()) -> list[Any]:
    return _sqlite(target, statement, params)


def stored_rows(target: str) -> dict[str, int]:
    """Item rows per session id, corrupt ones and any left without a session row included."""
    if is_postgres(target):
        rows = pg_query(target, "SELECT session_id, count(*) FROM agent_sessions_item GROUP BY 1")
    else:
        rows = _sqlite(target, "SELECT session_id, COUNT(*) FROM agent_messages GROUP BY 1")
    return {str(session_id): int(count) for session_id, count in rows}


def insert_corrupt_rows(target: str, session_id: str, payloads: list[str]) -> None:
    """Append rows that do not decode as items to an existing session, newest last."""
    for payload in payloads:
        if is_postgres(target):
            pg_query(
                target,
                "WITH s AS (UPDATE agent_sessions_session SET next_seq = next_seq + 1 "
                "WHERE session_id = %(sid)s RETURNING next_seq - 1 AS seq) "
                "INSERT INTO agent_sessions_item (session_id, seq, message_data, is_user) "
                "SELECT %(sid)s, seq, %(data)s, false FROM s",
                {"sid": session_id, "data": payload},
            )
        else:
            _sqlite(
                target,
                "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                (session_id, payload),
            )
