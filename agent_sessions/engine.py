"""Connections for ``AgentSession``: one per database file and thread, used inline.

Every session object on a file in a thread shares one ``sqlite3`` connection, opened,
configured and migrated once, so opening a session per request costs a dictionary lookup.
Statements run directly in the event loop's thread: a SQLite read or a WAL commit with
``synchronous=NORMAL`` takes microseconds, far less than a hop to a worker thread. What can
take long is kept off the loop:

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

from . import storage

logger = logging.getLogger("agent_sessions")

T = TypeVar("T")

CHECKPOINT_EVERY = 500
"""Commits between two background checkpoints of the WAL."""

IDLE_CONNECTIONS_KEPT = 8
"""Connections kept open after their last session closed, so reopening is cheap."""

_FIRST_RETRY_DELAY = 0.0002
_MAX_RETRY_DELAY = 0.004


_Key = tuple[str, int, int]  # (path, pid, thread id)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(exc)


class Engine:
    """One configured, migrated connection to a database, for use from one thread."""

    def __init__(self, path: str, key: _Key | None = None) -> None:
        self.path = path
        self.key = key
        self.memory = path == ":memory:"
        self.users = 0
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        with storage.translate_errors(path):
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                storage.configure_connection(conn)  # long busy timeout for the set-up
                if not self.memory:
                    storage.enable_wal(conn)
                storage.migrate(conn)
                conn.execute("PRAGMA busy_timeout = 0")
                if not self.memory:
                    conn.execute(storage.DISABLE_AUTOCHECKPOINT)
            except BaseException:
                conn.close()
                raise
        self.conn = conn

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
        deadline = time.monotonic() + storage.BUSY_TIMEOUT_MS / 1000
        delay = _FIRST_RETRY_DELAY
        while True:
            try:
                if not write:
                    return operation(self.conn)
                with storage.write_transaction(self.conn):
                    return operation(self.conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise storage.translate_error(exc, self.path) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def _start_checkpoint(self) -> None:
        if self.memory or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        loop = asyncio.get_running_loop()
        self._checkpoint = loop.run_in_executor(None, _checkpoint, self.path)

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL if it is the last one)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _checkpoint(path: str) -> None:
    # A separate short-lived connection: the fsyncs happen in this worker thread. PASSIVE
    # never waits for, or blocks, readers and writers.
    try:
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            conn.execute(storage.CHECKPOINT_PASSIVE)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        logger.warning("background WAL checkpoint of %s failed: %s", path, exc)


class _Registry:
    """Engines by (file, thread); idle ones are kept in a small LRU, then closed."""

    def __init__(self) -> None:
        # Reentrant: a session's __del__ may release its engine from inside acquire(), when
        # the garbage collector runs during an allocation there.
        self._lock = threading.RLock()
        self._engines: dict[_Key, Engine] = {}
        self._idle: OrderedDict[_Key, Engine] = OrderedDict()

    def acquire(self, path: str) -> Engine:
        """Return the engine for ``path`` in this thread, opening it on first use.

        Raises:
            StorageError: (a subclass) naming the path if it cannot be opened.
        """
        if path == ":memory:":
            private = Engine(path)  # like the SDK, every in-memory session is its own database
            private.users = 1
            return private
        # The pid is part of the key: a connection must not be used across fork().
        key = (path, os.getpid(), threading.get_ident())
        with self._lock:
            shared = self._engines.get(key)
            if shared is not None:
                self._idle.pop(key, None)
                shared.users += 1
                return shared
        # Outside the lock: opening may wait on another process's migration.
        engine = Engine(storage.prepare_path(path), key)
        with self._lock:
            existing = self._engines.get(key)
            if existing is not None:  # another session in this thread opened it meanwhile
                engine.close()
                engine = existing
                self._idle.pop(key, None)
            self._engines[key] = engine
            engine.users += 1
            return engine

    def release(self, engine: Engine) -> None:
        """Drop one user of ``engine``; unused engines are kept idle, a few at most."""
        if engine.key is None:
            engine.close()
            return
        evicted: list[Engine] = []
        with self._lock:
            engine.users -= 1
            if engine.users > 0 or self._engines.get(engine.key) is not engine:
                return
            self._idle[engine.key] = engine
            while len(self._idle) > IDLE_CONNECTIONS_KEPT:
                _, old = self._idle.popitem(last=False)
                if old.key is not None:
                    del self._engines[old.key]
                evicted.append(old)
        for old in evicted:
            old.close()

    def close_idle(self) -> None:
        with self._lock:
            idle = list(self._idle.items())
            self._idle.clear()
            for key, _ in idle:
                self._engines.pop(key, None)
        for _, engine in idle:
            engine.close()


registry = _Registry()
atexit.register(registry.close_idle)


def close_idle_connections() -> None:
    """Close the connections kept open for reuse after their sessions closed."""
    registry.close_idle()
