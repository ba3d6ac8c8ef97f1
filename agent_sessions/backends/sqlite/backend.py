"""``SQLiteBackend``: one SQLite file (or a private in-memory database) as a ``Backend``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

from ...codec import DecodedRows
from ...encryption import Keyring
from ...errors import (
    InvalidArgumentError,
    InvalidIdentifierError,
    SessionClosedError,
    StorageError,
    StorageUnavailableError,
)
from ...ids import legacy_owner
from ...models import SearchHit, SessionStats
from ...pruning import Item
from .. import is_url, redact_url
from ..base import (
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
from .connection import (
    CHECKPOINT_PASSIVE,
    configure_connection,
    database_path,
    prepare_path,
    translate_errors,
)
from .engine import Engine, EngineClosed, registry

T = TypeVar("T")

FIRST_INDEX_BATCH = 100
"""Rows the first search-indexing transaction takes; later ones adapt (see index_pending)."""

INDEX_TRANSACTION_SECONDS = 0.01
"""Target length of one search-indexing transaction: a live writer waits about this long."""

logger = logging.getLogger("agent_sessions")

_inherited_executors: list[ThreadPoolExecutor] = []  # a parent's, kept unused after a fork

CHECKPOINT_EVERY_CLEANUP_BATCHES = 50
"""Cleanup batches between two WAL checkpoints (cleanup writes a lot; writers never wait)."""


class SQLiteBackend:
    """A SQLite database: statements run inline for sessions, in a worker thread for the manager.

    Connections are shared per file and thread (see ``engine``), so making a backend costs
    nothing; ``":memory:"`` is a private database of this object, as in the SDK. With
    ``offload``, operations run one at a time in a thread of this object's own, on that
    thread's connection; ``close()`` ends the thread.
    """

    def __init__(
        self,
        db_path: object,
        *,
        create: bool = True,
        offload: bool = False,
        search_index: bool = True,
        keyring: Keyring | None = None,
        index_sealed: bool = False,
    ) -> None:
        """Resolve the path; nothing is opened yet (``":memory:"`` excepted).

        Args:
            db_path: The database file; ``~`` is expanded and a relative path made absolute
                now, so a later ``chdir`` does not split one database into two.
            create: Create the file and its tables if needed; with ``False`` a missing file,
                or one without session tables, raises ``StorageUnavailableError`` unchanged.
            offload: Run every operation in a worker thread of its own rather than in the
                event loop's thread: for the manager's longer operations (listing, stats,
                cleanup).
            search_index: Let message text written here be indexed for ``search_sessions``
                (in batches: before each search, and by the cleanup sweep); with ``False``
                rows are written marked to stay out of the index, and nothing is indexed.
            keyring: Opens encrypted rows on reads; without one, reads of encrypted rows and
                writes to a session holding them raise ``EncryptionKeyError``.
            index_sealed: Index the text of encrypted rows too (opened with ``keyring``):
                the plaintext index was opted into.

        Raises:
            InvalidArgumentError: if ``db_path`` is not a path.
        """
        if is_url(db_path):
            raise InvalidArgumentError(
                f"{redact_url(db_path)!r} is a server URL, not a SQLite path: use "
                "get_agent_session() or PostgresSession, or AGENT_SESSION_DATABASE_URL"
            )
        self.path = database_path(db_path)
        self._create = create
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0  # the process whose thread the executor runs
        self._offload = offload
        self._search_index = search_index
        self._memory = Engine(":memory:") if self.path == ":memory:" else None
        self._cleanup_batches = 0
        self._keyring = keyring
        self._index_keyring = keyring if index_sealed else None

    @property
    def location(self) -> str:
        """The database file's absolute path (or ``":memory:"``)."""
        return self.path

    def _engine(self, *, reopen_if_replaced: bool = False) -> Engine:
        if self._memory is not None:
            return self._memory
        if self.path == ":memory:":  # closed: its database is gone
            raise SessionClosedError("the in-memory database was closed with its session")
        if not self._create and not os.path.exists(self.path):
            raise StorageUnavailableError(f"no database at {self.path!r}", path=self.path)
        return registry.get(self.path, reopen_if_replaced=reopen_if_replaced, create=self._create)

    async def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        if self._offload:
            return await self._in_worker(functools.partial(self._run_blocking, operation, write))
        while True:
            engine = self._engine()
            try:
                return await (engine.write(operation) if write else engine.read(operation))
            except EngineClosed:  # evicted while the call waited for the lock: look up again
                continue

    async def _in_worker(self, call: Callable[[], T]) -> T:
        if self._executor is not None and self._executor_pid != os.getpid():
            # Forked (e.g. gunicorn --preload): the parent's thread does not exist here, and
            # its executor would queue the call forever. Leave it unused, as the engines do.
            _inherited_executors.append(self._executor)
            self._executor = None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="agent-sessions-sqlite")
            self._executor_pid = os.getpid()
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _run_blocking(self, operation: Callable[[sqlite3.Connection], T], write: bool) -> T:
        # In a worker thread: its own connection, checked against a replaced file per call
        # (a long-lived manager, the daemon's, must not go on with a file nobody uses).
        return self._engine(reopen_if_replaced=True).run_blocking(operation, write=write)

    # --- lifecycle ---

    async def open(self) -> None:
        """Create or migrate the database now (in a worker thread: it may wait on a migration).

        Raises:
            StorageError: (a subclass) naming the path if it cannot be opened.
        """
        if self._memory is None:
            await self._in_worker(self._open_blocking)

    def _open_blocking(self) -> None:
        # The schema is checked on every open, not only when a connection is made: another
        # process may have migrated the file since this thread's connection was opened.
        engine = self._engine(reopen_if_replaced=True)
        with translate_errors(self.path):
            schema.migrate(engine.conn)

    async def migrate(self) -> tuple[int, int]:
        """See ``Backend.migrate``."""
        if self._memory is not None:
            return 0, schema.LATEST_VERSION
        return await self._in_worker(self._migrate_blocking)

    def _migrate_blocking(self) -> tuple[int, int]:
        # A connection of its own, so the count is this call's, not a cached engine's.
        if not self._create and not os.path.exists(self.path):
            raise StorageUnavailableError(f"no database at {self.path!r}", path=self.path)
        path = prepare_path(self.path)
        with translate_errors(path), contextlib.closing(sqlite3.connect(path)) as conn:
            configure_connection(conn)
            applied = schema.migrate(conn)
            return applied, schema.schema_version(conn)

    def open_session(self, user_id: str, conversation_id: str, session_id: str) -> str:
        """Open the file for a session and return the id its history is stored under.

        Synchronous: ``AgentSession`` calls it from its constructor, so a bad path fails
        there, naming it. Usually ``session_id`` itself; in a database adopted from a plain
        ``SQLiteSession``, the pair's hand-built ``user_{user}_conv_{conversation}`` id
        where that holds its history.

        Raises:
            InvalidIdentifierError: if ``session_id`` belongs to another pair here.
            StorageError: (a subclass) naming the path if it cannot be opened.
        """
        engine = self._engine(reopen_if_replaced=True)
        # Only ids with a percent-escape need a look at the file. Such an id may also be the
        # hand-built id of another pair in an adopted SQLiteSession database (user_a%5Fb_conv_c
        # of user "a%5Fb"), whose history this pair must not see; and this pair's own
        # hand-built id (user_a_b_conv_c) may hold its history.
        if "%" not in session_id:
            return session_id
        mine = (user_id, conversation_id)
        unclaimed = (None, None)  # e.g. a row a plain SQLiteSession created on this file
        with translate_errors(self.path):
            owner = sql.session_owner(engine.conn, session_id)
            if owner == mine:
                return session_id
            legacy = f"user_{user_id}_conv_{conversation_id}"
            if legacy_owner(legacy) == mine and sql.session_owner(engine.conn, legacy) in (
                mine,
                unclaimed,
            ):
                return legacy
        if owner not in (None, unclaimed):
            raise InvalidIdentifierError(
                f"session id {session_id!r} of user {user_id!r}, conversation "
                f"{conversation_id!r} belongs in {self.path!r} to user {owner[0]!r}, "
                f"conversation {owner[1]!r} (a hand-built id adopted from a plain "
                "SQLiteSession database); it is not opened for this pair"
            )
        return session_id

    async def close(self) -> None:
        """End the worker thread and discard an in-memory database; idempotent.

        File connections stay shared for the next user (see ``engine``).
        """
        self.close_now()

    def close_now(self) -> None:
        """``close``, for synchronous callers."""
        memory, self._memory = self._memory, None
        if memory is not None:
            memory.close()
        executor, self._executor = self._executor, None
        if executor is not None and self._executor_pid == os.getpid():
            # Not waiting: a call orphaned by a closed event loop may still be finishing its
            # transaction there; the thread ends after it.
            executor.shutdown(wait=False)

    @property
    def holds_resources(self) -> bool:
        """Whether ``close()`` has something to release (a worker thread)."""
        return self._executor is not None

    # --- one session ---

    async def read_items(
        self, session_id: str, limit: int | None, active_since: float | None = None
    ) -> DecodedRows:
        """See ``Backend.read_items``."""
        return await self._run(
            lambda conn: sql.read_items(conn, session_id, limit, active_since, self._keyring)
        )

    async def stored_items(self, session_id: str) -> DecodedRows | None:
        """See ``Backend.stored_items``."""
        return await self._run(lambda conn: sql.stored_items(conn, session_id, self._keyring))

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
        """See ``Backend.append_items``."""
        refuse = self._keyring is None
        return await self._run(
            lambda conn: sql.append_items(
                conn,
                key,
                items,
                payloads,
                now,
                max_items,
                active_since,
                title,
                index=self._search_index,
                refuse_if_encrypted=refuse,
            ),
            write=True,
        )

    async def pop_item(
        self, session_id: str, now: float, active_since: float | None = None
    ) -> Item | None:
        """See ``Backend.pop_item``."""
        return await self._run(
            lambda conn: sql.pop_newest(conn, session_id, now, active_since, self._keyring),
            write=True,
        )

    async def delete_session(self, session_id: str) -> int | None:
        """See ``Backend.delete_session``."""
        return await self._run(lambda conn: sql.delete_session(conn, session_id), write=True)

    async def session_owner(self, session_id: str) -> Owner | None:
        """See ``Backend.session_owner``."""
        return await self._run(lambda conn: sql.session_owner(conn, session_id))

    async def prune_session(self, session_id: str, max_items: int) -> int | None:
        """See ``Backend.prune_session``."""
        return await self._run(
            lambda conn: sql.prune_session(conn, session_id, max_items), write=True
        )

    async def read_session_fields(
        self, session_id: str, active_since: float | None
    ) -> SessionFields | None:
        """See ``Backend.read_session_fields``."""
        return await self._run(lambda conn: sql.read_session_fields(conn, session_id, active_since))

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
        return await self._run(
            lambda conn: sql.set_session_fields(
                conn, key, now, active_since, create, title, metadata
            ),
            write=True,
        )

    # --- turn locks ---

    async def turn_lock_is_free(self, session_id: str, now: float) -> bool:
        """See ``Backend.turn_lock_is_free``."""
        return await self._run(lambda conn: sql.turn_lock_is_free(conn, session_id, now))

    async def take_turn_lock(self, session_id: str, owner: str, now: float, expires: float) -> bool:
        """See ``Backend.take_turn_lock``."""
        return await self._run(
            lambda conn: sql.take_turn_lock(conn, session_id, owner, now, expires), write=True
        )

    async def renew_turn_lock(self, session_id: str, owner: str, expires: float) -> bool:
        """See ``Backend.renew_turn_lock``."""
        return await self._run(
            lambda conn: sql.renew_turn_lock(conn, session_id, owner, expires), write=True
        )

    async def release_turn_lock(self, session_id: str, owner: str) -> bool:
        """See ``Backend.release_turn_lock``."""
        return await self._run(
            lambda conn: sql.release_turn_lock(conn, session_id, owner), write=True
        )

    # --- many sessions ---

    async def session_stats(self, session_id: str) -> SessionStats | None:
        """See ``Backend.session_stats``."""
        return await self._run(lambda conn: sql.session_stats(conn, session_id, self._keyring))

    async def list_sessions(
        self,
        user_id: str | None,
        limit: int,
        offset: int,
        after: ListPosition | None = None,
        active_since: float | None = None,
    ) -> list[tuple[SessionStats, ListPosition]]:
        """See ``Backend.list_sessions``."""
        return await self._run(
            lambda conn: sql.list_sessions(
                conn, user_id, limit, offset, after, active_since, self._keyring
            )
        )

    async def user_session_ids(self, user_id: str, after: str | None, limit: int) -> list[str]:
        """See ``Backend.user_session_ids``."""
        return await self._run(lambda conn: sql.user_session_ids(conn, user_id, after, limit))

    @property
    def deletes_users_atomically(self) -> bool:
        """``True``: ``delete_user`` is one transaction."""
        return True

    async def delete_user_batch(self, user_id: str, limit: int) -> tuple[int, int]:
        """See ``Backend.delete_user_batch``."""
        return await self._run(lambda conn: sql.delete_user_batch(conn, user_id, limit), write=True)

    async def delete_user(self, user_id: str) -> tuple[int, int]:
        """See ``Backend.delete_user``: one transaction."""
        return await self._run(lambda conn: sql.delete_user(conn, user_id), write=True)

    async def list_idle_sessions(self, cutoff: float, limit: int | None) -> list[SessionStats]:
        """See ``Backend.list_idle_sessions``."""
        return await self._run(
            lambda conn: sql.list_idle_sessions(conn, cutoff, limit, self._keyring)
        )

    async def search_sessions(
        self, user_id: str, terms: Sequence[str], limit: int, active_since: float | None
    ) -> list[SearchHit]:
        """See ``Backend.search_sessions``; first indexes every row written since the last.

        The pending check shares the search's own read: with nothing pending (searches in a
        row) a search costs what it did when rows were indexed as they were written.
        """

        def search(conn: sqlite3.Connection) -> list[SearchHit]:
            return sql.search_sessions(conn, user_id, terms, limit, active_since, self._keyring)

        def search_if_current(conn: sqlite3.Connection) -> list[SearchHit] | None:
            return None if sql.any_pending(conn) else search(conn)

        if self._search_index:
            hits = await self._run(search_if_current)
            if hits is not None:
                return hits
            await self.index_pending()
        return await self._run(search)

    async def index_pending(self, *, yielding: bool = False) -> None:
        """Index every row written since the last indexing, a batch per short transaction.

        Batches are sized to hold the write lock about ``INDEX_TRANSACTION_SECONDS`` (as
        cleanup's are); with ``yielding`` (the sweep: nobody waits for it) as long is left
        free after each, so live writers get their turn. A no-op with
        ``search_index=False``: this process then does not index.
        """
        if not self._search_index:
            return
        keyring = self._index_keyring
        size = FIRST_INDEX_BATCH
        while True:
            started = time.perf_counter()
            more = await self._run(
                functools.partial(sql.index_pending, keyring=keyring, limit=size), write=True
            )
            held = time.perf_counter() - started
            if not more:
                return
            scale = min(2.0, max(0.5, INDEX_TRANSACTION_SECONDS / max(held, 1e-6)))
            size = max(10, min(sql.INDEX_BATCH * 4, math.ceil(size * scale)))
            if yielding:
                await asyncio.sleep(min(held, INDEX_TRANSACTION_SECONDS))

    async def session_ids(self) -> list[str]:
        """See ``Backend.session_ids``."""
        return await self._run(sql.session_ids)

    async def totals(self, active_since: float) -> Totals:
        """See ``Backend.totals``."""
        return await self._run(lambda conn: sql.totals(conn, active_since))

    async def count_idle_sessions(self, cutoff: float) -> int:
        """See ``Backend.count_idle_sessions``."""
        return await self._run(lambda conn: sql.count_idle_sessions(conn, cutoff))

    async def delete_idle_batch(self, cutoff: float, batch_size: int) -> int:
        """See ``Backend.delete_idle_batch``; checkpoints the WAL every so many batches."""
        deleted = await self._run(
            lambda conn: sql.delete_idle_batch(conn, cutoff, batch_size), write=True
        )
        self._cleanup_batches += 1
        if deleted and self._cleanup_batches % CHECKPOINT_EVERY_CLEANUP_BATCHES == 0:
            await self.finish_cleanup()
        return deleted

    async def dump_session(self, session_id: str) -> SessionDump | None:
        """See ``Backend.dump_session``."""
        return await self._run(lambda conn: sql.dump_session(conn, session_id))

    async def load_session(self, dump: SessionDump) -> None:
        """See ``Backend.load_session``."""
        await self._run(
            lambda conn: sql.load_session(conn, dump, index=self._search_index), write=True
        )

    async def finish_cleanup(self) -> None:
        """Index pending rows, then checkpoint the WAL passively (never blocking anyone).

        Indexing here keeps the backlog a search finds small.

        A failure to index (a full disk) is logged, not raised: the sweep's deletes stand,
        and the next search indexes those rows (or raises).
        """
        try:
            await self.index_pending(yielding=True)
        except StorageError:
            logger.warning("agent_sessions: could not index rows for search", exc_info=True)
        await self._run(lambda conn: conn.execute(CHECKPOINT_PASSIVE).close())

    # --- health ---

    async def health(self, active_since: float) -> HealthFacts:
        """See ``Backend.health``; the size is the file's with its ``-wal`` and ``-shm``."""

        def read(conn: sqlite3.Connection) -> HealthFacts:
            return HealthFacts(
                totals=sql.totals(conn, active_since),
                oldest_activity=sql.oldest_activity(conn),
                database_bytes=self._file_bytes(),
                last_sweep=sql.last_sweep(conn),
            )

        return await self._run(read)

    def _file_bytes(self) -> int | None:
        if self.path == ":memory:":
            return None
        total = 0
        for name in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
            with contextlib.suppress(FileNotFoundError):  # no WAL yet, or checkpointed away
                total += os.stat(name).st_size
        return total

    async def start_sweep(self, started: float) -> int:
        """See ``Backend.start_sweep``."""
        return await self._run(lambda conn: sql.start_sweep(conn, started), write=True)

    async def finish_sweep(
        self,
        sweep_id: int,
        finished: float,
        outcome: Literal["ok", "failed"],
        sessions_deleted: int,
        error: str | None,
    ) -> None:
        """See ``Backend.finish_sweep``."""
        await self._run(
            lambda conn: sql.finish_sweep(
                conn, sweep_id, finished, outcome, sessions_deleted, error
            ),
            write=True,
        )

    # --- re-encoding rows ---

    async def scan_rows(self, after: tuple[str, int] | None, limit: int) -> list[StoredRow]:
        """See ``Backend.scan_rows``: in row id order."""
        start = 0 if after is None else after[1]
        return await self._run(lambda conn: sql.scan_rows(conn, start, limit))

    async def replace_rows(self, changes: Sequence[RowChange]) -> int:
        """See ``Backend.replace_rows``."""
        return await self._run(lambda conn: sql.replace_rows(conn, changes), write=True)

    async def scan_session_fields(self, after: str | None, limit: int) -> list[StoredFields]:
        """See ``Backend.scan_session_fields``."""
        return await self._run(lambda conn: sql.scan_session_fields(conn, after, limit))

    async def replace_session_fields(self, changes: Sequence[FieldsChange]) -> int:
        """See ``Backend.replace_session_fields``."""
        return await self._run(lambda conn: sql.replace_session_fields(conn, changes), write=True)

    async def drop_search_index(self) -> int:
        """See ``Backend.drop_search_index``: 500 entries a transaction, then a merge."""
        dropped = 0
        while done := await self._run(lambda conn: sql.drop_search_batch(conn, 500), write=True):
            dropped += done
        await self._run(lambda conn: conn.execute(sql.OPTIMIZE_SEARCH).close(), write=True)
        return dropped

    async def begin_rewrite(self) -> None:
        """See ``Backend.begin_rewrite``: what this connection overwrites is zeroed."""
        await self._run(lambda conn: conn.execute("PRAGMA secure_delete = ON").close())

    async def finish_rewrite(self) -> None:
        """See ``Backend.finish_rewrite``: the WAL's old frames are checkpointed and dropped."""
        await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").close())

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"
