"""Helpers for the PostgreSQL tests: raw SQL beside the backend, item batches."""

from __future__ import annotations

from typing import Any

import psycopg

from agent_sessions.backends.base import Backend, SessionKey
from agent_sessions.codec import encode_items


async def query(url: str, statement: str, params: Any = None) -> list[Any]:
    """Run one statement on a connection of its own (autocommit) and return its rows."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(statement, params)
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
