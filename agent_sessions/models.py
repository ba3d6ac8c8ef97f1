"""Results the library returns: frozen models, the same from every backend."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class SessionStats(BaseModel):
    """What is stored for one session."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    user_id: str | None
    """``None`` for an adopted session whose id cannot be split unambiguously."""
    conversation_id: str | None
    message_count: int
    """Stored items that decode as items."""
    corrupt_items: int
    """Stored rows that could not be decoded (skipped on read)."""
    created_at: datetime
    last_activity: datetime


class SearchHit(BaseModel):
    """One conversation found by ``SessionManager.search_sessions``: its best-matching message."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    conversation_id: str | None
    title: str | None
    """The session's title, where one is stored."""
    snippet: str
    """A short excerpt of the best-matching message, around the words found."""
    rank: float
    """Relevance of that message, higher is better (SQLite: ``-bm25``; PostgreSQL:
    ``ts_rank``). Compare ranks within one result list only, not across backends."""
    last_activity: datetime
