"""Results the library returns: frozen models, the same from every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SessionStats(BaseModel):
    """What is stored for one session."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    user_id: str | None
    """``None`` for an adopted session whose id cannot be split unambiguously."""
    conversation_id: str | None
    message_count: int
    """Stored items that decode as items (in listings: stored rows, not decoded)."""
    corrupt_items: int | None
    """Stored rows that could not be decoded (skipped on read); ``None`` in listings, which
    count rows without decoding them."""
    created_at: datetime
    last_activity: datetime
    title: str | None = None
    """The conversation's title: set by the app, else its first user message, shortened."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """The small JSON object the app keeps with the conversation."""


class SessionPage(list[SessionStats]):
    """One page of ``SessionManager.list_sessions``: a list, plus the cursor of the next page."""

    next_cursor: str | None
    """Pass as ``cursor=`` for the next page; ``None`` on the last page."""

    def __init__(self, sessions: list[SessionStats], next_cursor: str | None) -> None:
        super().__init__(sessions)
        self.next_cursor = next_cursor


class ConversationExport(BaseModel):
    """One conversation of ``SessionManager.export_user``: its stats and its items."""

    model_config = ConfigDict(frozen=True)

    session: SessionStats
    items: list[dict[str, Any]]


SweepOutcome = Literal["running", "ok", "failed"]
"""``running``: started and not finished (still running, or its process died)."""

Threshold = Literal["average_items", "active_sessions"]
"""A monitoring threshold of the settings (``warn_average_items``, ``warn_active_sessions``)."""


class SweepRecord(BaseModel):
    """One cleanup sweep, as recorded in the database (visible to every process)."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime
    finished_at: datetime | None
    """``None`` while ``outcome`` is ``running``."""
    outcome: SweepOutcome
    sessions_deleted: int
    """Sessions deleted (by a failed sweep: before it failed)."""
    error: str | None
    """Why a failed sweep failed: the error's type and first line, shortened."""


class HealthReport(BaseModel):
    """What ``SessionManager.health()`` found: size, counts, the last sweep, write latency."""

    model_config = ConfigDict(frozen=True)

    database: str
    """The file's path, or the URL without its password."""
    database_bytes: int | None
    """SQLite: the file with its ``-wal`` and ``-shm``; PostgreSQL: our tables and indexes."""
    sessions: int
    items: int
    """Stored rows, corrupt ones included."""
    active_sessions: int
    """Sessions active within the retention period."""
    average_items: float
    """``items / sessions``; ``0.0`` without sessions."""
    oldest_activity: datetime | None
    """The least recent session's last activity; ``None`` without sessions."""
    last_sweep: SweepRecord | None
    """The most recently started cleanup sweep, by any process."""
    write_latency_p50: float | None
    """Seconds of this process's recent ``add_items`` calls; ``None`` before the first."""
    write_latency_p95: float | None
    write_samples: int
    """How many writes the percentiles are taken over (the most recent ones)."""
    thresholds_crossed: tuple[Threshold, ...]
    """The monitoring thresholds the counts are above (a warning is logged once for each)."""


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
