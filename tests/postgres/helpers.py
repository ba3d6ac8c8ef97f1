"""Helpers for the PostgreSQL tests: raw SQL beside the backend, item batches."""

from __future__ import annotations

from typing import Any

import psycopg

from agent_sessions.backends.base import Backend, SessionKey
from agent_sessions.codec import encode_items


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection that, like the backend's, prepares nothing (PgBouncer)."""
    return await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None)


async def query(
    target: str | psycopg.AsyncConnection[Any], statement: str, params: Any = None
) -> list[Any]:
    """Run one statement (on a new connection, given a URL) and return its rows."""
    if isinstance(target, str):
        async with await connect(target) as conn:
            return await query(conn, statement, params)
    cursor = await target.execute(statement, params)
    return await cursor.fetchall() if cursor.description is not None else []


T0 = 1_780_000_000.0
"""A fixed time (2026-05-28), POSIX seconds: tests pass times, the backend never reads a clock."""


async def append(
    backend: Backend,
    session_id: str,
    items: list[dict[str, Any]],
    *,
    now: float = T0,
    max_items: int = 1000,
    user_id: str | None = "u",
    conversation_id: str | None = "c",
) -> int:
    """``append_items`` with the payloads the codec makes; returns the items pruned."""
    owner = SessionKey(session_id, user_id, conversation_id)
    return await backend.append_items(owner, items, encode_items(items), now, max_items)
