"""SQLite storage: the schema, its migrations, and every SQL statement the library runs.

Session and manager code never format SQL; they call the functions here (synchronous, on a
``sqlite3.Connection``) or pass the named statements to ``aiosqlite``. This module is the seam
where another backend plugs in.

The tables are the SDK's own ``agent_sessions``/``agent_messages`` (so a database written by a
plain ``agents.SQLiteSession`` is adopted in place, and stays readable by it), plus columns of
ours on ``agent_sessions`` and a table recording which migrations ran. Timestamps we write are
POSIX seconds (``REAL``, UTC) from an injected clock; the SDK's ``CURRENT_TIMESTAMP`` text is
converted once, in SQL, to the same format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    CorruptDatabaseError,
    InvalidArgumentError,
    InvalidItemError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from .ids import legacy_owner
from .pruning import (
    Item,
    answers_late,
    cut_index,
    is_user_message,
    late_call_index,
    outputs_needing_stored_calls,
    pairing,
)

logger = logging.getLogger("agent_sessions")

SESSIONS_TABLE = "agent_sessions"
MESSAGES_TABLE = "agent_messages"
SCHEMA_TABLE = "agent_sessions_schema"
TURN_LOCKS_TABLE = "agent_sessions_turn_locks"

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another connection's write lock before failing."""

# The SDK's naive-UTC CURRENT_TIMESTAMP text (whole seconds) as POSIX seconds. strftime('%s')
# is exact where julianday() arithmetic is off by microseconds, and unlike unixepoch() it
# needs no SQLite 3.38.
_SDK_TEXT_TO_TS = "CAST(strftime('%s', {col}) AS REAL)"
_NOW_TS = "CAST(strftime('%s', 'now') AS REAL)"


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


SELECT_SESSION_TABLES = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
    f"('{SESSIONS_TABLE}', '{MESSAGES_TABLE}')"
)


def connect(db_path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open a configured, migrated connection (used by the manager, the CLI and tooling).

    Args:
        db_path: The database file.
        create: Add the session tables to a database that has none. With ``False`` such a
            database (an empty file, some other app's) is refused and left untouched.

    Raises:
        StorageError: (a subclass) naming the path if it cannot be opened or migrated.
    """
    text = prepare_path(db_path)
    with translate_errors(text):
        conn = sqlite3.connect(text, check_same_thread=False)
        try:
            configure_connection(conn)
            if not create and conn.execute(SELECT_SESSION_TABLES).fetchone()[0] == 0:
                raise StorageUnavailableError(
                    f"database {text!r} holds no sessions (no {SESSIONS_TABLE} or "
                    f"{MESSAGES_TABLE} table); it was left as it was",
                    path=text,
                )
            migrate(conn)  # first: a file we refuse is left exactly as it was, not WAL
            enable_wal(conn)
        except BaseException:
            conn.close()
            raise
    return conn


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


# --- schema and migrations ------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once inside the migrating transaction."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}


_REQUIRED_COLUMNS = {
    SESSIONS_TABLE: {"session_id", "created_at", "updated_at"},
    MESSAGES_TABLE: {"id", "session_id", "message_data", "created_at"},
}
_KEYS = {SESSIONS_TABLE: "session_id", MESSAGES_TABLE: "id"}
_WRITTEN_COLUMNS = {
    # What this library's inserts fill in; any other column needs a default or NULL.
    SESSIONS_TABLE: {"session_id", "user_id", "conversation_id", "created_ts", "last_activity_ts"},
    MESSAGES_TABLE: {"id", "session_id", "message_data"},  # id: the rowid
}
_WITHOUT_ROWID = re.compile(r"\bWITHOUT\s+ROWID\b", re.IGNORECASE)


def _foreign_table_problem(conn: sqlite3.Connection, table: str) -> str | None:
    """Why an existing ``table`` cannot be the SDK's (or ours), or ``None`` if it can."""
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    if not info:
        return None  # no such table: it will be created
    columns = {row[1] for row in info}
    if not _REQUIRED_COLUMNS[table] <= columns:
        return f"columns: {', '.join(sorted(columns))}"
    keys = [row[1] for row in info if row[5]]
    if keys != [_KEYS[table]]:
        # Writes rely on it: upserts by session_id, message order by a rowid ``id``.
        return f"its primary key is ({', '.join(keys)}), not ({_KEYS[table]})"
    if table == MESSAGES_TABLE:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        id_type = next(row[2] for row in info if row[1] == "id")
        if id_type.upper() != "INTEGER" or (sql and _WITHOUT_ROWID.search(sql[0] or "")):
            return "its id is not an INTEGER PRIMARY KEY naming the rowid"
    required = sorted(
        row[1]
        for row in info
        if row[3] and row[4] is None and row[1] not in _WRITTEN_COLUMNS[table]
    )
    if required:
        return f"it requires columns agent_sessions does not write: {', '.join(required)}"
    return None


def _check_existing_tables(conn: sqlite3.Connection) -> None:
    # The file may belong to an app with tables of the same names: refuse before changing
    # anything, rather than fail half-way, or on every write after the migration.
    for table in _REQUIRED_COLUMNS:
        problem = _foreign_table_problem(conn, table)
        if problem is not None:
            path = database_file(conn)
            raise StorageError(
                f"database {path!r} has a table {table} that is not an agent_sessions or "
                f"SQLiteSession table ({problem})",
                path=path,
            )


def _adopt_sdk_tables(conn: sqlite3.Connection) -> None:
    _check_existing_tables(conn)
    # The SDK's own DDL, so a database we create stays usable by a plain SQLiteSession.
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (
            session_id TEXT PRIMARY KEY,
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
        )"""
    )
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {MESSAGES_TABLE} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            message_data TEXT NOT NULL,
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
            FOREIGN KEY (session_id) REFERENCES {SESSIONS_TABLE} (session_id)
                ON DELETE CASCADE
        )"""
    )
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS idx_{MESSAGES_TABLE}_session_id "
        f"ON {MESSAGES_TABLE} (session_id, id)"
    )
    # Our columns carry no non-constant default: SQLite refuses to add such a column to a
    # table that already has rows.
    existing = _columns(conn, SESSIONS_TABLE)
    for column, kind in (
        ("user_id", "TEXT"),
        ("conversation_id", "TEXT"),
        ("created_ts", "REAL"),
        ("last_activity_ts", "REAL"),
    ):
        if column not in existing:
            conn.execute(f"ALTER TABLE {SESSIONS_TABLE} ADD COLUMN {column} {kind}")
    # Messages whose session row was deleted by hand are still history to the SDK (it reads
    # by session_id alone): give them a row so they are listed and expire like the rest.
    conn.execute(
        f"""INSERT INTO {SESSIONS_TABLE} (session_id, created_at, updated_at)
            SELECT session_id, MIN(created_at), MAX(created_at) FROM {MESSAGES_TABLE} AS m
            WHERE NOT EXISTS (
                SELECT 1 FROM {SESSIONS_TABLE} AS s WHERE s.session_id = m.session_id
            )
            GROUP BY session_id"""
    )
    conn.execute(
        f"""UPDATE {SESSIONS_TABLE} SET
            created_ts = coalesce(created_ts, {_SDK_TEXT_TO_TS.format(col="created_at")},
                                  {_NOW_TS}),
            last_activity_ts = coalesce({_SDK_TEXT_TO_TS.format(col="updated_at")},
                                        {_SDK_TEXT_TO_TS.format(col="created_at")},
                                        {_NOW_TS})
            WHERE last_activity_ts IS NULL"""
    )
    rows = conn.execute(f"SELECT session_id FROM {SESSIONS_TABLE} WHERE user_id IS NULL").fetchall()
    owners = []
    for (session_id,) in rows:
        parsed = legacy_owner(session_id) if isinstance(session_id, str) else None
        if parsed is not None:
            owners.append((parsed[0], parsed[1], session_id))
    conn.executemany(
        f"UPDATE {SESSIONS_TABLE} SET user_id = ?, conversation_id = ? WHERE session_id = ?",
        owners,
    )
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS idx_{SESSIONS_TABLE}_user "
        f"ON {SESSIONS_TABLE} (user_id, last_activity_ts)"
    )
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS idx_{SESSIONS_TABLE}_last_activity "
        f"ON {SESSIONS_TABLE} (last_activity_ts)"
    )
    # A plain SQLiteSession sharing the file writes only the SDK's columns; keep ours in step
    # so its sessions are listed and expire too.
    conn.execute(
        f"""CREATE TRIGGER IF NOT EXISTS {SESSIONS_TABLE}_sdk_insert
            AFTER INSERT ON {SESSIONS_TABLE} WHEN NEW.last_activity_ts IS NULL
            BEGIN
                UPDATE {SESSIONS_TABLE} SET
                    created_ts = coalesce({_SDK_TEXT_TO_TS.format(col="NEW.created_at")},
                                          {_NOW_TS}),
                    last_activity_ts = coalesce({_SDK_TEXT_TO_TS.format(col="NEW.updated_at")},
                                                {_NOW_TS})
                WHERE session_id = NEW.session_id;
            END"""
    )
    # Its writes to an existing session are followed by the trigger of migration 3.


def _add_late_call_row(conn: sqlite3.Connection) -> None:
    # What prune() knows of calls answered after a later user message; see LATE_CALL_NONE.
    if "late_call_row" not in _columns(conn, SESSIONS_TABLE):
        conn.execute(f"ALTER TABLE {SESSIONS_TABLE} ADD COLUMN late_call_row INTEGER")


def _recheck_after_sdk_writes(conn: sqlite3.Connection) -> None:
    # A plain SQLiteSession's write bumps updated_at: record it as activity, and since it
    # knows nothing of late_call_row, make prune() check that session whole again. Since
    # version 3 a NULL late_call_row means "not known" rather than "none", so every existing
    # session is checked once. (Databases migrated before version 3 had a trigger of this
    # name that only recorded the activity.)
    conn.execute(f"DROP TRIGGER IF EXISTS {SESSIONS_TABLE}_sdk_touch")
    conn.execute(
        f"""CREATE TRIGGER {SESSIONS_TABLE}_sdk_touch
            AFTER UPDATE OF updated_at ON {SESSIONS_TABLE}
            BEGIN
                UPDATE {SESSIONS_TABLE} SET
                    last_activity_ts = max(
                        coalesce(last_activity_ts, 0),
                        coalesce({_SDK_TEXT_TO_TS.format(col="NEW.updated_at")}, {_NOW_TS})),
                    late_call_row = NULL
                WHERE session_id = NEW.session_id;
            END"""
    )


def _add_turn_locks(conn: sqlite3.Connection) -> None:
    # One row per session whose turn lock is held: who holds it, and until when (POSIX
    # seconds) unless renewed. A row whose lease ran out belongs to no one (see turn_lock).
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {TURN_LOCKS_TABLE} (
            session_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_ts REAL NOT NULL
        )"""
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "adopt the SDK tables; add owner and activity columns", _adopt_sdk_tables),
    Migration(2, "remember calls answered after a later user message", _add_late_call_row),
    Migration(
        3, "re-check sessions for late answers, also after SDK writes", _recheck_after_sdk_writes
    ),
    Migration(4, "add per-session turn locks with leases", _add_turn_locks),
)
LATEST_VERSION = MIGRATIONS[-1].version


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database (``":memory:"`` for none)."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row is not None and row[2] else ":memory:"


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the newest migration applied to the database (0 for none)."""
    try:
        row = conn.execute(f"SELECT MAX(version) FROM {SCHEMA_TABLE}").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    try:
        return int(row[0] or 0)
    except (TypeError, ValueError):
        path = database_file(conn)
        raise StorageError(
            f"database {path!r} has a table {SCHEMA_TABLE} that agent_sessions did not write "
            f"(version {row[0]!r})",
            path=path,
        ) from None


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to ``LATEST_VERSION``; safe when several processes race to do it.

    Migrations run inside one ``BEGIN IMMEDIATE`` transaction and the version is re-read
    after the lock is taken, so the first process migrates and the others find it done.

    Returns:
        The number of migrations applied by this call.

    Raises:
        StorageError: if the database was migrated by a newer version of this library.
    """
    if schema_version(conn) == LATEST_VERSION:
        return 0
    if conn.in_transaction:
        conn.commit()
    with write_transaction(conn):
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
                version INTEGER PRIMARY KEY,
                description TEXT NOT NULL,
                applied_at REAL NOT NULL DEFAULT ({_NOW_TS})
            )"""
        )
        current = schema_version(conn)
        if current > LATEST_VERSION:
            path = database_file(conn)
            raise StorageError(
                f"database {path!r} has schema version {current}, newer than this "
                f"agent_sessions supports ({LATEST_VERSION}); upgrade agent_sessions",
                path=path,
            )
        applied = 0
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            migration.apply(conn)
            conn.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, description) VALUES (?, ?)",
                (migration.version, migration.description),
            )
            applied += 1
    return applied


# --- items ----------------------------------------------------------------------------------


MAX_ITEM_DEPTH = 200
"""Deepest nesting of lists and objects accepted in an item.

Python's JSON decoder recurses once per level and fails past the interpreter's recursion
limit (about 1,000, less the caller's own stack), so a deeper item could be written but not
read back. SDK items nest a handful of levels.
"""


def _structure_problem(item: object) -> str | None:
    """Why ``item`` would not read back as it was written, or ``None`` if it would.

    Two things JSON itself does not catch: nesting deeper than ``MAX_ITEM_DEPTH``, and keys
    that become equal once converted to JSON strings (``{1: "a", "1": "b"}`` would come back
    as ``{"1": "b"}``, losing a value).
    """
    stack: list[tuple[object, int]] = [(item, 1)]
    while stack:
        value, level = stack.pop()
        if type(value) is dict or isinstance(value, dict):
            if level > MAX_ITEM_DEPTH:
                return f"nests deeper than {MAX_ITEM_DEPTH} levels; it could not be read back"
            keys = value.keys()
            if any(type(key) is not str for key in keys):
                converted = json.loads(json.dumps(dict.fromkeys(keys, 0)))
                if len(converted) < len(value):
                    return "has keys that are equal as JSON strings (e.g. 1 and '1')"
            stack.extend((child, level + 1) for child in value.values())
        elif isinstance(value, list | tuple):
            if level > MAX_ITEM_DEPTH:
                return f"nests deeper than {MAX_ITEM_DEPTH} levels; it could not be read back"
            stack.extend((child, level + 1) for child in value)
    return None


def encode_items(items: Iterable[Any]) -> list[str]:
    """Serialise items to JSON text, rejecting anything that would not read back as an item.

    Raises:
        InvalidItemError: naming the position of the first item that is not a JSON object, is
            not serialisable, nests deeper than ``MAX_ITEM_DEPTH`` or has keys that collide
            as JSON strings; nothing is written then.
    """
    payloads = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidItemError(
                f"item {position} is a {type(item).__name__}, not a dict (a JSON object)"
            )
        try:
            payload = json.dumps(item, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidItemError(f"item {position} cannot be stored as JSON: {exc}") from exc
        problem = _structure_problem(item)
        if problem is not None:
            raise InvalidItemError(f"item {position} {problem}")
        payloads.append(payload)
    return payloads


_DECODER = json.JSONDecoder()


def decode_item(data: object) -> Item | None:
    """Decode one stored row, or return ``None`` if it is not exactly one JSON object."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        if not isinstance(data, str):
            return None
        # raw_decode skips json.loads' per-call set-up (most of its cost on small items);
        # the end offset proves the row holds one whole value and nothing after it.
        item, end = _DECODER.raw_decode(data)
        if end != len(data):
            item = json.loads(data)  # trailing whitespace is fine; anything else raises
    except (ValueError, RecursionError):
        return None
    return item if isinstance(item, dict) else None


@dataclass(frozen=True)
class DecodedRows:
    """Items decoded from stored rows, and the ids of rows that could not be decoded."""

    items: list[Item]
    corrupt_row_ids: list[int]


def decode_rows(rows: Iterable[tuple[int, object]]) -> DecodedRows:
    """Decode ``(row_id, message_data)`` rows in order, setting aside corrupt ones.

    Each row is decoded on its own, so no combination of corrupt rows can pass for items.
    """
    items: list[Item] = []
    corrupt: list[int] = []
    raw_decode = _DECODER.raw_decode
    for row_id, data in rows:
        # The common case inline (this loop is most of get_items' cost), the rest through
        # decode_item, which also handles bytes, trailing whitespace and errors.
        try:
            text = data.decode("utf-8") if type(data) is bytes else data
            item, end = raw_decode(text)  # type: ignore[arg-type]
            if end != len(text) or type(item) is not dict:  # type: ignore[arg-type]
                item = decode_item(text)
        except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
            item = decode_item(data)
        if item is None:
            corrupt.append(row_id)
        else:
            items.append(item)
    return DecodedRows(items, corrupt)


# --- session reads and writes (synchronous, one connection) -------------------------------

# message_data is read as bytes (CAST ... AS BLOB) and decoded here: a row that is not valid
# UTF-8 (a flipped bit) must count as one corrupt row, not fail the fetch of the whole session.
_DATA = "CAST(message_data AS BLOB)"
SELECT_ALL_ROWS = f"SELECT id, {_DATA} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id"
SELECT_NEWEST_ROWS = (
    f"SELECT id, {_DATA} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id DESC LIMIT ?"
)
SELECT_ROWS_FROM_OFFSET = (
    f"SELECT id, {_DATA} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id LIMIT -1 OFFSET ?"
)
PRUNE_STATE = (
    f"SELECT (SELECT COUNT(*) FROM {MESSAGES_TABLE} WHERE session_id = ?), "
    f"(SELECT late_call_row FROM {SESSIONS_TABLE} WHERE session_id = ?)"
)
LATE_CALL_NONE = 0
"""``late_call_row`` when the session is known to hold no call answered after a later user
message: then the first user message in the kept window is always a valid cut. ``NULL`` means
not known (a new or adopted session, one a plain SQLiteSession wrote to, or a write that may
have stored such a pair); a row id names the oldest such call. Either way the next prune()
that has something to cut decodes the whole session and sets it again."""
SET_LATE_CALL_ROW = f"UPDATE {SESSIONS_TABLE} SET late_call_row = ? WHERE session_id = ?"
FORGET_LATE_CALL_ROW = f"UPDATE {SESSIONS_TABLE} SET late_call_row = NULL WHERE session_id = ?"
DELETE_ROWS_BEFORE = f"DELETE FROM {MESSAGES_TABLE} WHERE session_id = ? AND id < ?"
DELETE_ROW = f"DELETE FROM {MESSAGES_TABLE} WHERE id = ?"
DELETE_SESSION_ROWS = f"DELETE FROM {MESSAGES_TABLE} WHERE session_id = ?"
DELETE_SESSION = f"DELETE FROM {SESSIONS_TABLE} WHERE session_id = ?"
INSERT_ROW = f"INSERT INTO {MESSAGES_TABLE} (session_id, message_data) VALUES (?, ?)"
UPSERT_SESSION = f"""
    INSERT INTO {SESSIONS_TABLE}
        (session_id, user_id, conversation_id, created_ts, last_activity_ts)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (session_id) DO UPDATE SET
        last_activity_ts = max(coalesce(last_activity_ts, 0), excluded.last_activity_ts),
        user_id = coalesce(user_id, excluded.user_id),
        conversation_id = coalesce(conversation_id, excluded.conversation_id),
        created_ts = coalesce(created_ts, excluded.created_ts)
"""
TOUCH_SESSION = (
    f"UPDATE {SESSIONS_TABLE} SET last_activity_ts = max(coalesce(last_activity_ts, 0), ?) "
    "WHERE session_id = ?"
)


@dataclass(frozen=True)
class SessionKey:
    """Who a session belongs to, as written to its row."""

    session_id: str
    user_id: str | None
    conversation_id: str | None


def read_items(conn: sqlite3.Connection, session_id: str, limit: int | None) -> DecodedRows:
    """Return a session's items in order, oldest first, with the SDK's ``limit`` semantics.

    ``None`` or a negative limit reads everything, ``0`` reads nothing, ``n > 0`` reads the
    newest ``n`` decodable items (the read window widens past corrupt rows).
    """
    if limit is None or limit < 0:
        return decode_rows(conn.execute(SELECT_ALL_ROWS, (session_id,)))
    if limit == 0:
        return DecodedRows([], [])
    window = limit
    while True:
        rows = conn.execute(SELECT_NEWEST_ROWS, (session_id, window)).fetchall()
        decoded = decode_rows(reversed(rows))
        if len(decoded.items) >= limit or len(rows) < window:
            return DecodedRows(decoded.items[-limit:], decoded.corrupt_row_ids)
        window *= 2


def prune(conn: sqlite3.Connection, session_id: str, max_items: int) -> int:
    """Delete the oldest items of a session down to ``max_items`` by the pruning rule.

    Runs inside the caller's transaction. Usually it decodes only a few rows: the first user
    message in the newest ``max_items`` rows is the cut. The whole session is decoded and
    ``pruning.cut_index`` applied when there is no such message, or unless the session is
    known to hold no call answered after a later user message (``LATE_CALL_NONE``): such a
    user message may not be a valid cut.

    Returns:
        The number of rows deleted.
    """
    count, late_call_row = conn.execute(PRUNE_STATE, (session_id, session_id)).fetchone()
    if count <= max_items:
        return 0
    cut_row_id: int | None = None
    if late_call_row == LATE_CALL_NONE:
        window = conn.execute(SELECT_ROWS_FROM_OFFSET, (session_id, count - max_items))
        try:
            for row_id, data in window:  # stepped lazily: usually only a few rows are read
                if is_user_message(decode_item(data)):
                    cut_row_id = row_id
                    break
        finally:
            window.close()
        if cut_row_id is not None:
            return int(conn.execute(DELETE_ROWS_BEFORE, (session_id, cut_row_id)).rowcount)
    rows = conn.execute(SELECT_ALL_ROWS, (session_id,)).fetchall()
    items = [decode_item(data) for _, data in rows]
    cut = cut_index(items, max_items)
    late = late_call_index(items[cut:])
    late_row = LATE_CALL_NONE if late is None else rows[cut + late][0]
    conn.execute(SET_LATE_CALL_ROW, (late_row, session_id))
    if cut == 0:
        return 0
    return int(conn.execute(DELETE_ROWS_BEFORE, (session_id, rows[cut][0])).rowcount)


def plan_cut(rows: Sequence[tuple[int, object]], max_items: int) -> int | None:
    """Row id of the first row to keep under the pruning rule, or ``None`` to keep all."""
    index = cut_index([decode_item(data) for _, data in rows], max_items)
    return rows[index][0] if index > 0 else None


def append_items(
    conn: sqlite3.Connection,
    key: SessionKey,
    items: Sequence[Item],
    payloads: Sequence[str],
    now: float,
    max_items: int,
) -> int:
    """Record activity, insert encoded items and prune, inside the caller's transaction.

    ``payloads[i]`` is the JSON text of ``items[i]``. A tool output or approval response
    whose call is neither earlier in the batch nor stored is not inserted: that happens when
    an approval is answered so late that pruning already removed its call, and storing it
    would leave an output the model rejects. It is logged as a warning.

    Returns:
        The number of rows pruned.
    """
    conn.execute(UPSERT_SESSION, (key.session_id, key.user_id, key.conversation_id, now, now))
    rows = list(zip(items, payloads, strict=True))
    # A call answered after a later user message (in this batch, or stored and answered
    # here) makes prune() check the whole session until the pair is pruned away.
    stored_calls: dict[str, int] = {}
    answered_after_stored_user = False
    needing = outputs_needing_stored_calls(items)
    if needing:
        found = _find_stored_calls(conn, key.session_id, set(needing))
        orphans = set(needing) - set(found.call_rows)
        if orphans:
            dropped = {position for call_key in orphans for position in needing[call_key]}
            logger.warning(
                "session %r: not storing %d output(s) whose call is no longer stored (%s); "
                "the model would reject them",
                key.session_id,
                len(dropped),
                ", ".join(sorted(orphans)),
            )
            rows = [row for position, row in enumerate(rows) if position not in dropped]
        stored_calls, answered_after_stored_user = found.call_rows, found.answered_after_user
    if answered_after_stored_user or answers_late(items, stored_calls):
        conn.execute(FORGET_LATE_CALL_ROW, (key.session_id,))
    conn.executemany(INSERT_ROW, [(key.session_id, payload) for _, payload in rows])
    return prune(conn, key.session_id, max_items)


@dataclass(frozen=True)
class _StoredCalls:
    call_rows: dict[str, int]
    """Row id of the newest stored call for each key found."""
    answered_after_user: bool
    """Whether a stored user message follows one of those calls."""


def _find_stored_calls(conn: sqlite3.Connection, session_id: str, keys: set[str]) -> _StoredCalls:
    """Look up the stored calls of ``keys``, newest rows first, stopping once all are found."""
    found: dict[str, int] = {}
    late = False
    user_after = False
    cursor = conn.execute(SELECT_NEWEST_ROWS, (session_id, -1))
    try:
        for row_id, data in cursor:
            item = decode_item(data)
            if is_user_message(item):
                user_after = True
            half = pairing(item)
            if half is not None and half[0] and half[1] in keys and half[1] not in found:
                found[half[1]] = row_id
                late = late or user_after
                if len(found) == len(keys):
                    break
    finally:
        cursor.close()
    return _StoredCalls(found, late)


SELECT_SESSION_OWNER = f"SELECT user_id, conversation_id FROM {SESSIONS_TABLE} WHERE session_id = ?"


def session_owner(
    conn: sqlite3.Connection, session_id: str
) -> tuple[str | None, str | None] | None:
    """The stored owner of a session, or ``None`` if no session row has this id.

    Returns:
        ``(user_id, conversation_id)``, each ``None`` where the owner is not known.
    """
    row = conn.execute(SELECT_SESSION_OWNER, (session_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def pop_newest(conn: sqlite3.Connection, session_id: str, now: float) -> Item | None:
    """Delete and return the newest decodable item; corrupt rows are skipped, not deleted."""
    window = 1
    while True:
        rows = conn.execute(SELECT_NEWEST_ROWS, (session_id, window)).fetchall()
        for row_id, data in rows:
            item = decode_item(data)
            if item is not None:
                conn.execute(DELETE_ROW, (row_id,))
                conn.execute(TOUCH_SESSION, (now, session_id))
                return item
        if len(rows) < window:
            return None
        window *= 4


def delete_session(conn: sqlite3.Connection, session_id: str) -> int:
    """Delete a session's rows and its session row explicitly; return the rows deleted."""
    deleted = conn.execute(DELETE_SESSION_ROWS, (session_id,)).rowcount
    conn.execute(DELETE_SESSION, (session_id,))
    return int(deleted)


# --- turn locks (see AgentSession.turn_lock) --------------------------------------------------

SELECT_TURN_LOCK_EXPIRY = f"SELECT expires_ts FROM {TURN_LOCKS_TABLE} WHERE session_id = ?"
TAKE_TURN_LOCK = f"""
    INSERT INTO {TURN_LOCKS_TABLE} (session_id, owner, expires_ts) VALUES (?, ?, ?)
    ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner, expires_ts = excluded.expires_ts
        WHERE expires_ts <= ?
"""
RENEW_TURN_LOCK = f"UPDATE {TURN_LOCKS_TABLE} SET expires_ts = ? WHERE session_id = ? AND owner = ?"
RELEASE_TURN_LOCK = f"DELETE FROM {TURN_LOCKS_TABLE} WHERE session_id = ? AND owner = ?"


def turn_lock_is_free(conn: sqlite3.Connection, session_id: str, now: float) -> bool:
    """Whether no unexpired lease holds the session's turn lock (a read, to poll cheaply)."""
    row = conn.execute(SELECT_TURN_LOCK_EXPIRY, (session_id,)).fetchone()
    return row is None or row[0] <= now


def take_turn_lock(
    conn: sqlite3.Connection, session_id: str, owner: str, now: float, expires: float
) -> bool:
    """Take the turn lock for ``owner`` unless an unexpired lease holds it; inside a write.

    Returns:
        Whether ``owner`` now holds it, until ``expires``.
    """
    params = (session_id, owner, expires, now)
    return conn.execute(TAKE_TURN_LOCK, params).rowcount == 1


def renew_turn_lock(conn: sqlite3.Connection, session_id: str, owner: str, expires: float) -> bool:
    """Extend ``owner``'s lease to ``expires``; ``False`` if it no longer holds the lock."""
    return conn.execute(RENEW_TURN_LOCK, (expires, session_id, owner)).rowcount == 1


def release_turn_lock(conn: sqlite3.Connection, session_id: str, owner: str) -> bool:
    """Delete the lock row if ``owner`` still holds it; ``False`` if it did not."""
    return conn.execute(RELEASE_TURN_LOCK, (session_id, owner)).rowcount == 1


# --- manager statements (run through aiosqlite) --------------------------------------------

_SESSION_COLUMNS = "session_id, user_id, conversation_id, created_ts, last_activity_ts"
SELECT_SESSION = f"SELECT {_SESSION_COLUMNS} FROM {SESSIONS_TABLE} WHERE session_id = ?"
LIST_SESSIONS = (
    f"SELECT {_SESSION_COLUMNS} FROM {SESSIONS_TABLE} "
    "ORDER BY last_activity_ts DESC, session_id LIMIT ? OFFSET ?"
)
LIST_USER_SESSIONS = (
    f"SELECT {_SESSION_COLUMNS} FROM {SESSIONS_TABLE} WHERE user_id = ? "
    "ORDER BY last_activity_ts DESC, session_id LIMIT ? OFFSET ?"
)
LIST_SESSION_IDS = f"SELECT session_id FROM {SESSIONS_TABLE} ORDER BY session_id"
COUNT_ACTIVE_SESSIONS = f"SELECT COUNT(*) FROM {SESSIONS_TABLE} WHERE last_activity_ts >= ?"
COUNT_SESSIONS_AND_ROWS = (
    f"SELECT (SELECT COUNT(*) FROM {SESSIONS_TABLE}), (SELECT COUNT(*) FROM {MESSAGES_TABLE})"
)
COUNT_IDLE_SESSIONS = f"SELECT COUNT(*) FROM {SESSIONS_TABLE} WHERE last_activity_ts < ?"
SELECT_IDLE_BATCH = (
    f"SELECT session_id FROM {SESSIONS_TABLE} WHERE last_activity_ts < ? "
    "ORDER BY last_activity_ts LIMIT ?"
)


def delete_idle_batch_statements(batch_size: int) -> tuple[str, str]:
    """Statements deleting the rows, then the sessions, of up to ``batch_size`` idle ids.

    Both re-check idleness, so a session written to since it was selected is kept whole.
    Parameters: ``cutoff`` then the ``batch_size`` session ids.
    """
    marks = ", ".join("?" * batch_size)
    idle = (
        f"SELECT session_id FROM {SESSIONS_TABLE} "
        f"WHERE last_activity_ts < ? AND session_id IN ({marks})"
    )
    return (
        f"DELETE FROM {MESSAGES_TABLE} WHERE session_id IN ({idle})",
        f"DELETE FROM {SESSIONS_TABLE} WHERE session_id IN ({idle})",
    )
