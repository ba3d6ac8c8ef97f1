"""``AgentSession``: the SDK's ``SQLiteSession``, keyed by user and conversation, bounded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agents import SQLiteSession
from agents.items import TResponseInputItem
from agents.memory import SessionSettings
from agents.memory.session_settings import resolve_session_limit

from . import storage
from .clock import Clock, now_timestamp, utc_now
from .errors import SessionClosedError
from .ids import get_session_id, normalize_identifier, positive_int
from .settings import AgentSessionSettings, get_settings, resolve_setting

logger = logging.getLogger("agent_sessions")


class AgentSession(SQLiteSession):
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
            InvalidIdentifierError: if an id is unusable.
            InvalidArgumentError: if ``max_messages`` is not a positive integer.
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
        self._clock: Clock = clock or utc_now
        self._key = storage.SessionKey(session_id, user, conversation)
        if db_path is None:
            db_path = (settings or get_settings()).db_path
        path = storage.prepare_path(db_path)
        with storage.translate_errors(path):
            super().__init__(session_id, path, session_settings=session_settings)

    # --- hooks into SQLiteSession's connection handling (see tests/test_sdk_hooks.py) ---

    @staticmethod
    def _configure_connection(conn: sqlite3.Connection) -> None:
        storage.configure_connection(conn)
        # The SDK's version turns on WAL, retrying while another process does the same.
        SQLiteSession._configure_connection(conn)

    def _init_db_for_connection(self, conn: sqlite3.Connection) -> None:
        storage.migrate(conn)

    def _check_not_closed(self) -> None:
        if self._closed:
            raise SessionClosedError(f"session {self.session_id!r} is closed")

    def _insert_items(self, conn: sqlite3.Connection, items: list[TResponseInputItem]) -> None:
        # Called by SDK code paths that write inside their own transaction.
        storage.append_items(
            conn,
            self._key,
            storage.encode_items(items),
            now_timestamp(self._clock),
            self.max_messages,
        )

    # --- the Session protocol ---

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the history, oldest first; with ``limit``, only the newest ``limit`` items.

        Rows that cannot be decoded as items are skipped and logged.
        """
        session_limit = resolve_session_limit(limit, self.session_settings)

        def read() -> storage.DecodedRows:
            with self._locked_connection() as conn:
                return storage.read_items(conn, self.session_id, session_limit)

        decoded = await self._run(read)
        if decoded.corrupt_row_ids:
            logger.warning(
                "session %r: skipped %d corrupt row(s) (ids %s)",
                self.session_id,
                len(decoded.corrupt_row_ids),
                decoded.corrupt_row_ids[:10],
            )
        return list(decoded.items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items, then prune to ``max_messages``, in one transaction.

        Raises:
            InvalidItemError: if an item is not a JSON-serialisable dict; nothing is written.
            StorageError: (a subclass) if the database fails; nothing is written.
        """
        self._check_not_closed()
        if not items:
            return
        payloads = storage.encode_items(items)
        now = now_timestamp(self._clock)

        def write() -> int:
            with self._write_connection() as conn, storage.write_transaction(conn):
                return storage.append_items(conn, self._key, payloads, now, self.max_messages)

        pruned = await self._mutate(write)
        if pruned:
            logger.debug("session %r: pruned %d item(s)", self.session_id, pruned)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item, or ``None`` if the session is empty."""
        now = now_timestamp(self._clock)

        def pop() -> Any:
            with self._write_connection() as conn, storage.write_transaction(conn):
                return storage.pop_newest(conn, self.session_id, now)

        item: TResponseInputItem | None = await self._mutate(pop)
        return item

    async def clear_session(self) -> None:
        """Delete every item of this session and its session row."""

        def clear() -> int:
            with self._write_connection() as conn, storage.write_transaction(conn):
                return storage.delete_session(conn, self.session_id)

        await self._mutate(clear)

    # --- plumbing ---

    async def _run(self, fn: Any) -> Any:
        def call() -> Any:
            with storage.translate_errors(self.db_path):
                return fn()

        return await asyncio.to_thread(call)

    async def _mutate(self, fn: Any) -> Any:
        # Like the SDK: once a write has started, see it through even if the caller is
        # cancelled (repeatedly), so its outcome is known before cancellation propagates.
        task = asyncio.ensure_future(self._run(fn))
        cancelled: asyncio.CancelledError | None = None
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError as exc:
                cancelled = cancelled or exc
        if cancelled is not None:
            if not task.cancelled():
                task.exception()  # retrieved, so it is not reported as never retrieved
            raise cancelled
        return task.result()

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
    settings: AgentSessionSettings | None = None,
) -> AgentSession:
    """Return the ``AgentSession`` for a (user, conversation) pair, configured from settings.

    Raises:
        InvalidIdentifierError: if an id is unusable.
        StorageError: (a subclass) naming the path if the database cannot be opened.
    """
    settings = settings or get_settings()
    return AgentSession(
        user_id,
        conversation_id,
        db_path=db_path if db_path is not None else settings.db_path,
        max_messages=settings.max_messages,
        settings=settings,
    )
