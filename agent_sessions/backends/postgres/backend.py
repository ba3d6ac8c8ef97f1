"""``PostgresBackend``: the ``Backend`` protocol on a PostgreSQL server, through psycopg 3."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg

from ...clock import from_timestamp
from ...codec import DecodedRows, decode_item
from ...conversations import decode_metadata, open_field
from ...encryption import (
    ClearColumns,
    Keyring,
    decode_stored,
    is_encrypted,
    open_row,
    pruning_item,
    skeleton,
)
from ...errors import EncryptionKeyError, InvalidArgumentError, InvalidIdentifierError
from ...ids import positive_int
from ...models import SearchHit, SessionStats, SweepRecord
from ...pruning import Item, cut_index, late_call_index
from ...search import folded_words
from ..base import (
    SWEEP_HISTORY,
    UNCHANGED,
    FieldsChange,
    HealthFacts,
    ListPosition,
    Owner,
    RowChange,
    SessionDump,
    SessionFields,
    SessionKey,
    StoredFields,
    StoredRow,
    Totals,
)
from . import schema, sql
from .batch import Batch
from .errors import FullPruneNeeded, KeyNeeded, redact, translate_errors
from .pool import connection_kwargs, mark_schema_ready, schema_lock, schema_ready, shared_pool
from .transaction import transaction

logger = logging.getLogger("agent_sessions")

Connection = psycopg.AsyncConnection[Any]

DEFAULT_STATEMENT_TIMEOUT = 30.0
"""Seconds a statement may run, waiting for another writer's lock included."""


def _db_time(seconds: float) -> datetime:
    """POSIX seconds as the aware datetime stored: microseconds, as ``from_timestamp`` rounds.

    So a stored time reads back as exactly the ``datetime`` SQLite's ``REAL`` column gives.
    """
    return from_timestamp(seconds)


def _utc(value: datetime) -> datetime:
    """A ``timestamptz`` read ``AT TIME ZONE 'UTC'`` (naive) as an aware UTC datetime."""
    return value.replace(tzinfo=UTC)


def _check_text(value: str, what: str) -> str:
    # PostgreSQL text cannot hold NUL; SQLite can, so the shared validation lets it through.
    if "\x00" in value:
        raise InvalidIdentifierError(f"{what} contains a NUL character: {value!r}")
    return value


_MAX_TIMEOUT = 2_000_000.0
"""Seconds; PostgreSQL's statement_timeout holds at most 2**31 - 1 milliseconds."""


def _seconds(value: object, what: str, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_TIMEOUT
        or (value == 0 and not zero)
    ):
        least = "from 0" if zero else "above 0"
        raise InvalidArgumentError(
            f"{what} must be a number of seconds {least} up to {_MAX_TIMEOUT:.0f}; got {value!r}"
        )
    return float(value)


def _stats(row: Sequence[Any], keyring: Keyring | None = None) -> SessionStats:
    payloads = row[7]
    # Encrypted rows are counted as items without a key (they cannot be checked without one).
    items = sum(1 for data in payloads if is_encrypted(data) or decode_item(data) is not None)
    return _stats_from(row, items, len(payloads) - items, keyring)


def _stats_from(
    row: Sequence[Any], count: int, corrupt: int | None, keyring: Keyring | None = None
) -> SessionStats:
    session_id, user_id, conversation_id, created_at, last_activity, title, metadata = row[:7]
    return SessionStats(
        session_id=session_id,
        user_id=user_id,
        conversation_id=conversation_id,
        message_count=count,
        corrupt_items=corrupt,
        created_at=_utc(created_at),
        last_activity=_utc(last_activity),
        title=open_field(keyring, session_id, title, "title", strict=False),
        metadata=decode_metadata(
            open_field(keyring, session_id, metadata, "metadata", strict=False)
        ),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _position(row: Sequence[Any]) -> ListPosition:
    """A listed row's keyset position: its activity in whole microseconds (exact)."""
    return ListPosition((_utc(row[4]) - _EPOCH) // _MICROSECOND, row[0])


def _since(active_since: float | None) -> datetime | None:
    return None if active_since is None else _db_time(active_since)


class PostgresBackend:
    """Sessions stored in a PostgreSQL database (or behind PgBouncer in transaction mode).

    Every backend on the same URL in a process and event loop shares one connection pool
    (see ``close_pools``). Each operation is one transaction; ``append_items`` usually takes
    one round trip to the server.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        pool_min_size: int = 0,
        pool_max_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        search_index: bool = True,
        keyring: Keyring | None = None,
    ) -> None:
        """Configure the backend; nothing is opened yet.

        Args:
            url: A libpq URL (``postgresql://user:password@host:port/dbname``) or
                ``key=value`` connection string.
            create: Create the tables in a database that has none; with ``False`` such a
                database raises ``StorageUnavailableError`` and is left unchanged.
            pool_min_size: Connections the shared pool keeps open.
            pool_max_size: Connections the shared pool may open.
            connect_timeout: Seconds to wait for a connection (libpq rounds up to whole
                seconds), and for a free one from the pool.
            statement_timeout: Seconds each statement may run, lock waits included; ``0``
                for no limit. Past it the operation raises ``StorageBusyError``.
            search_index: Index message text for ``search_sessions`` as items are written.
            keyring: Opens encrypted rows on reads; without one, reads of encrypted rows and
                writes to a session holding them raise ``EncryptionKeyError``.

        Raises:
            InvalidArgumentError: if a size or timeout is out of range, or ``url`` is empty.
        """
        if not isinstance(url, str) or not url.strip():
            raise InvalidArgumentError(f"url must be a non-empty str, got {url!r}")
        self._url = url
        self._location = redact(url)
        self._create = create
        self._min_size = positive_int(pool_min_size, "pool_min_size", minimum=0)
        self._max_size = positive_int(pool_max_size, "pool_max_size", minimum=max(1, pool_min_size))
        self._connect_timeout = _seconds(connect_timeout, "connect_timeout")
        self._statement_timeout = _seconds(statement_timeout, "statement_timeout", zero=True)
        self._search_index = search_index
        self._keyring = keyring

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self._location

    def __repr__(self) -> str:
        return f"PostgresBackend({self._location!r})"

    # --- lifecycle ---

    async def open(self) -> None:
        """Connect, and create or migrate the schema (once per process and URL); idempotent.

        Raises:
            StorageUnavailableError: if the server cannot be reached, or the database holds
                no sessions and the backend was made with ``create=False``.
            StorageError: if the schema is newer than this library, or the tables not ours.
        """
        if schema_ready(self._url):
            return
        async with schema_lock(self._url):
            if schema_ready(self._url):
                return
            # A connection of its own, not the pool's: a server that cannot be reached fails
            # here at once with libpq's reason, instead of after the pool's timeout.
            with translate_errors(self._url):
                conn = await psycopg.AsyncConnection.connect(
                    self._url, **connection_kwargs(self._connect_timeout)
                )
                try:
                    await schema.migrate(
                        conn,
                        self._location,
                        create=self._create,
                        statement_timeout=self._statement_timeout,
                    )
                finally:
                    await conn.close()
            mark_schema_ready(self._url)

    async def migrate(self) -> tuple[int, int]:
        """Apply the pending migrations now, on a connection of its own.

        Returns:
            How many this call applied, and the schema version now.
        """
        with translate_errors(self._url):
            conn = await psycopg.AsyncConnection.connect(
                self._url, **connection_kwargs(self._connect_timeout)
            )
            try:
                applied = await schema.migrate(
                    conn,
                    self._location,
                    create=self._create,
                    statement_timeout=self._statement_timeout,
                )
            finally:
                await conn.close()
        mark_schema_ready(self._url)
        return applied, schema.LATEST_VERSION

    async def close(self) -> None:
        """Nothing to release: connections belong to the shared pool (see ``close_pools``)."""

    @property
    def holds_resources(self) -> bool:
        """Always ``False``: the pool is shared, and closed by ``close_pools``."""
        return False

    @contextlib.asynccontextmanager
    async def _transaction(self, *, snapshot: bool = False) -> AsyncIterator[Connection]:
        """A pooled connection in one transaction; driver errors leave as ``StorageError``."""
        await self.open()
        with translate_errors(self._url):
            pool = await shared_pool(
                self._url,
                min_size=self._min_size,
                max_size=self._max_size,
                connect_timeout=self._connect_timeout,
            )
            async with (
                pool.connection() as conn,
                transaction(conn, self._statement_timeout, snapshot=snapshot),
            ):
                yield conn

    async def _fetchall(self, query: str, params: dict[str, Any]) -> list[Any]:
        async with self._transaction() as conn:
            cursor = await conn.execute(query, params)
        return await cursor.fetchall()

    # --- one session ---

    async def read_items(
        self, session_id: str, limit: int | None, active_since: float | None = None
    ) -> DecodedRows:
        """A session's items, oldest first; ``None`` or a negative limit reads all.

        ``limit=n > 0`` returns the newest ``n`` decodable items (the window widens past
        corrupt rows); ``0`` returns none. An unknown session has no items, nor has one idle
        since before ``active_since``.
        """
        sid = _check_text(session_id, "session_id")
        since = _since(active_since)
        if limit is None or limit < 0:
            rows = await self._fetchall(sql.READ_ALL_ITEMS, {"sid": sid, "since": since})
            return decode_stored(rows, self._keyring, sid)
        if limit == 0:
            return DecodedRows([], [])
        window = limit
        while True:
            rows = await self._fetchall(
                sql.READ_NEWEST_ITEMS, {"sid": sid, "since": since, "limit": window}
            )
            decoded = decode_stored(rows[::-1], self._keyring, sid)
            if len(decoded.items) >= limit or len(rows) < window:
                return DecodedRows(decoded.items[-limit:], decoded.corrupt_row_ids)
            window *= 2

    async def stored_items(self, session_id: str) -> DecodedRows | None:
        """All of a session's items, or ``None`` if no session has that id."""
        sid = _check_text(session_id, "session_id")
        async with self._transaction(snapshot=True) as conn:
            exists = await conn.execute(sql.SESSION_EXISTS, {"sid": sid})
            rows = await conn.execute(sql.SELECT_ALL_ITEMS, {"sid": sid})
        if await exists.fetchone() is None:
            return None
        return decode_stored(await rows.fetchall(), self._keyring, sid)

    async def append_items(
        self,
        key: SessionKey,
        items: Sequence[Item],
        payloads: Sequence[str],
        now: float,
        max_items: int,
        *,
        active_since: float | None = None,
        title: str | None = None,
    ) -> int:
        """Record activity, store the items and prune to ``max_items``, in one transaction.

        A session idle since before ``active_since`` starts afresh first; ``title`` is its
        title unless it has one.

        As ``sqlite.sql.append_items``: an output whose call is neither earlier in the batch
        nor stored is left out with a warning. Usually one round trip: every statement and
        the ``COMMIT`` go together, and the fast pruning rule runs in SQL. When the session
        needs the full rule, the server refuses that transaction and it is done again,
        reading the session to apply ``pruning.cut_index``.

        Returns:
            The number of items pruned.
        """
        sid = _check_text(key.session_id, "session_id")
        batch = Batch.of(items, payloads, index=self._search_index)
        write = _Write(key, batch, _db_time(now), max_items, _since(active_since), title)
        try:
            try:
                found, pruned = await self._append(write, strict=True)
            except FullPruneNeeded:
                found, pruned = await self._append(write, strict=False)
        except KeyNeeded:
            raise EncryptionKeyError(sid, [], [], writing=True) from None
        orphans, dropped = batch.dropped(found)
        if orphans:
            logger.warning(
                "session %r: not storing %d output(s) whose call is no longer stored (%s); "
                "the model would reject them",
                sid,
                dropped,
                ", ".join(orphans),
            )
        return pruned

    async def _append(self, write: _Write, *, strict: bool) -> tuple[set[str], int]:
        """One attempt at ``append_items``: the stored calls found, and the items pruned."""
        key, batch, max_items = write.key, write.batch, write.max_items
        sid = key.session_id
        n = len(batch.payloads)
        found_calls = None
        async with self._transaction() as conn:
            if write.since is not None:
                await conn.execute(sql.EXPIRE_ITEMS, {"sid": sid, "since": write.since})
                await conn.execute(sql.EXPIRE_SESSION, {"sid": sid, "since": write.since})
            await conn.execute(
                sql.UPSERT_SESSION,
                {
                    "sid": sid,
                    "user": key.user_id,
                    "conv": key.conversation_id,
                    "now": write.now,
                    "n": n,
                    "forget": batch.answers_late,
                    "title": write.title,
                },
            )
            refuse = self._keyring is None
            if refuse and not strict:
                await conn.execute(sql.REFUSE_IF_ENCRYPTED, {"sid": sid, "n": n})
            if batch.needing:
                keys = sorted(batch.needing)
                found_calls = await conn.execute(sql.FIND_STORED_CALLS, {"sid": sid, "keys": keys})
                await conn.execute(
                    sql.FORGET_IF_ANSWERED_LATE,
                    {"sid": sid, "keys": keys, "late_keys": batch.late_if_stored},
                )
            await conn.execute(
                sql.INSERT_ITEMS,
                {
                    "sid": sid,
                    "n": n,
                    "data": batch.payloads,
                    "is_user": batch.is_user,
                    "call_key": batch.call_keys,
                    "needs": batch.needs,
                    "search_text": batch.search_text,
                    "search_words": batch.search_words,
                    "answer_key": batch.answer_keys,
                    "is_reasoning": batch.is_reasoning,
                },
            )
            state = await conn.execute(
                sql.PRUNE_FAST, {"sid": sid, "max": max_items, "strict": strict}
            )
            if refuse and strict:
                # Last: an error raised by an earlier statement would surface inside this
                # block at the next execute, rather than at the COMMIT.
                await conn.execute(sql.REFUSE_IF_ENCRYPTED, {"sid": sid, "n": n})
            # Strict: nothing is read before COMMIT, so the whole write is one round trip.
            if not strict:
                pruned = await _finish_prune(conn, sid, max_items, await state.fetchone())
        if strict:
            pruned = _fast_pruned(max_items, await state.fetchone())
        found = set() if found_calls is None else {row[0] for row in await found_calls.fetchall()}
        return found, pruned

    async def pop_item(
        self, session_id: str, now: float, active_since: float | None = None
    ) -> Item | None:
        """Delete and return the newest decodable item, or ``None`` if there is none.

        Corrupt rows are skipped, not deleted; the session's activity is recorded only when
        an item is removed. An expired session (activity before ``active_since``) has none.
        """
        sid = _check_text(session_id, "session_id")
        async with self._transaction() as conn:
            await conn.execute(sql.LOCK_SESSION, {"sid": sid})
            window = 1
            while True:
                cursor = await conn.execute(
                    sql.READ_NEWEST_ITEMS,
                    {"sid": sid, "since": _since(active_since), "limit": window},
                )
                rows = await cursor.fetchall()
                for row in rows:
                    item = open_row(row, self._keyring, sid)
                    if item is not None:
                        await conn.execute(sql.DELETE_ITEM, {"sid": sid, "seq": row[0]})
                        await conn.execute(sql.TOUCH_SESSION, {"sid": sid, "now": _db_time(now)})
                        return item
                if len(rows) < window:
                    return None
                window *= 4

    async def delete_session(self, session_id: str) -> int | None:
        """Delete a session and its items; the items deleted, or ``None`` if it did not exist."""
        sid = _check_text(session_id, "session_id")
        async with self._transaction() as conn:
            # Locked first: a write waiting on the row cannot add items the deletes miss.
            lock = await conn.execute(sql.LOCK_SESSION, {"sid": sid})
            items = await conn.execute(sql.DELETE_SESSION_ITEMS, {"sid": sid})
            await conn.execute(sql.DELETE_SESSION, {"sid": sid})
        if await lock.fetchone() is None:
            return None
        row = await items.fetchone()
        return int(row[0]) if row is not None else 0

    async def session_owner(self, session_id: str) -> Owner | None:
        """The stored owner of a session, or ``None`` if no session has that id."""
        sid = _check_text(session_id, "session_id")
        rows = await self._fetchall(sql.SELECT_OWNER, {"sid": sid})
        return (rows[0][0], rows[0][1]) if rows else None

    async def prune_session(self, session_id: str, max_items: int) -> int | None:
        """Apply the pruning rule now; the items deleted, or ``None`` for an unknown session."""
        sid = _check_text(session_id, "session_id")
        async with self._transaction() as conn:
            await conn.execute(sql.LOCK_SESSION, {"sid": sid})
            state = await conn.execute(
                sql.PRUNE_FAST, {"sid": sid, "max": max_items, "strict": False}
            )
            row = await state.fetchone()
            if row is None:
                return None
            return await _finish_prune(conn, sid, max_items, row)

    async def read_session_fields(
        self, session_id: str, active_since: float | None
    ) -> SessionFields | None:
        """See ``Backend.read_session_fields``."""
        sid = _check_text(session_id, "session_id")
        rows = await self._fetchall(sql.SELECT_FIELDS, {"sid": sid, "since": _since(active_since)})
        return SessionFields(title=rows[0][0], metadata=rows[0][1]) if rows else None

    async def set_session_fields(
        self,
        key: SessionKey,
        now: float,
        active_since: float | None,
        *,
        create: bool,
        title: object = UNCHANGED,
        metadata: object = UNCHANGED,
    ) -> bool:
        """See ``Backend.set_session_fields``."""
        sid = _check_text(key.session_id, "session_id")
        for value, what in ((title, "title"), (metadata, "metadata")):
            if isinstance(value, str):
                _check_text(value, what)
        params: dict[str, Any] = {
            "sid": sid,
            "since": _since(active_since),
            "user": key.user_id,
            "conv": key.conversation_id,
            "now": _db_time(now),
            "title": title,
            "metadata": metadata,
        }
        async with self._transaction() as conn:
            row = await (await conn.execute(sql.LOCK_SESSION_ACTIVITY, params)).fetchone()
            expired = row is not None and bool(row[0])
            if row is None or expired:
                if not create:
                    return False
                if expired:
                    await conn.execute(sql.DELETE_SESSION_ITEMS, params)
                    await conn.execute(sql.DELETE_SESSION, params)
                await conn.execute(sql.INSERT_SESSION, params)
            if title is not UNCHANGED:
                await conn.execute(sql.SET_TITLE, params)
            if metadata is not UNCHANGED:
                await conn.execute(sql.SET_METADATA, params)
        return True

    # --- turn locks ---

    async def turn_lock_is_free(self, session_id: str, now: float) -> bool:
        """See ``Backend.turn_lock_is_free``."""
        sid = _check_text(session_id, "session_id")
        rows = await self._fetchall(sql.SELECT_TURN_LOCK_EXPIRY, {"sid": sid})
        return not rows or float(rows[0][0]) <= now

    async def take_turn_lock(self, session_id: str, owner: str, now: float, expires: float) -> bool:
        """See ``Backend.take_turn_lock``."""
        params = {"sid": _check_text(session_id, "session_id"), "owner": owner}
        async with self._transaction() as conn:
            cursor = await conn.execute(
                sql.TAKE_TURN_LOCK, {**params, "now": now, "expires": expires}
            )
        return cursor.rowcount == 1

    async def renew_turn_lock(self, session_id: str, owner: str, expires: float) -> bool:
        """See ``Backend.renew_turn_lock``."""
        params = {"sid": _check_text(session_id, "session_id"), "owner": owner}
        async with self._transaction() as conn:
            cursor = await conn.execute(sql.RENEW_TURN_LOCK, {**params, "expires": expires})
        return cursor.rowcount == 1

    async def release_turn_lock(self, session_id: str, owner: str) -> bool:
        """See ``Backend.release_turn_lock``."""
        params = {"sid": _check_text(session_id, "session_id"), "owner": owner}
        async with self._transaction() as conn:
            cursor = await conn.execute(sql.RELEASE_TURN_LOCK, params)
        return cursor.rowcount == 1

    # --- copying ---

    async def dump_session(self, session_id: str) -> SessionDump | None:
        """See ``Backend.dump_session``."""
        sid = _check_text(session_id, "session_id")
        rows = await self._fetchall(sql.SELECT_DUMP, {"sid": sid})
        if not rows:
            return None
        user_id, conversation_id, created_at, last_activity, payloads, title, metadata, columns = (
            rows[0]
        )
        kept: list[str] = []
        clear: list[ClearColumns | None] = []
        for text, (is_user, call_key, answer_key, is_reasoning) in zip(
            payloads, columns, strict=True
        ):
            if is_encrypted(text):  # copied sealed, with its clear columns (it cannot be checked)
                kept.append(text)
                clear.append((is_user == "true", call_key, answer_key, is_reasoning == "true"))
            elif decode_item(text) is not None:
                kept.append(text)
                clear.append(None)
        return SessionDump(
            session_id=sid,
            user_id=user_id,
            conversation_id=conversation_id,
            created_at=_utc(created_at).timestamp(),
            last_activity=_utc(last_activity).timestamp(),
            payloads=tuple(kept),
            corrupt_rows=len(payloads) - len(kept),
            title=title,
            metadata=metadata,
            clear=tuple(clear) if any(clear) else (),
        )

    async def load_session(self, dump: SessionDump) -> None:
        """See ``Backend.load_session``."""
        sid = _check_text(dump.session_id, "session_id")
        clear = dump.clear or (None,) * len(dump.payloads)
        batch = Batch.of(
            [
                skeleton(columns) if columns is not None else decode_item(text) or {}
                for text, columns in zip(dump.payloads, clear, strict=True)
            ],
            dump.payloads,
            index=self._search_index and dump.user_id is not None,
        )
        async with self._transaction() as conn:
            await conn.execute(sql.LOCK_SESSION, {"sid": sid})
            await conn.execute(sql.DELETE_SESSION_ITEMS, {"sid": sid})
            await conn.execute(sql.DELETE_SESSION, {"sid": sid})
            await conn.execute(
                sql.INSERT_DUMPED_SESSION,
                {
                    "sid": sid,
                    "user": dump.user_id,
                    "conv": dump.conversation_id,
                    "created": _db_time(dump.created_at),
                    "active": _db_time(dump.last_activity),
                    "n": len(dump.payloads),
                    "title": dump.title,
                    "metadata": dump.metadata,
                },
            )
            await conn.execute(
                sql.INSERT_DUMPED_ITEMS,
                {
                    "sid": sid,
                    "data": list(dump.payloads),
                    "is_user": batch.is_user,
                    "call_key": batch.call_keys,
                    "search_text": batch.search_text,
                    "search_words": batch.search_words,
                    "answer_key": batch.answer_keys,
                    "is_reasoning": batch.is_reasoning,
                },
            )

    # --- re-encoding rows ---

    async def scan_rows(self, after: tuple[str, int] | None, limit: int) -> list[StoredRow]:
        """See ``Backend.scan_rows``: in (session id, seq) order."""
        if after is None:
            rows = await self._fetchall(sql.SCAN_ROWS_FIRST, {"limit": limit})
        else:
            rows = await self._fetchall(
                sql.SCAN_ROWS_AFTER, {"sid": after[0], "seq": after[1], "limit": limit}
            )
        return [
            StoredRow(
                session_id=row[0],
                ref=row[1],
                data=row[2],
                clear=(bool(row[3]), row[4], row[5], bool(row[6])),
            )
            for row in rows
        ]

    async def scan_session_fields(self, after: str | None, limit: int) -> list[StoredFields]:
        """See ``Backend.scan_session_fields``."""
        rows = await self._fetchall(sql.SCAN_FIELDS, {"after": after or "", "limit": limit})
        return [StoredFields(row[0], row[1], row[2]) for row in rows]

    async def replace_session_fields(self, changes: Sequence[FieldsChange]) -> int:
        """See ``Backend.replace_session_fields``."""
        if not changes:
            return 0
        params = {
            "sid": [change.session_id for change in changes],
            "title": [change.title for change in changes],
            "metadata": [change.metadata for change in changes],
            "old_title": [change.old.title for change in changes],
            "old_metadata": [change.old.metadata for change in changes],
        }
        async with self._transaction() as conn:
            cursor = await conn.execute(sql.REPLACE_FIELDS, params)
        return cursor.rowcount

    async def drop_search_index(self) -> int:
        """See ``Backend.drop_search_index``: 1,000 items a transaction."""
        dropped = 0
        while True:
            async with self._transaction() as conn:
                cursor = await conn.execute(sql.DROP_SEARCH_BATCH, {"limit": 1000})
            if not cursor.rowcount:
                return dropped
            dropped += cursor.rowcount

    async def begin_rewrite(self) -> None:
        """Nothing to do: old row versions stay until VACUUM (see the README)."""

    async def finish_rewrite(self) -> None:
        """Nothing to do: autovacuum reclaims old row versions (VACUUM to do it now)."""

    async def replace_rows(self, changes: Sequence[RowChange]) -> int:
        """See ``Backend.replace_rows``."""
        if not changes:
            return 0
        params = {
            "sid": [c.session_id for c in changes],
            "seq": [c.ref for c in changes],
            "old": [c.old for c in changes],
            "new": [c.new for c in changes],
            "is_user": [c.clear[0] for c in changes],
            "call_key": [c.clear[1] for c in changes],
            "answer_key": [c.clear[2] for c in changes],
            "is_reasoning": [c.clear[3] for c in changes],
        }
        async with self._transaction() as conn:
            cursor = await conn.execute(sql.REPLACE_ROWS, params)
        return cursor.rowcount

    # --- many sessions ---

    async def session_stats(self, session_id: str) -> SessionStats | None:
        """What is stored for one session, or ``None`` if no session has that id."""
        sid = _check_text(session_id, "session_id")
        rows = await self._fetchall(sql.SESSION_STATS, {"sid": sid})
        return _stats(rows[0], self._keyring) if rows else None

    async def list_sessions(
        self,
        user_id: str | None,
        limit: int,
        offset: int,
        after: ListPosition | None = None,
        active_since: float | None = None,
    ) -> list[tuple[SessionStats, ListPosition]]:
        """See ``Backend.list_sessions``."""
        conditions: list[str] = []
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if user_id is not None:
            conditions.append(sql.LIST_BY_USER)
            params["user"] = _check_text(user_id, "user_id")
        if active_since is not None:
            conditions.append(sql.LIST_ACTIVE_SINCE)
            params["since"] = _db_time(active_since)
        if after is not None:
            conditions.append(sql.LIST_AFTER)
            params["after"] = _EPOCH + int(after.activity) * _MICROSECOND
            params["after_id"] = _check_text(after.session_id, "cursor")
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        rows = await self._fetchall(f"{sql.LIST_WITH_COUNTS} {where}{sql.LIST_ORDER}", params)
        return [
            (_stats_from(row, int(row[7]), None, self._keyring), _position(row)) for row in rows
        ]

    async def user_session_ids(self, user_id: str, after: str | None, limit: int) -> list[str]:
        """See ``Backend.user_session_ids``."""
        params = {"user": _check_text(user_id, "user_id"), "after": after or "", "limit": limit}
        return [row[0] for row in await self._fetchall(sql.USER_SESSION_IDS, params)]

    @property
    def deletes_users_atomically(self) -> bool:
        """``False``: ``delete_user`` defaults to batches (row locks block no other user)."""
        return False

    async def delete_user_batch(self, user_id: str, limit: int) -> tuple[int, int]:
        """See ``Backend.delete_user_batch``: the rows are locked, then deleted."""
        return await self._delete_user_sessions(user_id, limit)

    async def delete_user(self, user_id: str) -> tuple[int, int]:
        """See ``Backend.delete_user``: here one transaction, every session locked first."""
        return await self._delete_user_sessions(user_id, None)

    async def _delete_user_sessions(self, user_id: str, limit: int | None) -> tuple[int, int]:
        params: dict[str, Any] = {"user": _check_text(user_id, "user_id"), "limit": limit}
        async with self._transaction() as conn:
            batch = await conn.execute(sql.LOCK_USER_BATCH, params)  # LIMIT NULL: all
            params["ids"] = [row[0] for row in await batch.fetchall()]
            if not params["ids"]:
                return 0, 0
            deleted_items = await conn.execute(sql.DELETE_BATCH_ITEMS, params)
            await conn.execute(sql.DELETE_IDLE_TURN_LOCKS, params)
            deleted = await conn.execute(sql.DELETE_BATCH_SESSIONS, params)
        row = await deleted_items.fetchone()
        return deleted.rowcount, int(row[0]) if row is not None else 0

    async def list_idle_sessions(self, cutoff: float, limit: int | None) -> list[SessionStats]:
        """Sessions whose last activity is before ``cutoff``, oldest activity first."""
        rows = await self._fetchall(
            sql.LIST_IDLE_SESSIONS, {"cutoff": _db_time(cutoff), "limit": limit}
        )
        return [_stats_from(row, int(row[7]), None, self._keyring) for row in rows]

    async def search_sessions(
        self, user_id: str, terms: Sequence[str], limit: int, active_since: float | None
    ) -> list[SearchHit]:
        """See ``Backend.search_sessions``; words are folded as the index is (``search.fold``)."""
        folded = [word for term in terms for word in folded_words(term)]
        if not folded:
            return []
        rows = await self._fetchall(
            sql.SEARCH_SESSIONS,
            {
                "query": sql.tsquery(folded),
                "user": _check_text(user_id, "user_id"),
                "since": None if active_since is None else _db_time(active_since),
                "limit": limit,
                "headline": sql.HEADLINE_OPTIONS,
            },
        )
        return [
            SearchHit(
                session_id=session_id,
                conversation_id=conversation_id,
                title=open_field(self._keyring, session_id, title, "title", strict=False),
                snippet=snippet or "",
                rank=float(rank),
                last_activity=_utc(last_activity),
            )
            for session_id, conversation_id, snippet, rank, last_activity, title in rows
        ]

    async def session_ids(self) -> list[str]:
        """Every session id, sorted (by code point)."""
        return [row[0] for row in await self._fetchall(sql.SESSION_IDS, {})]

    async def totals(self, active_since: float) -> Totals:
        """Session and item counts, and how many sessions were active since the cutoff."""
        rows = await self._fetchall(sql.TOTALS, {"since": _db_time(active_since)})
        sessions, items, active = rows[0]
        return Totals(sessions=int(sessions), items=int(items), active_sessions=int(active))

    async def count_idle_sessions(self, cutoff: float) -> int:
        """How many sessions' last activity is before ``cutoff``."""
        rows = await self._fetchall(sql.COUNT_IDLE, {"cutoff": _db_time(cutoff)})
        return int(rows[0][0])

    async def delete_idle_batch(self, cutoff: float, batch_size: int) -> int:
        """Delete up to ``batch_size`` sessions idle since before ``cutoff``, in one transaction.

        Sessions another transaction holds (a write, another sweeper's batch) are skipped,
        not waited for, and idleness is checked again under the row locks: a session written
        meanwhile is kept whole. Returns the number of sessions deleted (0: none left).
        """
        params: dict[str, Any] = {"cutoff": _db_time(cutoff), "limit": batch_size}
        async with self._transaction() as conn:
            batch = await conn.execute(sql.LOCK_IDLE_BATCH, params)
            params["ids"] = [row[0] for row in await batch.fetchall()]
            if not params["ids"]:
                return 0
            await conn.execute(sql.DELETE_IDLE_ITEMS, params)
            sessions = await conn.execute(sql.DELETE_IDLE_SESSIONS, params)
            # Turn locks of idle sessions are leases long expired (a holder that was killed).
            await conn.execute(sql.DELETE_IDLE_TURN_LOCKS, params)
        return sessions.rowcount

    async def finish_cleanup(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum reclaims the space."""

    # --- health ---

    async def health(self, active_since: float) -> HealthFacts:
        """See ``Backend.health``; the size is our tables', indexes included, not the database's."""
        async with self._transaction(snapshot=True) as conn:
            totals = await conn.execute(sql.TOTALS, {"since": _db_time(active_since)})
            oldest = await conn.execute(sql.SELECT_OLDEST_ACTIVITY)
            size = await conn.execute(sql.SELECT_OUR_BYTES, {"tables": list(sql.OUR_TABLES)})
            sweep = await conn.execute(sql.SELECT_LAST_SWEEP)
        sessions, items, active = await _one(totals)
        (oldest_activity,) = await _one(oldest)
        (database_bytes,) = await _one(size)
        sweep_row = await sweep.fetchone()
        return HealthFacts(
            totals=Totals(sessions=int(sessions), items=int(items), active_sessions=int(active)),
            oldest_activity=None if oldest_activity is None else _utc(oldest_activity).timestamp(),
            database_bytes=int(database_bytes),
            last_sweep=None if sweep_row is None else _sweep(sweep_row),
        )

    async def start_sweep(self, started: float) -> int:
        """See ``Backend.start_sweep``."""
        async with self._transaction() as conn:
            inserted = await conn.execute(sql.INSERT_SWEEP, {"started": _db_time(started)})
            await conn.execute(sql.TRIM_SWEEPS, {"keep": SWEEP_HISTORY})
        (sweep_id,) = await _one(inserted)
        return int(sweep_id)

    async def finish_sweep(
        self,
        sweep_id: int,
        finished: float,
        outcome: Literal["ok", "failed"],
        sessions_deleted: int,
        error: str | None,
    ) -> None:
        """See ``Backend.finish_sweep``."""
        async with self._transaction() as conn:
            await conn.execute(
                sql.FINISH_SWEEP,
                {
                    "id": sweep_id,
                    "finished": _db_time(finished),
                    "outcome": outcome,
                    "deleted": sessions_deleted,
                    "error": error,
                },
            )


async def _one(cursor: psycopg.AsyncCursor[Any]) -> Sequence[Any]:
    """The single row a statement returns."""
    row: Sequence[Any] | None = await cursor.fetchone()
    assert row is not None  # an aggregate, or INSERT ... RETURNING: always one row
    return row


def _sweep(row: Sequence[Any]) -> SweepRecord:
    started, finished, outcome, deleted, error = row
    return SweepRecord(
        started_at=_utc(started),
        finished_at=None if finished is None else _utc(finished),
        outcome=outcome,
        sessions_deleted=int(deleted),
        error=error,
    )


@dataclass(frozen=True)
class _Write:
    """One ``append_items`` call, as each attempt at it needs it."""

    key: SessionKey
    batch: Batch
    now: datetime
    max_items: int
    since: datetime | None
    title: str | None


def _fast_pruned(max_items: int, row: Sequence[Any] | None) -> int:
    """The items the fast path deleted (it applied: the strict statement did not raise)."""
    assert row is not None  # the session row was just written
    stored, _late, _cut, deleted = row[:4]
    return 0 if stored <= max_items else int(deleted)


async def _finish_prune(
    conn: Connection, sid: str, max_items: int, row: Sequence[Any] | None
) -> int:
    """Complete ``sql.PRUNE_FAST``: the full rule where the fast path did not apply.

    As ``sqlite.sql.prune``: decode the whole session, cut where ``pruning.cut_index`` says, and
    record the oldest call still answered late (0: none) for the next write.
    """
    assert row is not None  # the session row is locked
    stored, late, cut, deleted = row[:4]
    if stored <= max_items:
        return 0
    if late == 0 and cut is not None:
        return int(deleted)
    rows = await (await conn.execute(sql.SELECT_ALL_ITEMS, {"sid": sid})).fetchall()
    # Encrypted rows are never decrypted here: their skeletons classify exactly as they do.
    items = [pruning_item(row) for row in rows]
    index = cut_index(items, max_items)
    late_at = late_call_index(items[index:])
    late_seq = 0 if late_at is None else rows[index + late_at][0]
    await conn.execute(sql.SET_LATE_CALL, {"sid": sid, "late": late_seq})
    if index == 0:
        return 0
    deleted_rows = await conn.execute(sql.DELETE_ITEMS_BEFORE, {"sid": sid, "seq": rows[index][0]})
    result = await deleted_rows.fetchone()
    return int(result[0]) if result is not None else 0
