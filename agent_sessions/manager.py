"""``SessionManager``: stats, listing, pruning, clearing and cleanup of one database."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from . import metrics
from .backends import Backend, open_backend
from .backends.base import UNCHANGED, SessionKey
from .clock import (
    Clock,
    cutoff_before,
    days_before,
    from_timestamp,
    now_timestamp,
    to_timestamp,
    utc_now,
)
from .conversations import (
    decode_cursor,
    encode_cursor,
    encode_metadata,
    seal_field,
    validate_title,
)
from .durations import parse_duration
from .encryption import Keyring, keyring_for
from .errors import (
    EventLoopMismatchError,
    InvalidArgumentError,
    InvalidIdentifierError,
    SearchUnavailableError,
    SessionClosedError,
    SessionNotFoundError,
)
from .ids import normalize_identifier, positive_int
from .models import (
    ConversationExport,
    HealthReport,
    SearchHit,
    SessionPage,
    SessionStats,
    Threshold,
)
from .search import MAX_WORD_CHARS, query_words
from .settings import (
    MAX_RETENTION_DAYS,
    AgentSessionSettings,
    pool_options,
    resolve_database,
    resolve_setting,
    search_enabled,
)

logger = logging.getLogger("agent_sessions")

T = TypeVar("T")

CLEANUP_BATCH_SIZE = 100
"""Sessions deleted by the first cleanup transaction; later batches adapt (see below)."""

CLEANUP_TRANSACTION_SECONDS = 0.01
"""Target length of one cleanup transaction: a live writer waits at most about this long."""

_MAX_CLEANUP_BATCH = 500  # ids bound as parameters; well under SQLite's variable limit

EXPORT_PAGE_SIZE = 100
"""Session ids ``export_user`` reads per query."""

MAX_SESSION_ID_LENGTH = 4096

SWEEP_ERROR_LENGTH = 200
"""Characters of a failed sweep's error kept in its record."""


async def _nothing() -> None:
    return None


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidArgumentError(
            f"warn_average_items must be a positive number or None, got {value!r}"
        )
    return float(value)


def sweep_error(exc: BaseException) -> str:
    """A failed sweep's error for its record: type and first line, shortened.

    Our errors name the database by its location, already without a password; only the
    first line is kept, so a driver's multi-line detail (which may quote a statement's
    values) stays out of a table any process can read.
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= SWEEP_ERROR_LENGTH else text[: SWEEP_ERROR_LENGTH - 3] + "..."


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
        retention: timedelta | str | None = None,
        settings: AgentSessionSettings | None = None,
        clock: Clock | None = None,
        cleanup_batch_size: int = CLEANUP_BATCH_SIZE,
        create: bool = True,
        warn_average_items: float | None = None,
        warn_active_sessions: int | None = None,
        encryption_key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
    ) -> None:
        """Configure the manager; nothing is opened yet.

        Args:
            db_path: SQLite file, or a ``postgresql://`` URL; defaults to the settings'
                ``database_url`` if set, else their ``db_path``.
            database_url: A ``postgresql://`` URL (instead of ``db_path``).
            max_messages: Bound applied by ``prune_session_messages``; defaults to settings.
            retention_days: Idle days before a session expires; defaults to settings.
            retention: The same as a duration (``timedelta``, ``"30m"``, ``"7d"``); wins over
                ``retention_days``. Defaults to the settings' ``retention``, else their
                ``retention_days``.
            settings: Settings to use instead of ``get_settings()``.
            clock: Returns the current aware datetime; idleness is measured against it.
            cleanup_batch_size: Sessions deleted by the first cleanup transaction.
            create: Create the database (and its folder) if it does not exist; with
                ``False`` a missing file, or one without session tables, raises
                ``StorageUnavailableError`` and is left as it was.
            warn_average_items: ``health()`` warns (once per process) when the average
                items per session is above it; defaults to settings (unset: never).
            warn_active_sessions: The same for the sessions active within retention.
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
        if retention is None and retention_days is not None:
            retention = timedelta(days=self.retention_days)
        self.retention = parse_duration(
            resolve_setting(retention, "retention_period", settings), "retention"
        )
        """How long a session may be idle before it expires (and cleanup deletes it)."""
        self.cleanup_batch_size = positive_int(cleanup_batch_size, "cleanup_batch_size")
        average = resolve_setting(warn_average_items, "warn_average_items", settings)
        self.warn_average_items = None if average is None else _positive_number(average)
        active = resolve_setting(warn_active_sessions, "warn_active_sessions", settings)
        self.warn_active_sessions = (
            None if active is None else positive_int(active, "warn_active_sessions")
        )
        self._keyring = keyring_for(resolve_setting(encryption_key, "encryption_key", settings))
        self._search_wanted = bool(resolve_setting(None, "search_index", settings))
        self.search_index: bool = search_enabled(None, self._keyring, settings)
        self._backend: Backend = open_backend(
            target,
            create=create,
            offload=True,
            pool=pool_options(settings),
            search_index=self.search_index,
            keyring=self._keyring,
            # Encrypted rows' text goes into the index only with the plaintext index opted in.
            index_sealed=self.search_index
            and self._keyring is not None
            and bool(resolve_setting(None, "search_plaintext_index", settings)),
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

    def _expiry_cutoff(self) -> float:
        """The activity time before which a session has expired, by ``retention``."""
        return cutoff_before(self._clock(), self.retention)

    def has_expired(self, stats: SessionStats) -> bool:
        """Whether the session of ``stats`` has been idle longer than ``retention`` by now.

        An expired session reads as empty and its next write starts it afresh, even before
        cleanup deletes it; ``get_session_stats`` and ``get_items`` still show what is stored.
        """
        return to_timestamp(stats.last_activity) < self._expiry_cutoff()

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
        self,
        user_id: str | uuid.UUID | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        offset: int = 0,
        include_expired: bool = False,
    ) -> SessionPage:
        """List sessions with their titles, most recent activity first (ties by id).

        Pages are keyset-paginated: pass the page's ``next_cursor`` as ``cursor`` for the
        next one. Unlike an offset, a cursor neither skips nor repeats a session when others
        are written meanwhile (a session written since moves to the front, out of the pages
        still to come). Message counts are stored rows: a listing does not decode items.

        Args:
            user_id: Only this user's sessions; ``None`` for all.
            limit: At most this many per page.
            cursor: Where the previous page ended (its ``next_cursor``).
            offset: Skip this many more (kept for compatibility; prefer ``cursor``).
            include_expired: Also list sessions idle longer than ``retention`` (they read as
                empty until cleanup deletes them).

        Returns:
            A list of ``SessionStats`` with a ``next_cursor`` attribute (``None`` on the
            last page).

        Raises:
            InvalidArgumentError: if ``limit`` < 1, ``offset`` < 0, or ``cursor`` is not a
                cursor from this method.
            InvalidIdentifierError: if ``user_id`` is unusable.
        """
        limit = positive_int(limit, "limit")
        offset = positive_int(offset, "offset", minimum=0)
        after = None if cursor is None else decode_cursor(cursor)
        user = None if user_id is None else normalize_identifier(user_id, "user_id")
        since = None if include_expired else self._expiry_cutoff()
        # One more than asked for tells whether there is a next page without another query.
        rows = await self._use(
            lambda: self._backend.list_sessions(user, limit + 1, offset, after, since)
        )
        page = rows[:limit]
        more = len(rows) > limit
        return SessionPage(
            [stats for stats, _ in page], encode_cursor(page[-1][1]) if more else None
        )

    async def set_title(self, session_id: str, title: str | None) -> None:
        """Set a conversation's title; ``None`` returns to the default (its next user message).

        Raises:
            SessionNotFoundError: if no session has that id, or it has expired.
            InvalidArgumentError: if the title is blank, too long or holds control characters.
        """
        session_id = _session_id(session_id)
        sealed = seal_field(self._keyring, session_id, validate_title(title), "title")
        await self._set_fields(session_id, title=sealed)

    async def set_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        """Replace a conversation's metadata object.

        Raises:
            SessionNotFoundError: if no session has that id, or it has expired.
            InvalidArgumentError: if it is not a JSON-serialisable dict with str keys, or is
                larger than ``MAX_METADATA_BYTES`` as JSON.
        """
        session_id = _session_id(session_id)
        text = encode_metadata(metadata)
        await self._set_fields(
            session_id, metadata=seal_field(self._keyring, session_id, text, "metadata")
        )

    async def _set_fields(
        self, session_id: str, *, title: object = UNCHANGED, metadata: object = UNCHANGED
    ) -> None:
        key = SessionKey(_session_id(session_id), None, None)
        moment = self._clock()
        written = await self._use(
            lambda: self._backend.set_session_fields(
                key,
                to_timestamp(moment),
                cutoff_before(moment, self.retention),
                create=False,
                title=title,
                metadata=metadata,
            )
        )
        if not written:
            raise SessionNotFoundError(key.session_id)

    # --- a user's data ---

    async def delete_user(self, user_id: str | uuid.UUID, *, in_batches: bool | None = None) -> int:
        """Delete every conversation of ``user_id`` with all its items (and search entries).

        By default SQLite deletes them in one transaction: all or nothing. That holds the
        write lock for as long as it takes (about 4 µs per item, 10 µs with the search index),
        and every writer waits. With ``in_batches=True`` it deletes in short transactions
        instead, sized as cleanup's (about ``CLEANUP_TRANSACTION_SECONDS`` each), so writers
        wait at most about that long; a failure part-way then leaves the sessions not yet
        reached (run it again). PostgreSQL always works in batches: its row locks do not
        block other users' writers. Batches go on until none is left, so a write that raced
        the deletion is deleted too.

        Returns:
            The number of sessions deleted.

        Raises:
            InvalidIdentifierError: if ``user_id`` is unusable.
        """
        user = normalize_identifier(user_id, "user_id")
        if in_batches is None:
            in_batches = not self._backend.deletes_users_atomically
        if not in_batches:
            sessions, items = await self._use(lambda: self._backend.delete_user(user))
        else:
            sessions = items = 0

            async def batch(size: int) -> int:
                nonlocal sessions, items
                done, rows = await self._use(lambda: self._backend.delete_user_batch(user, size))
                sessions += done
                items += rows
                return done

            await self._in_short_batches(batch, self.cleanup_batch_size, "delete_user")
        logger.info("deleted user %r: %d session(s), %d item(s)", user, sessions, items)
        return sessions

    async def export_user(
        self, user_id: str | uuid.UUID, *, include_expired: bool = True
    ) -> AsyncIterator[ConversationExport]:
        """Yield each conversation of ``user_id`` with its items, one at a time.

        Only one conversation is held in memory at once, so a user of any size can be
        exported; ``agent_sessions.exporting`` turns the stream into JSON or Markdown.
        Conversations come in session id order. Everything stored is exported, expired
        conversations included, unless ``include_expired`` is false.

        Raises:
            InvalidIdentifierError: if ``user_id`` is unusable.
        """
        user = normalize_identifier(user_id, "user_id")
        after: str | None = None
        while True:
            ids = await self._use(
                lambda: self._backend.user_session_ids(user, after, EXPORT_PAGE_SIZE)  # noqa: B023
            )
            for session_id in ids:
                conversation = await self._export_one(session_id, include_expired)
                if conversation is not None:
                    yield conversation
            if len(ids) < EXPORT_PAGE_SIZE:
                return
            after = ids[-1]

    async def _export_one(
        self, session_id: str, include_expired: bool
    ) -> ConversationExport | None:
        stats = await self._use(lambda: self._backend.session_stats(session_id))
        decoded = await self._use(lambda: self._backend.stored_items(session_id))
        if stats is None or decoded is None:
            return None  # deleted since it was listed
        if not include_expired and self.has_expired(stats):
            return None
        counts = {
            "message_count": len(decoded.items),
            "corrupt_items": len(decoded.corrupt_row_ids),
        }
        return ConversationExport(
            session=stats.model_copy(update=counts), items=[dict(item) for item in decoded.items]
        )

    async def search_sessions(
        self, user_id: str | uuid.UUID, query: str, *, limit: int = 20
    ) -> list[SearchHit]:
        """Find ``user_id``'s conversations with a message holding every word of ``query``.

        ``query`` is plain text, never a query language: it is split into words (letters
        and digits), case and accents are ignored, and each must occur in one user or
        assistant message (tool calls and their outputs are not searched). The last word
        also matches as a prefix (``"pari"`` finds "Paris"). Only the user's own sessions
        that have not expired (active within ``retention``) are searched; messages
        written while ``search_index`` was off are not found.

        Args:
            user_id: Whose conversations to search.
            query: The words to find (at most 32 are used; a word longer than 100
                characters matches nothing).
            limit: At most this many sessions.

        Returns:
            One hit per session, for its best-matching message, best rank first.

        Raises:
            InvalidArgumentError: if ``query`` holds no words, or ``limit`` < 1.
            InvalidIdentifierError: if ``user_id`` is unusable.
            SearchUnavailableError: if the search index is off (``search_index=False``).
        """
        user = normalize_identifier(user_id, "user_id")
        limit = positive_int(limit, "limit")
        if not isinstance(query, str):
            raise InvalidArgumentError(f"query must be a str, got {type(query).__name__}")
        terms = query_words(query)
        if not terms:
            raise InvalidArgumentError(f"query has no words to search for: {query[:100]!r}")
        if not self.search_index and self._search_wanted:
            raise SearchUnavailableError(
                "search is off because items are encrypted: full-text search cannot index "
                "ciphertext. To search anyway, set AGENT_SESSION_SEARCH_PLAINTEXT_INDEX=true in "
                "every app that writes sessions: message text is then kept in clear in the "
                "search index (see the README's Encryption at rest)"
            )
        if not self.search_index:
            raise SearchUnavailableError(
                "search is off for this database: messages are not indexed while "
                "search_index is False; set AGENT_SESSION_SEARCH_INDEX=true (or "
                "search_index=True in the settings) in the app that writes sessions"
            )
        if any(len(term) > MAX_WORD_CHARS for term in terms):
            return []  # no indexed word is that long (PostgreSQL skips them)
        cutoff = self._expiry_cutoff()
        return await self._use(lambda: self._backend.search_sessions(user, terms, limit, cutoff))

    async def get_session_count(self) -> int:
        """Count all stored sessions."""
        return (await self._use(lambda: self._backend.totals(self._now()))).sessions

    async def get_active_session_count(self) -> int:
        """Count sessions active within the last ``retention`` (those not expired)."""
        cutoff = self._expiry_cutoff()
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
        """The activity time before which a session is idle (``retention``, or the days given)."""
        if retention_days is None:
            return self._expiry_cutoff()
        days = positive_int(retention_days, "retention_days", maximum=MAX_RETENTION_DAYS)
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
        sweep_started = self._now()
        sweep_id = await self._use(lambda: self._backend.start_sweep(sweep_started))
        deleted = 0

        async def batch(size: int) -> int:
            done = await self._use(lambda: self._backend.delete_idle_batch(cutoff, size))
            nonlocal deleted
            deleted += done
            return done

        try:
            await self._in_short_batches(batch, self.cleanup_batch_size, "cleanup")
            await self._use(self._backend.finish_cleanup)
        except SessionClosedError:
            raise  # closed mid-run: nothing left to record with; the record stays 'running'
        except BaseException as exc:
            await self._record_failed_sweep(sweep_id, deleted, exc)
            raise
        await self._use(
            lambda: self._backend.finish_sweep(sweep_id, self._now(), "ok", deleted, None)
        )
        return deleted

    async def _in_short_batches(
        self, batch: Callable[[int], Awaitable[int]], first_size: int, what: str
    ) -> None:
        """Run ``batch(size)`` until it returns 0, each a transaction of about a target length.

        Each batch is sized so its transaction takes about ``CLEANUP_TRANSACTION_SECONDS`` (on
        SQLite it holds the write lock), then as long is left free, so live writers get their
        turn. Proportional, within half to double: a batch's fixed cost (a round trip to a
        server) must not pin the size at 1, as halving below a threshold would.
        """
        size = first_size
        while True:
            started = time.perf_counter()
            done = await batch(size)
            held = time.perf_counter() - started
            if not done:
                return
            logger.debug("%s: %d session(s) in %.1f ms", what, done, held * 1000)
            scale = min(2.0, max(0.5, CLEANUP_TRANSACTION_SECONDS / max(held, 1e-6)))
            size = max(1, min(_MAX_CLEANUP_BATCH, math.ceil(size * scale)))
            await asyncio.sleep(min(held, CLEANUP_TRANSACTION_SECONDS))

    async def _record_failed_sweep(self, sweep_id: int, deleted: int, exc: BaseException) -> None:
        """Record a sweep as failed; a failure to record is logged, not raised over ``exc``."""
        error = sweep_error(exc)
        try:
            await self._use(
                lambda: self._backend.finish_sweep(sweep_id, self._now(), "failed", deleted, error)
            )
        except Exception:
            logger.warning("agent_sessions: could not record the failed sweep", exc_info=True)

    # --- health ---

    async def health(self) -> HealthReport:
        """Size, counts, oldest activity, the last sweep, and this process's write latency.

        Cheap enough to poll: the counts ``get_session_count`` takes, index lookups and file
        sizes. A count above a threshold (``warn_average_items``, ``warn_active_sessions``)
        is listed in ``thresholds_crossed`` and logged as a warning on the ``agent_sessions``
        logger, once per process for each threshold.
        """
        cutoff = self._idle_cutoff(None)
        facts = await self._use(lambda: self._backend.health(cutoff))
        totals = facts.totals
        average = totals.items / totals.sessions if totals.sessions else 0.0
        latency = metrics.write_latency.summary()
        return HealthReport(
            database=self.db_path,
            database_bytes=facts.database_bytes,
            sessions=totals.sessions,
            items=totals.items,
            active_sessions=totals.active_sessions,
            average_items=average,
            oldest_activity=(
                None if facts.oldest_activity is None else from_timestamp(facts.oldest_activity)
            ),
            last_sweep=facts.last_sweep,
            write_latency_p50=latency.p50,
            write_latency_p95=latency.p95,
            write_samples=latency.samples,
            thresholds_crossed=self._thresholds_crossed(average, totals.active_sessions),
        )

    def _thresholds_crossed(self, average: float, active: int) -> tuple[Threshold, ...]:
        crossed: list[Threshold] = []
        limit = self.warn_average_items
        if limit is not None and average > limit:
            crossed.append("average_items")
            if metrics.threshold_warnings.first("average_items"):
                logger.warning(
                    "agent_sessions: %.1f items per session on average in %s, above "
                    "warn_average_items (%g)",
                    average,
                    self.db_path,
                    limit,
                )
        active_limit = self.warn_active_sessions
        if active_limit is not None and active > active_limit:
            crossed.append("active_sessions")
            if metrics.threshold_warnings.first("active_sessions"):
                logger.warning(
                    "agent_sessions: %d active sessions in %s, above warn_active_sessions (%d)",
                    active,
                    self.db_path,
                    active_limit,
                )
        return tuple(crossed)

    async def _check_thresholds(self) -> None:
        """``health()`` for its warnings, if a threshold is set and not yet warned about.

        For the scheduled sweep: once both have warned, it skips the counts.
        """
        watched = {
            name
            for name, limit in (
                ("average_items", self.warn_average_items),
                ("active_sessions", self.warn_active_sessions),
            )
            if limit is not None
        }
        if metrics.threshold_warnings.pending(watched):
            await self.health()
