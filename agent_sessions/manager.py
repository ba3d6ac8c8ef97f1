"""``SessionManager``: stats, listing, pruning, clearing and cleanup over aiosqlite."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiosqlite

from . import codec, storage
from .clock import Clock, days_before, from_timestamp, now_timestamp, to_timestamp, utc_now
from .errors import (
    EventLoopMismatchError,
    InvalidArgumentError,
    InvalidIdentifierError,
    SessionClosedError,
    SessionNotFoundError,
    StorageUnavailableError,
)
from .ids import normalize_identifier, positive_int
from .models import SessionStats
from .settings import MAX_RETENTION_DAYS, AgentSessionSettings, resolve_setting

logger = logging.getLogger("agent_sessions")

_OLD_CONNECTION_CLOSE_TIMEOUT = 2.0
"""Seconds to wait for a connection left by a stopped event loop to close."""

T = TypeVar("T")

CLEANUP_BATCH_SIZE = 100
"""Sessions deleted by the first cleanup transaction; later batches adapt (see below)."""

CLEANUP_TRANSACTION_SECONDS = 0.01
"""Target length of one cleanup transaction: a live writer waits at most about this long."""

_MAX_CLEANUP_BATCH = 500  # ids bound as parameters; well under SQLite's variable limit
_CHECKPOINT_EVERY_BATCHES = 50


MAX_SESSION_ID_LENGTH = 4096


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
    The connection opens on first use.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        max_messages: int | None = None,
        retention_days: int | None = None,
        settings: AgentSessionSettings | None = None,
        clock: Clock | None = None,
        cleanup_batch_size: int = CLEANUP_BATCH_SIZE,
        create: bool = True,
    ) -> None:
        """Configure the manager; nothing is opened yet.

        Args:
            db_path: SQLite file; defaults to the settings' ``db_path``.
            max_messages: Bound applied by ``prune_session_messages``; defaults to settings.
            retention_days: Idle days before cleanup deletes a session; defaults to settings.
            settings: Settings to use instead of ``get_settings()``.
            clock: Returns the current aware datetime; idleness is measured against it.
            cleanup_batch_size: Sessions deleted by the first cleanup transaction.
            create: Create the database (and its folder) if it does not exist; with
                ``False`` a missing file, or one without session tables, raises
                ``StorageUnavailableError`` and is left as it was.

        Raises:
            InvalidArgumentError: if a number is not a positive integer, or ``db_path`` is not
                a file path (``":memory:"`` included).
        """
        self.db_path = storage.database_path(resolve_setting(db_path, "db_path", settings))
        if self.db_path == ":memory:":
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
        # Kept for the scheduler, which takes the schedule (hour, minute, zone) from them.
        self.settings = settings
        self._clock: Clock = clock or utc_now
        self._create = create
        self._db: aiosqlite.Connection | None = None
        self._identity: storage.FileIdentity | None = None  # of the file self._db opened
        self._open_lock = asyncio.Lock()
        # One aiosqlite connection serves every task using this manager: the lock keeps one
        # operation (and so one transaction) on it at a time.
        self._lock = asyncio.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the one the connection serves

    # --- lifecycle ---

    async def _follow_running_loop(self) -> None:
        """Bind to the running event loop; once the bound loop has stopped, start afresh.

        An aiosqlite connection delivers results to the loop that used it, and asyncio locks
        belong to one loop: a manager used again after ``asyncio.run`` returned (one loop
        per call, per test) reopens in the new loop instead of hanging.

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
        old, self._db, self._identity = self._db, None, None
        self._open_lock = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._loop = loop
        if old is not None:
            await _stop_connection(old)

    async def _connection(self) -> aiosqlite.Connection:
        if self._closed:
            raise SessionClosedError(f"SessionManager for {self.db_path!r} is closed")
        await self._follow_running_loop()
        if self._db is not None:
            return self._db
        async with self._open_lock:
            if self._db is None:
                path = await asyncio.to_thread(self._prepare_file)
                with storage.translate_errors(path):
                    db = await aiosqlite.connect(path, isolation_level=None)
                    try:
                        for pragma in storage.CONNECTION_PRAGMAS:
                            await db.execute(pragma)
                        # Checkpoints run explicitly (see cleanup), not inside a COMMIT,
                        # so a commit's duration is the time the write lock was held.
                        await db.execute(storage.DISABLE_AUTOCHECKPOINT)
                    except BaseException:
                        await db.close()
                        raise
                self._db = db
                self._identity = storage.FileIdentity.of(path)
        return self._db

    async def _reopen_if_replaced(self, db: aiosqlite.Connection) -> aiosqlite.Connection:
        # A connection keeps using the file it opened after that file is deleted or replaced:
        # a long-lived manager (the daemon's) would clean up a file nobody uses any more.
        if self._identity is None or not self._identity.changed():
            return db
        logger.warning("database %s was deleted or replaced; opening it again", self.db_path)
        self._db = None
        await db.close()
        return await self._connection()

    def _prepare_file(self) -> str:
        # In a worker thread: creating, converting to WAL and migrating may wait on the disk
        # or on another process's migration.
        if not self._create and not os.path.exists(self.db_path):
            raise StorageUnavailableError(f"no database at {self.db_path!r}", path=self.db_path)
        path = storage.prepare_path(self.db_path)
        storage.connect(path, create=self._create).close()
        return path

    async def _use(
        self, body: Callable[[aiosqlite.Connection], Awaitable[T]], *, write: bool = False
    ) -> T:
        """Run ``body`` alone on the connection; with ``write``, in one transaction.

        The body runs in a task that is always finished, even if the caller is cancelled:
        a cancelled caller must not leave the shared connection inside a transaction (it
        would hold the write lock for every process until the manager closed).
        """
        await self._follow_running_loop()  # before its lock, which belongs to one loop
        async with self._lock:
            if self._closed:  # closed while this call waited its turn
                raise SessionClosedError(f"SessionManager for {self.db_path!r} is closed")
            db = await self._reopen_if_replaced(await self._connection())
            task = asyncio.ensure_future(self._run(db, body, write))
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

    async def _run(
        self,
        db: aiosqlite.Connection,
        body: Callable[[aiosqlite.Connection], Awaitable[T]],
        write: bool,
    ) -> T:
        with storage.translate_errors(self.db_path):
            if not write:
                return await body(db)
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await body(db)
                await db.commit()
            except BaseException:
                if db.in_transaction:
                    await db.rollback()
                raise
            return result

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async def fetch(db: aiosqlite.Connection) -> list[Any]:
            return list(await db.execute_fetchall(sql, params))

        return await self._use(fetch)

    async def open(self) -> Self:
        """Open the connection (and migrate the schema) now rather than on first use."""
        await self._connection()
        return self

    async def close(self) -> None:
        """Close the connection; the manager cannot be used afterwards.

        An operation already running finishes first (a cleanup stops after its current
        batch); calls made or still waiting after ``close`` raise ``SessionClosedError``.
        """
        self._closed = True
        await self._follow_running_loop()
        async with self._lock:  # never close the connection inside another call's transaction
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_db", None) is not None:
            warnings.warn(
                f"SessionManager for {self.db_path!r} was not closed",
                ResourceWarning,
                stacklevel=1,
            )

    # --- queries ---

    def _now(self) -> float:
        return now_timestamp(self._clock)

    def _cutoff(self, retention_days: int) -> float:
        # Subtract as datetimes, then convert: float seconds minus a float span can round
        # differently from the stored value of the same instant (near powers of two).
        return to_timestamp(days_before(self._clock(), retention_days))

    @staticmethod
    async def _stats(db: aiosqlite.Connection, row: Any) -> SessionStats:
        session_id, user_id, conversation_id, created_ts, last_activity_ts = row
        rows = await db.execute_fetchall(storage.SELECT_ALL_ROWS, (session_id,))
        decoded = codec.decode_rows(rows)  # type: ignore[arg-type]
        return SessionStats(
            session_id=session_id,
            user_id=user_id,
            conversation_id=conversation_id,
            message_count=len(decoded.items),
            corrupt_items=len(decoded.corrupt_row_ids),
            created_at=from_timestamp(created_ts if created_ts is not None else 0.0),
            last_activity=from_timestamp(last_activity_ts if last_activity_ts is not None else 0.0),
        )

    @staticmethod
    async def _require(db: aiosqlite.Connection, session_id: str) -> Any:
        rows = list(await db.execute_fetchall(storage.SELECT_SESSION, (session_id,)))
        if not rows:
            raise SessionNotFoundError(session_id)
        return rows[0]

    async def get_session_stats(self, session_id: str) -> SessionStats:
        """Return what is stored for ``session_id``.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)

        async def stats(db: aiosqlite.Connection) -> SessionStats:
            return await self._stats(db, await self._require(db, session_id))

        return await self._use(stats)

    async def get_items(self, session_id: str) -> list[dict[str, Any]]:
        """Return a session's decodable items, oldest first (corrupt rows are skipped).

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)

        async def items(db: aiosqlite.Connection) -> list[dict[str, Any]]:
            await self._require(db, session_id)
            rows = await db.execute_fetchall(storage.SELECT_ALL_ROWS, (session_id,))
            return [dict(item) for item in codec.decode_rows(rows).items]  # type: ignore[arg-type]

        return await self._use(items)

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

        async def listing(db: aiosqlite.Connection) -> list[SessionStats]:
            if user is None:
                rows = await db.execute_fetchall(storage.LIST_SESSIONS, (limit, offset))
            else:
                rows = await db.execute_fetchall(storage.LIST_USER_SESSIONS, (user, limit, offset))
            return [await self._stats(db, row) for row in rows]

        return await self._use(listing)

    async def get_session_count(self) -> int:
        """Count all stored sessions."""
        return int((await self._fetch(storage.COUNT_SESSIONS_AND_ROWS))[0][0])

    async def get_active_session_count(self) -> int:
        """Count sessions active within the last ``retention_days``."""
        cutoff = self._cutoff(self.retention_days)
        return int((await self._fetch(storage.COUNT_ACTIVE_SESSIONS, (cutoff,)))[0][0])

    async def get_average_messages_per_session(self) -> float:
        """Average stored rows per session; ``0.0`` when there are no sessions.

        Counted in SQL over the whole table, so rows that fail to decode are included (unlike
        ``SessionStats.message_count``, which decodes each row).
        """
        sessions, items = (await self._fetch(storage.COUNT_SESSIONS_AND_ROWS))[0]
        return float(items) / sessions if sessions else 0.0

    # --- maintenance ---

    async def prune_session_messages(self, session_id: str) -> int:
        """Apply the pruning rule to one session now (e.g. after lowering ``max_messages``).

        Returns:
            The number of items deleted.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)

        async def prune(db: aiosqlite.Connection) -> int:
            await self._require(db, session_id)
            rows = await db.execute_fetchall(storage.SELECT_ALL_ROWS, (session_id,))
            cut = storage.plan_cut(list(rows), self.max_messages)  # type: ignore[arg-type]
            if cut is None:
                return 0
            cursor = await db.execute(storage.DELETE_ROWS_BEFORE, (session_id, cut))
            return int(cursor.rowcount)

        return await self._use(prune, write=True)

    async def prune_all_sessions(self) -> int:
        """Apply the pruning rule to every session, one transaction each.

        Returns:
            The number of items deleted in all.
        """
        deleted = 0
        for (session_id,) in await self._fetch(storage.LIST_SESSION_IDS):
            try:
                deleted += await self.prune_session_messages(session_id)
            except SessionNotFoundError:
                continue  # cleared since it was listed
        return deleted

    async def clear_session(self, session_id: str) -> int:
        """Delete a session and all its items.

        Returns:
            The number of items deleted.

        Raises:
            SessionNotFoundError: if no session has that id.
        """
        session_id = _session_id(session_id)

        async def clear(db: aiosqlite.Connection) -> int:
            await self._require(db, session_id)
            deleted = (await db.execute(storage.DELETE_SESSION_ROWS, (session_id,))).rowcount
            await db.execute(storage.DELETE_SESSION, (session_id,))
            return int(deleted)

        return await self._use(clear, write=True)

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
        count = -1 if limit is None else positive_int(limit, "limit")  # SQLite: -1, no limit

        async def listing(db: aiosqlite.Connection) -> list[SessionStats]:
            rows = await db.execute_fetchall(storage.LIST_IDLE_SESSIONS, (cutoff, count))
            return [await self._stats(db, row) for row in rows]

        return await self._use(listing)

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
            return int((await self._fetch(storage.COUNT_IDLE_SESSIONS, (cutoff,)))[0][0])
        deleted = batches = 0
        batch_size = self.cleanup_batch_size
        while True:
            batch = [
                row[0] for row in await self._fetch(storage.SELECT_IDLE_BATCH, (cutoff, batch_size))
            ]
            if not batch:
                await self._fetch(storage.CHECKPOINT_PASSIVE)
                return deleted
            delete_rows, delete_sessions = storage.delete_idle_batch_statements(len(batch))
            params = (cutoff, *batch)

            async def delete(db: aiosqlite.Connection) -> int:
                await db.execute(delete_rows, params)  # noqa: B023 (awaited in this iteration)
                return int((await db.execute(delete_sessions, params)).rowcount)  # noqa: B023

            started = time.perf_counter()
            deleted += await self._use(delete, write=True)
            held = time.perf_counter() - started
            logger.debug("cleanup: %d session(s) in %.1f ms", len(batch), held * 1000)
            # Size the next batch so the write lock is held about the target time, then leave
            # it free at least as long, so live writers get their turn.
            if held > CLEANUP_TRANSACTION_SECONDS:
                batch_size = max(1, batch_size // 2)
            elif held < CLEANUP_TRANSACTION_SECONDS / 4:
                batch_size = min(_MAX_CLEANUP_BATCH, batch_size * 2)
            await asyncio.sleep(min(held, CLEANUP_TRANSACTION_SECONDS))
            batches += 1
            if batches % _CHECKPOINT_EVERY_BATCHES == 0:
                # Passive: never blocks writers; it runs in aiosqlite's thread.
                await self._fetch(storage.CHECKPOINT_PASSIVE)


async def _stop_connection(db: aiosqlite.Connection) -> None:
    """Close a connection left by an event loop that stopped, without ever hanging.

    Its worker thread closes the sqlite3 connection (rolling back an open transaction) and
    ends. If the old loop closed while a call was in flight, delivering that result killed
    the thread: then nothing is waited for, and the connection is closed when ``db`` is
    garbage-collected.
    """
    worker = getattr(db, "_thread", None)  # aiosqlite's, hence getattr: only an optimisation
    stopped = db.stop()
    if stopped is not None and (worker is None or worker.is_alive()):
        # asyncio.wait, not wait_for: a timeout must not cancel and then wait on the future.
        await asyncio.wait({stopped}, timeout=_OLD_CONNECTION_CLOSE_TIMEOUT)
