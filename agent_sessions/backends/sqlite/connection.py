"""SQLite connections: error translation, paths and file identity, pragmas, transactions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import (
    CorruptDatabaseError,
    InvalidArgumentError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another connection's write lock before failing."""

# --- errors -------------------------------------------------------------------------------

_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_FULL_CODES = {13}  # SQLITE_FULL
# SQLITE_IOERR_SHMSIZE: the WAL index (-shm) could not grow. SQLite does not check errno
# there, but on a full filesystem this is how a growing WAL fails; it is a full disk.
_FULL_EXTENDED_CODES = {4874}
_UNAVAILABLE_CODES = {8, 10, 14, 23}  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, AUTH
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def translate_error(exc: sqlite3.Error, path: str | Path) -> StorageError:
    """Map a driver error to the library's ``StorageError`` tree, naming the database."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    where = f"database {str(path)!r}"
    if primary in _FULL_CODES or code in _FULL_EXTENDED_CODES or "full" in text:
        return StorageFullError(f"storage is full: {where}: {text}", path=str(path))
    if primary in _BUSY_CODES or "locked" in text:
        return StorageBusyError(
            f"{where} stayed locked by other writers for over {BUSY_TIMEOUT_MS // 1000} s: {text}",
            path=str(path),
        )
    if primary in _CORRUPT_CODES or any(
        sign in text for sign in ("not a database", "malformed", "unsupported file format")
    ):
        return CorruptDatabaseError(
            f"{where} is not a usable SQLite database: {text}", path=str(path)
        )
    if primary in _UNAVAILABLE_CODES or "unable to open" in text or "readonly" in text:
        return StorageUnavailableError(f"cannot open or write {where}: {text}", path=str(path))
    return StorageError(f"{where}: {text}", path=str(path))


@contextlib.contextmanager
def translate_errors(path: str | Path) -> Iterator[None]:
    """Re-raise ``sqlite3`` errors inside the block as ``StorageError`` subclasses."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate_error(exc, path) from exc


# --- connections ----------------------------------------------------------------------------


def database_path(db_path: object) -> str:
    """Return a ``db_path`` argument as the path string every component uses.

    ``~`` is expanded and a relative path made absolute against the working directory of
    the moment, so a session keeps its file in every thread, and a later ``chdir`` does not
    split one database into two. ``":memory:"`` and ``file:`` URIs are kept as given.

    Raises:
        InvalidArgumentError: if ``db_path`` is not a ``str`` or ``os.PathLike`` of ``str``.
        StorageUnavailableError: if it is relative and the working directory is gone.
    """
    text = os.fspath(db_path) if isinstance(db_path, os.PathLike) else db_path
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"db_path must be a non-empty str or path, got {db_path!r}")
    if text == ":memory:" or text.startswith("file:"):
        return text
    try:
        return os.path.abspath(os.path.expanduser(text))
    except OSError as exc:  # the working directory was deleted
        raise StorageUnavailableError(
            f"cannot resolve the relative database path {text!r}: {exc.strerror or exc}",
            path=text,
        ) from exc


def prepare_path(db_path: str | Path) -> str:
    """Return ``db_path`` as a string, creating its parent folder for file databases.

    Raises:
        StorageUnavailableError: if the folder cannot be created or the path is a folder.
    """
    text = str(db_path)
    if text == ":memory:" or text.startswith("file:"):
        return text
    try:
        if "\x00" in text:
            raise ValueError("embedded NUL character")
        text.encode("utf-8")  # a lone surrogate cannot name a file SQLite can open
        path = Path(text).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        is_folder = path.is_dir()
    except (OSError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = "a folder on the path is a file"
        raise StorageUnavailableError(
            f"cannot use {text!r} as a database path: {reason}", path=text
        ) from exc
    if is_folder:
        raise StorageUnavailableError(f"database path {text!r} is a folder", path=text)
    return str(path)


@dataclass(frozen=True)
class FileIdentity:
    """Which file a connection opened.

    A connection keeps using that file after it is deleted or replaced; comparing identities
    tells a current connection from a stale one.
    """

    path: str
    """Absolute, so a later change of working directory is not taken for a new file."""
    device_inode: tuple[int, int] | None

    @classmethod
    def of(cls, path: str) -> FileIdentity | None:
        """The identity of the file at ``path`` now; ``None`` for in-memory and URI paths."""
        if path == ":memory:" or path.startswith("file:"):
            return None
        absolute = os.path.abspath(path)
        return cls(absolute, _device_inode(absolute))

    def changed(self) -> bool:
        """Whether the file at ``path`` is no longer the one identified (or is gone)."""
        return _device_inode(self.path) != self.device_inode


def _device_inode(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


CONNECTION_PRAGMAS = (
    # A long busy timeout turns lock waits between processes into waits, not errors.
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    # Durable across process crashes in WAL mode; a power loss may drop the newest commits
    # but never corrupts the file.
    "PRAGMA synchronous = NORMAL",
)


DISABLE_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = 0"
CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"


def configure_connection(conn: sqlite3.Connection) -> None:
    """Set the per-connection pragmas every connection of ours uses."""
    for pragma in CONNECTION_PRAGMAS:
        conn.execute(pragma)


def enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL so readers never block writers.

    Raises:
        StorageError: if SQLite keeps another journal mode (e.g. on a filesystem without
            shared memory), naming the file.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            # Another process converting the file at the same moment: SQLite reports it as
            # locked without calling the busy handler, so wait here.
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
    mode = str(row[0]).lower() if row else "?"
    if mode not in ("wal", "memory"):
        path = database_file(conn)
        raise StorageError(
            f"database {path!r} could not be switched to WAL (journal mode stays {mode!r})",
            path=path,
        )


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction; commit, or roll back on error.

    ``IMMEDIATE`` takes the write lock up front, so a transaction that reads before it writes
    cannot fail half-way with an unretryable lock upgrade.
    """
    if conn.in_transaction:  # never inherit a transaction an earlier failure left open
        conn.rollback()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.commit()  # inside the try: a COMMIT that fails (disk full, I/O) must roll back
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database (``":memory:"`` for none)."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row is not None and row[2] else ":memory:"
