"""``SessionManager``: stats, listing, pruning, clearing and cleanup of one database."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .backends import Backend, open_backend
from .clock import Clock, days_before, now_timestamp, to_timestamp, utc_now
from .encryption import Keyring, keyring_for
from .errors import (
    EventLoopMismatchError,
    InvalidArgumentError,
    InvalidIdentifierError,
    SessionClosedError,
    SessionNotFoundError,
)
from .ids import normalize_identifier, positive_int
from .models import SessionStats
from .settings import (
    MAX_RETENTION_DAYS,
    AgentSessionSettings,
    pool_options,
    resolve_database,
    resolve_setting,
)

logger = logging.getLogger("agent_sessions")

T = TypeVar("T")

CLEANUP_BATCH_SIZE = 100
"""Sessions deleted by the first cleanup transaction; later batches adapt (see below)."""

CLEANUP_TRANSACTION_SECONDS = 0.01
"""Target length of one cleanup transaction: a live writer waits at most about this long."""

_MAX_CLEANUP_BATCH = 500  # ids bound as parameters; well under SQLite's variable limit

MAX_SESSION_ID_LENGTH = 4096


async def _nothing() -> None:
    return None


def _session_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidIdentifierError(f"session_id must be a non-empty str, got {value!r}")
    if len(value) > MAX_SESSION_ID_LENGTH:
        raise InvalidIdentifierError(
            f"session_id is {len(value)} characters long; the limit is {MAX_SESSION_ID_LENGTH}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no stored id can contain one
        raise InvalidIdentifierError(f"session_id is not valid text: {value!r}") from None
    return value


class SessionManager:
    """Inspect and maintain the sessions stored in one database.

    Use it as ``async with SessionManager(...) as manager:`` or call ``close()`` when done.
    The database opens on first use. Operations run one at a time, off the event loop
    (SQLite: in a worker thread of the manager's own, on that thread's connection).
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        database_url: str | None = None,
        max_messages: int | None = None,
        retention_days: int | None = None,
        settings: AgentSessionSettings | None = None,
        clock: Clock | None = None,
        cleanup_batch_size: int = CLEANUP_BATCH_SIZE,
        create: bool = True,
        encryption_key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
    ) -> None:
        """Configure the manager; nothing is opened yet.

        Args:
            db_path: SQLite file, or a ``postgresql://`` URL; defaults to the settings'
                ``database_url`` if set, else their ``db_path``.
            database_url: A ``postgresql://`` URL (instead of ``db_path``).
            max_messages: Bound applied by ``prune_session_messages``; defaults to settings.
            retention_days: Idle days before cleanup deletes a session; defaults to settings.
            settings: Settings to use instead of ``get_settings()``.
            clock: Returns the current aware datetime; idleness is measured against it.
            cleanup_batch_size: Sessions deleted by the first cleanup transaction.
            create: Create the database (and its folder) if it does not exist; with
                ``False`` a missing file, or one without session tables, raises
                ``StorageUnavailableError`` and is left as it was.
            encryption_key: Opens encrypted items (``get_items``); defaults to the settings'
                ``encryption_key``. Listing and counting need no key.

        Raises:
            InvalidArgumentError: if a number is not a positive integer, or ``db_path`` is not
                a file path (``":memory:"`` included).
        """
        target = resolve_database(db_path, database_url, settings)
        if target == ":memory:":
            # Each connection to ":memory:" is a new, empty database: none of the sessions.
            raise InvalidArgumentError(
                "SessionManager needs a database file; ':memory:' would be an empty database "
                "of its own"
            )
        self.max_messages = positive_int(
            resolve_setting(max_messages, "max_messages", settings), "max_messages"
        )
        self.retention_days = positive_int(
            resolve_setting(retention_days, "retention_days", settings),
            "retention_days",
            maximum=MAX_RETENTION_DAYS,
        )
        self.cleanup_batch_size = positive_int(cleanup_batch_size, "cleanup_batch_size")
        self._keyring = keyring_for(resolve_setting(encryption_key, "encryption_key", settings))
        self._backend: Backend = open_backend(
            target, create=create, offload=True, pool=pool_options(settings), keyring=self._keyring
        )
        self.db_path = self._backend.location
        # Kept for the scheduler, which takes the schedule (hour, minute, zone) from them.
        self.settings = settings
        self._clock: Clock = clock or utc_now
        # One operation at a time: close() can then wait for the running one and refuse
        # the rest. asyncio locks belong to one event loop (see _follow_running_loop).
        self._lock = asyncio.Lock()
        self._closed = False
        self._opened = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---

    async def _follow_running_loop(self) -> None:
        """Bind to the running event loop; once the bound loop has stopped, start afresh.

        A manager used again after ``asyncio.run`` returned (one loop per call, per test)
        works in the new loop.

        Raises:
            EventLoopMismatchError: if another event loop is running and using it.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and self._loop.is_running():
            raise EventLoopMismatchError(
                f"SessionManager for {self.db_path!r} is in use by another running event "
                "loop; use one manager per event loop (thread)"
            )
        self._lock = asyncio.Lock()
        self._loop = loop

    async def _use(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` alone, to its end even if the caller is cancelled.

        A write runs whole in the backend (one transaction); finishing it before the
        cancellation propagates keeps ``close()`` from returning while it still runs.
        """
        await self._follow_running_loop()  # before its lock, which belongs to one loop
        async with self._lock:
            if self._closed:  # also when closed while this call waited its turn
                raise SessionClosedError(f"SessionManager for {self.db_path!r} is closed")
            if not self._opened:
                try:
                    await self._backend.open()
                except BaseException:
                    await self._backend.close()  # nothing held while it cannot open
                    raise
                self._opened = True
            task = asyncio.ensure_future(operation())
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

    async def open(self) -> Self:
        """Open (creating or migrating) the database now rather than on first use."""
        await self._use(_nothing)
        return self

    async def close(self) -> None:
        """Close the manager; it cannot be used afterwards.

        An operation already running finishes first (a cleanup stops after its current
        batch); calls made or still waiting after ``close`` raise ``SessionClosedError``.
        """
        self._closed = True
        await self._follow_running_loop()
        async with self._lock:  # wait for the running operation
            await self._backend.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    def __del__(self) -> None:
        backend = getattr(self, "_backend", None)
        if backend is not None and backend.holds_resources:
            warnings.warn(
                f"SessionManager for {self.db_path!r} was not closed",
                ResourceWarning,
                stacklevel=1,
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- queries ---

    def _now(self) -> float:
        return now_timestamp(self._clock)

    def _cutoff(self, retention_days: int) -> float:
        # Subtract as datetimes, then convert: float seconds minus a float span can round
        # differently from the stored value of the same instant (near powers of two).
        return to_timestamp(days_before(self._clock(), retention_days))

    async def get_session_stats(self, session_id: str) -> SessionStats:
        """Return what is stored for ``session_id``.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)
        stats = await self._use(lambda: self._backend.session_stats(session_id))
        if stats is None:
            raise SessionNotFoundError(session_id)
        return stats

    async def get_items(self, session_id: str) -> list[dict[str, Any]]:
        """Return a session's decodable items, oldest first (corrupt rows are skipped).

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)
        decoded = await self._use(lambda: self._backend.stored_items(session_id))
        if decoded is None:
            raise SessionNotFoundError(session_id)
        return [dict(item) for item in decoded.items]

    async def list_sessions(
        self, user_id: str | uuid.UUID | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[SessionStats]:
        """List sessions, most recent activity first, optionally only ``user_id``'s.

        Raises:
            InvalidArgumentError: if ``limit`` < 1 or ``offset`` < 0.
            InvalidIdentifierError: if ``user_id`` is unusable.
        """
        limit = positive_int(limit, "limit")
        offset = positive_int(offset, "offset", minimum=0)
        user = None if user_id is None else normalize_identifier(user_id, "user_id")
        return await self._use(lambda: self._backend.list_sessions(user, limit, offset))

    async def get_session_count(self) -> int:
        """Count all stored sessions."""
        return (await self._use(lambda: self._backend.totals(self._now()))).sessions

    async def get_active_session_count(self) -> int:
        """Count sessions active within the last ``retention_days``."""
        cutoff = self._cutoff(self.retention_days)
        return (await self._use(lambda: self._backend.totals(cutoff))).active_sessions

    async def get_average_messages_per_session(self) -> float:
        """Average stored rows per session; ``0.0`` when there are no sessions.

        Counted over the whole table, so rows that fail to decode are included (unlike
        ``SessionStats.message_count``, which decodes each row).
        """
        totals = await self._use(lambda: self._backend.totals(self._now()))
        return totals.items / totals.sessions if totals.sessions else 0.0

    # --- maintenance ---

    async def prune_session_messages(self, session_id: str) -> int:
        """Apply the pruning rule to one session now (e.g. after lowering ``max_messages``).

        Returns:
            The number of items deleted.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)
        deleted = await self._use(
            lambda: self._backend.prune_session(session_id, self.max_messages)
        )
        if deleted is None:
            raise SessionNotFoundError(session_id)
        return deleted

    async def prune_all_sessions(self) -> int:
        """Apply the pruning rule to every session, one transaction each.

        Returns:
            The number of items deleted in all.
        """
        deleted = 0
        for session_id in await self._use(self._backend.session_ids):
            pruned = await self._use(
                lambda: self._backend.prune_session(session_id, self.max_messages)  # noqa: B023
            )
            deleted += pruned or 0  # None: cleared since it was listed
        return deleted

    async def clear_session(self, session_id: str) -> int:
        """Delete a session and all its items.

        Returns:
            The number of items deleted.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)
        deleted = await self._use(lambda: self._backend.delete_session(session_id))
        if deleted is None:
            raise SessionNotFoundError(session_id)
        return deleted

    def _idle_cutoff(self, retention_days: int | None) -> float:
        """The activity time before which a session is idle, for ``retention_days``."""
        days = positive_int(
            retention_days if retention_days is not None else self.retention_days,
            "retention_days",
            maximum=MAX_RETENTION_DAYS,
        )
        return self._cutoff(days)

    async def list_inactive_sessions(
        self, *, retention_days: int | None = None, limit: int | None = None
    ) -> list[SessionStats]:
        """List the sessions ``cleanup_inactive_sessions`` would delete now, oldest activity first.

        A session is idle when its last activity is more than ``retention_days`` before the
        clock's time, exactly as cleanup decides it.

        Args:
            retention_days: Overrides the manager's ``retention_days`` for this call.
            limit: At most this many sessions (the oldest); ``None`` lists them all.

        Raises:
            InvalidArgumentError: if ``retention_days`` or ``limit`` is out of range.
        """
        cutoff = self._idle_cutoff(retention_days)
        count = None if limit is None else positive_int(limit, "limit")
        return await self._use(lambda: self._backend.list_idle_sessions(cutoff, count))

    async def cleanup_inactive_sessions(
        self, *, retention_days: int | None = None, dry_run: bool = False
    ) -> int:
        """Delete sessions idle for more than ``retention_days``, with all their items.

        Works in batches, one short transaction each (sized to hold the write lock about
        ``CLEANUP_TRANSACTION_SECONDS``, with a pause as long between them), so live writers
        are never blocked for long. Each batch re-checks idleness inside its transaction: a
        session written to meanwhile is kept whole.

        Args:
            retention_days: Overrides the manager's ``retention_days`` for this call.
            dry_run: Only count the sessions that would be deleted (``list_inactive_sessions``
                lists them).

        Returns:
            The number of sessions deleted (or, with ``dry_run``, that would be).
        """
        cutoff = self._idle_cutoff(retention_days)
        if dry_run:
            return await self._use(lambda: self._backend.count_idle_sessions(cutoff))
        deleted = 0
        batch_size = self.cleanup_batch_size
        while True:
            size = batch_size
            started = time.perf_counter()
            done = await self._use(lambda: self._backend.delete_idle_batch(cutoff, size))  # noqa: B023
            held = time.perf_counter() - started
            if not done:
                await self._use(self._backend.finish_cleanup)
                return deleted
            deleted += done
            logger.debug("cleanup: %d session(s) in %.1f ms", done, held * 1000)
            # Size the next batch so a transaction takes about the target time (on SQLite it
            # holds the write lock), then leave as long free, so live writers get their turn.
            # Proportional, within half to double: a batch's fixed cost (a round trip to a
            # server) must not pin the size at 1, as halving below a threshold would.
            scale = min(2.0, max(0.5, CLEANUP_TRANSACTION_SECONDS / max(held, 1e-6)))
            batch_size = max(1, min(_MAX_CLEANUP_BATCH, math.ceil(batch_size * scale)))
            await asyncio.sleep(min(held, CLEANUP_TRANSACTION_SECONDS))
