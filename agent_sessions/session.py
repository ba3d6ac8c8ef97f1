"""``AgentSession``: the SDK's ``SQLiteSession``, keyed by user and conversation, bounded."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agents import SQLiteSession
from agents.items import TResponseInputItem
from agents.memory import SessionSettings
from agents.memory.session_settings import coerce_session_settings, resolve_session_limit

from . import codec
from .backends.base import Backend, SessionKey
from .backends.sqlite import SQLiteBackend
from .backends.sqlite.schema import MESSAGES_TABLE, SESSIONS_TABLE
from .clock import Clock, now_timestamp, utc_now
from .errors import AgentSessionsError, InvalidItemError, SessionClosedError
from .ids import get_session_id, normalize_identifier, optional_limit, positive_int
from .settings import AgentSessionSettings, resolve_setting

logger = logging.getLogger("agent_sessions")


class BoundedSessionMixin:
    """The session protocol over a ``Backend``: what every session class of ours shares.

    A subclass sets ``session_id``, ``max_messages``, ``session_settings``, ``_backend``,
    ``_key``, ``_clock`` and ``_closed``.
    """

    session_id: str
    max_messages: int
    session_settings: SessionSettings | None
    _backend: Backend
    _key: SessionKey
    _clock: Clock
    _closed: bool

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the history, oldest first; with ``limit``, only the newest ``limit`` items.

        Rows that cannot be decoded as items are skipped and logged. As in the SDK, ``None``
        or a negative limit reads everything.

        Raises:
            InvalidArgumentError: if ``limit`` is neither ``None`` nor an int.
        """
        session_limit = optional_limit(resolve_session_limit(limit, self.session_settings))
        decoded = await self._open_backend().read_items(self.session_id, session_limit)
        if decoded.corrupt_row_ids:
            logger.warning(
                "session %r: skipped %d corrupt row(s) (ids %s)",
                self.session_id,
                len(decoded.corrupt_row_ids),
                decoded.corrupt_row_ids[:10],
            )
        return decoded.items  # type: ignore[return-value]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items, then prune to ``max_messages``, in one transaction.

        A tool output whose call is no longer stored (an approval answered after pruning
        removed the waiting call) is left out with a warning: the model would reject it.

        Raises:
            InvalidItemError: (also a ``TypeError``) if ``items`` is not a list (or iterable)
                of JSON-serialisable dicts; nothing is written.
            StorageError: (a subclass) if the database fails; nothing is written.
        """
        backend = self._open_backend()
        if not items:
            return
        if not isinstance(items, list):
            items = _as_item_list(items)
        payloads = codec.encode_items(items)
        now = now_timestamp(self._clock)
        pruned = await backend.append_items(self._key, items, payloads, now, self.max_messages)
        if pruned:
            logger.debug("session %r: pruned %d item(s)", self.session_id, pruned)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item, or ``None`` if the session is empty."""
        now = now_timestamp(self._clock)
        item = await self._open_backend().pop_item(self.session_id, now)
        return item  # type: ignore[return-value]

    async def clear_session(self) -> None:
        """Delete every item of this session and its session row."""
        await self._open_backend().delete_session(self.session_id)

    def _open_backend(self) -> Backend:
        if self._closed:
            # The SDK's own wording too: code written for SQLiteSession may match it.
            raise SessionClosedError(
                f"session {self.session_id!r} is closed (SQLiteSession is closed)"
            )
        return self._backend


class AgentSession(BoundedSessionMixin, SQLiteSession):
    """Persistent, bounded conversation history for one user's conversation.

    Pass it as ``session=`` to ``Runner.run``; the agent then sees earlier turns, across
    requests and restarts. After every ``add_items``, in the same transaction, the oldest
    items are pruned so at most ``max_messages`` remain, cutting only where the kept history
    is valid model input (see ``agent_sessions.pruning``).

    Attributes:
        user_id: The user's id, as a string.
        conversation_id: The conversation's id, as a string.
        session_id: ``get_session_id(user_id, conversation_id)``.
        max_messages: How many items are kept after each write.
    """

    _backend: SQLiteBackend

    def __init__(
        self,
        user_id: str | uuid.UUID,
        conversation_id: str | uuid.UUID,
        *,
        db_path: str | Path | None = None,
        max_messages: int | None = None,
        settings: AgentSessionSettings | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Open (creating if needed) the session's database.

        Args:
            user_id: The user's id (``uuid.UUID`` or a printable string, at most 128 chars).
            conversation_id: The conversation's id, with the same rules.
            db_path: SQLite file; defaults to the settings' ``db_path``. ``":memory:"`` keeps
                everything in this object only.
            max_messages: Items kept after each write; defaults to the settings'.
            settings: Settings to use instead of ``get_settings()``.
            session_settings: The SDK's ``SessionSettings`` (e.g. a read ``limit``).
            clock: Returns the current aware datetime; activity times are taken from it.

        Raises:
            InvalidIdentifierError: if an id is unusable, or its session id is held in an
                adopted database by a session of another owner.
            InvalidArgumentError: if ``max_messages`` is not a positive integer, ``db_path``
                is not a path, or ``settings`` is not an ``AgentSessionSettings``.
            TypeError: if ``session_settings`` has unknown fields (the SDK's own check).
            StorageError: (a subclass) naming ``db_path`` if it cannot be opened.
        """
        user = normalize_identifier(user_id, "user_id")
        conversation = normalize_identifier(conversation_id, "conversation_id")
        session_id = get_session_id(user, conversation)
        self.user_id = user
        self.conversation_id = conversation
        self.max_messages = positive_int(
            resolve_setting(max_messages, "max_messages", settings), "max_messages"
        )
        backend = SQLiteBackend(resolve_setting(db_path, "db_path", settings))
        # SQLiteSession.__init__ is deliberately not called: it opens a connection and checks
        # the schema for every object (about 2 ms). The attributes it documents are set here
        # and every method it implements is overridden, on a shared connection instead.
        self.db_path = backend.path
        self.sessions_table = SESSIONS_TABLE
        self.messages_table = MESSAGES_TABLE
        # The SDK's coercion and its errors (TypeError for unknown fields), as in SQLiteSession.
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._clock = clock or utc_now
        self._closed = False
        self._backend = backend
        # Opening here makes a bad path fail at construction, naming it.
        self.session_id = backend.open_session(user, conversation, session_id)
        self._key = SessionKey(self.session_id, user, conversation)

    def close(self) -> None:
        """Mark the session closed; it cannot be used afterwards. Idempotent.

        File connections are shared by every session on the file and stay open for the next
        one (see ``agent_sessions.backends.sqlite.engine``); an in-memory database is
        discarded.
        """
        self._closed = True
        self._backend.close_now()

    # --- SQLiteSession internals that must not be reached on this class ---

    def _check_not_closed(self) -> None:
        self._open_backend()

    def _get_connection(self) -> sqlite3.Connection:
        raise AgentSessionsError("AgentSession does not use SQLiteSession's thread connections")

    def _locked_connection(self) -> Any:
        return self._get_connection()

    def _write_connection(self) -> Any:
        return self._get_connection()

    async def _get_compaction_snapshot(self, *args: Any, **kwargs: Any) -> None:
        # Compaction must go through get_items/add_items (and so through pruning); returning
        # None makes the SDK take that generic path, as it does for any subclass.
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(user_id={self.user_id!r}, "
            f"conversation_id={self.conversation_id!r}, db_path={str(self.db_path)!r}, "
            f"max_messages={self.max_messages})"
        )


def get_agent_session(
    user_id: str | uuid.UUID,
    conversation_id: str | uuid.UUID,
    *,
    db_path: str | Path | None = None,
    max_messages: int | None = None,
    settings: AgentSessionSettings | None = None,
    session_settings: SessionSettings | dict[str, Any] | None = None,
    clock: Clock | None = None,
) -> AgentSession:
    """Return the ``AgentSession`` for a (user, conversation) pair, configured from settings.

    Takes the same keyword arguments as ``AgentSession``; those given win over the
    settings (``settings``, else ``get_settings()``).

    Raises:
        InvalidIdentifierError: if an id is unusable.
        InvalidArgumentError: if an argument is out of range or of the wrong type.
        StorageError: (a subclass) naming the path if the database cannot be opened.
    """
    return AgentSession(
        user_id,
        conversation_id,
        db_path=db_path,
        max_messages=max_messages,
        settings=settings,
        session_settings=session_settings,
        clock=clock,
    )


def _as_item_list(items: object) -> list[TResponseInputItem]:
    if isinstance(items, dict | str | bytes) or not isinstance(items, Iterable):
        raise InvalidItemError(f"items must be a list of items, not a {type(items).__name__}")
    return list(items)
