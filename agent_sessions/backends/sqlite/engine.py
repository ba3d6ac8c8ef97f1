"""Connections of the SQLite backend: one per database file and thread.

Every session object on a file shares one ``sqlite3`` connection per thread, opened,
configured and migrated once, so opening a session per request costs a dictionary lookup.
Session statements run directly in the event loop's thread (``Engine.read``/``write``): a
SQLite read or a WAL commit with ``synchronous=NORMAL`` takes microseconds, far less than a
hop to a worker thread. The manager's longer operations run in worker threads instead
(``Engine.run_blocking``), each on that thread's own connection. What can take long is kept
off the loop:

* waiting for another connection's write lock: the connection's busy timeout is 0, so a
  locked database fails at once and the operation is retried after an ``asyncio.sleep``
  with a capped backoff, letting other tasks run meanwhile (up to ``BUSY_TIMEOUT_MS``);
* writing the WAL back into the database (the checkpoint, which fsyncs): automatic
  checkpoints are off on these connections, and a passive checkpoint runs in a worker
  thread every ``CHECKPOINT_EVERY`` commits.

A transaction never spans an ``await``, so tasks sharing a connection never interleave
inside one, and a cancelled caller either finished its write or never started it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from . import connection, schema

logger = logging.getLogger("agent_sessions")

T = TypeVar("T")

CHECKPOINT_EVERY = 500
"""Commits between two background checkpoints of the WAL."""

MAX_CONNECTIONS = 64
"""Connections kept open per thread (one per database file in use)."""

_FIRST_RETRY_DELAY = 0.0002
_MAX_RETRY_DELAY = 0.004


_Key = tuple[str, int, int]  # (path, pid, thread id)


class EngineClosed(Exception):
    """The engine was closed while a call waited on it; look it up again."""


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(exc)


class Engine:
    """One configured, migrated connection to a database, for use from one thread."""

    def __init__(self, path: str, key: _Key | None = None, *, create: bool = True) -> None:
        self.path = path
        self.key = key
        self.memory = path == ":memory:"
        self.closed = False
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        with connection.translate_errors(path):
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                connection.configure_connection(conn)  # long busy timeout for the set-up
                schema.prepare(conn, path, create=create)
                conn.execute("PRAGMA busy_timeout = 0")
                if not self.memory:
                    conn.execute(connection.DISABLE_AUTOCHECKPOINT)
            except BaseException:
                conn.close()
                raise
        self.conn = conn
        self.identity = connection.FileIdentity.of(path)

    def is_stale(self) -> bool:
        """Whether the file this engine opened was deleted or replaced since."""
        return self.identity is not None and self.identity.changed()

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` on the connection, retrying while the database is locked."""
        return await self._run(operation, write=False)

    async def write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in one ``BEGIN IMMEDIATE`` transaction, retrying while locked."""
        result = await self._run(operation, write=True)
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            self._start_checkpoint()
        return result

    async def _run(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        deadline = time.monotonic() + connection.BUSY_TIMEOUT_MS / 1000
        delay = _FIRST_RETRY_DELAY
        while True:
            try:
                if not write:
                    return operation(self.conn)
                with connection.write_transaction(self.conn):
                    return operation(self.conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise connection.translate_error(exc, self.path) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)
            if self.closed:  # evicted while this call waited: the caller reopens and retries
                raise EngineClosed(self.path)

    def run_blocking(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``operation`` (in one transaction with ``write``) from a worker thread.

        Waits for another connection's write lock by sleeping in this thread, never in the
        event loop, for up to ``BUSY_TIMEOUT_MS``.
        """
        deadline = time.monotonic() + connection.BUSY_TIMEOUT_MS / 1000
        delay = _FIRST_RETRY_DELAY
        while True:
            try:
                if not write:
                    return operation(self.conn)
                with connection.write_transaction(self.conn):
                    return operation(self.conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise connection.translate_error(exc, self.path) from exc
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def checkpoint(self) -> None:
        """Write the WAL back into the database without waiting for readers or writers."""
        with connection.translate_errors(self.path):
            self.conn.execute(connection.CHECKPOINT_PASSIVE)

    def _start_checkpoint(self) -> None:
        if self.memory or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        loop = asyncio.get_running_loop()
        self._checkpoint = loop.run_in_executor(None, _checkpoint, self.path)

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL if it is the last one)."""
        self.closed = True
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _checkpoint(path: str) -> None:
    # A separate short-lived connection: the fsyncs happen in this worker thread. PASSIVE
    # never waits for, or blocks, readers and writers.
    try:
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            conn.execute(connection.CHECKPOINT_PASSIVE)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        logger.warning("background WAL checkpoint of %s failed: %s", path, exc)


class _Registry:
    """Engines by (file, process, thread): ``MAX_CONNECTIONS`` per thread, LRU.

    Sessions hold no connection: each call looks its engine up here for the thread it runs
    in, so a session created in one thread and used in another never shares a connection
    across threads, and an engine closed for space is simply reopened on the next call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: OrderedDict[_Key, Engine] = OrderedDict()

    def get(self, path: str, *, reopen_if_replaced: bool = False, create: bool = True) -> Engine:
        """The engine for ``path`` in this process and thread, opened on first use.

        With ``reopen_if_replaced`` (when a session is opened, not on every call), a cached
        engine whose file was deleted or replaced is closed and the path opened afresh. With
        ``create=False``, a database without session tables is refused when opened.

        Raises:
            StorageError: (a subclass) naming the path if it cannot be opened.
        """
        key = (path, os.getpid(), threading.get_ident())
        with self._lock:
            engine = self._engines.get(key)
            stale = engine is not None and reopen_if_replaced and engine.is_stale()
            if engine is not None and not stale:
                self._engines.move_to_end(key)
                return engine
            if engine is not None:
                del self._engines[key]
        if engine is not None:  # stale: calls still waiting on it reopen (EngineClosed)
            logger.warning("database %s was deleted or replaced; opening it again", path)
            engine.close()
        # Outside the lock: opening may wait on another process's migration.
        engine = Engine(connection.prepare_path(path), key, create=create)
        evicted: list[Engine] = []
        with self._lock:
            existing = self._engines.get(key)
            if existing is not None:  # opened meanwhile by a call in this thread
                evicted.append(engine)
                engine = existing
            self._engines[key] = engine
            evicted += self._evict(key[2])
        for old in evicted:
            old.close()
        return engine

    def _evict(self, thread: int) -> list[Engine]:
        # Only engines no other thread can be using right now are closed: this thread's
        # least recently used beyond the limit, and those of threads that have ended.
        alive = {t.ident for t in threading.enumerate()}
        evicted = [self._engines.pop(key) for key in list(self._engines) if key[2] not in alive]
        mine = [key for key in self._engines if key[2] == thread]
        for key in mine[: max(0, len(mine) - MAX_CONNECTIONS)]:
            evicted.append(self._engines.pop(key))
        return evicted

    def close_all(self) -> None:
        """Close every engine this process opened."""
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        pid = os.getpid()
        for engine in engines:
            if engine.key is None or engine.key[1] == pid:
                engine.close()

    def forget_after_fork(self) -> None:
        # In a forked child the parent's connections must be neither used nor closed (closing
        # one could checkpoint or unlock the parent's files): keep them referenced, unused.
        _inherited.extend(self._engines.values())
        self._engines = OrderedDict()
        self._lock = threading.Lock()


_inherited: list[Engine] = []
registry = _Registry()
atexit.register(registry.close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=registry.forget_after_fork)


def close_idle_connections() -> None:
    """Close this process's cached connections; the next call on a session reopens one."""
    registry.close_all()
