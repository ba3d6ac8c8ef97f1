"""Results the library returns: frozen models, the same from every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
