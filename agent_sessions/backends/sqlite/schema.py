"""The SQLite schema: tables, versioned migrations, and adoption of the SDK's own tables.

The tables are the SDK's own ``agent_sessions``/``agent_messages`` (so a database written by a
plain ``agents.SQLiteSession`` is adopted in place, and stays readable by it), plus columns of
ours on ``agent_sessions`` and a table recording which migrations ran. Timestamps we write are
POSIX seconds (``REAL``, UTC) from an injected clock; the SDK's ``CURRENT_TIMESTAMP`` text is
converted once, in SQL, to the same format.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import (
    StorageError,
    StorageUnavailableError,
)
from ...ids import legacy_owner
from .connection import (
    configure_connection,
    database_file,
    enable_wal,
    prepare_path,
    translate_errors,
    write_transaction,
)

SESSIONS_TABLE = "agent_sessions"
MESSAGES_TABLE = "agent_messages"
SCHEMA_TABLE = "agent_sessions_schema"
TURN_LOCKS_TABLE = "agent_sessions_turn_locks"
SWEEPS_TABLE = "agent_sessions_sweeps"
SEARCH_TABLE = "agent_sessions_search"
SEARCH_STATE_TABLE = "agent_sessions_search_state"

# The SDK's naive-UTC CURRENT_TIMESTAMP text (whole seconds) as POSIX seconds. strftime('%s')
# is exact where julianday() arithmetic is off by microseconds, and unlike unixepoch() it
# needs no SQLite 3.38.
_SDK_TEXT_TO_TS = "CAST(strftime('%s', {col}) AS REAL)"
_NOW_TS = "CAST(strftime('%s', 'now') AS REAL)"

SELECT_SESSION_TABLES = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
    f"('{SESSIONS_TABLE}', '{MESSAGES_TABLE}')"
)


def prepare(conn: sqlite3.Connection, path: str, *, create: bool = True) -> None:
    """Bring a configured connection's database to the latest schema, then switch it to WAL.

    Args:
        conn: A connection configured with ``configure_connection``.
        path: The database's path, for messages.
        create: Add the session tables to a database that has none. With ``False`` such a
            database (an empty file, some other app's) is refused and left untouched.

    Raises:
        StorageError: (a subclass) naming the path if it is refused or cannot be migrated.
    """
    if not create and conn.execute(SELECT_SESSION_TABLES).fetchone()[0] == 0:
        raise StorageUnavailableError(
            f"database {path!r} holds no sessions (no {SESSIONS_TABLE} or "
            f"{MESSAGES_TABLE} table); it was left as it was",
            path=path,
        )
    migrate(conn)  # first: a file we refuse is left exactly as it was, not WAL
    if path != ":memory:":
        enable_wal(conn)


def connect(db_path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open a configured, migrated connection of its own (for tooling and tests).

    Raises:
        StorageError: (a subclass) naming the path if it cannot be opened or migrated.
    """
    text = prepare_path(db_path)
    with translate_errors(text):
        conn = sqlite3.connect(text, check_same_thread=False)
        try:
            configure_connection(conn)
            prepare(conn, text, create=create)
        except BaseException:
            conn.close()
            raise
    return conn


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
    MESSAGES_TABLE: {  # id: the rowid
        "id",
        "session_id",
        "message_data",
        "is_user",
        "call_key",
        "answer_key",
        "is_reasoning",
    },
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


def _add_titles_and_metadata(conn: sqlite3.Connection) -> None:
    # A conversation's title (its first user message unless the app set one) and the app's
    # metadata as JSON text; and an index that serves a user's keyset-paginated list in its
    # order (newest activity first, ties by id) without sorting.
    existing = _columns(conn, SESSIONS_TABLE)
    for column in ("title", "metadata"):
        if column not in existing:
            conn.execute(f"ALTER TABLE {SESSIONS_TABLE} ADD COLUMN {column} TEXT")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS idx_{SESSIONS_TABLE}_user_list "
        f"ON {SESSIONS_TABLE} (user_id, last_activity_ts DESC, session_id)"
    )
    conn.execute(f"DROP INDEX IF EXISTS idx_{SESSIONS_TABLE}_user")


def _add_sweeps(conn: sqlite3.Connection) -> None:
    # The latest cleanup sweeps, so health() in any process sees the last one. A row is
    # written as 'running' when a sweep starts: one whose process died stays that way.
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {SWEEPS_TABLE} (
            id INTEGER PRIMARY KEY,
            started_ts REAL NOT NULL,
            finished_ts REAL,
            outcome TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed')),
            sessions_deleted INTEGER NOT NULL DEFAULT 0,
            error TEXT
        )"""
    )


def _add_search_index(conn: sqlite3.Connection) -> None:
    # An FTS5 table of its own whose rowid is the message row's id. It stores the text (our
    # messages are JSON; the text is worked out in Python, see search.indexed_text), so
    # snippet() works and an entry can be deleted by rowid alone (SQLite 3.40 has no
    # contentless_delete). owner holds search.owner_token(user_id), so a search reads only
    # its user's entries; session_id joins to the session row. remove_diacritics 2:
    # "cafe" finds "café", in any script unicode61 knows.
    conn.execute(
        f"""CREATE VIRTUAL TABLE IF NOT EXISTS {SEARCH_TABLE} USING fts5(
            body, owner, session_id UNINDEXED,
            tokenize = 'unicode61 remove_diacritics 2'
        )"""
    )
    # Every path that deletes a message (pruning, pop, clear, cleanup, a plain
    # SQLiteSession's clear_session) deletes its entry in the same transaction: no text of
    # a deleted item stays findable. A row without an entry costs one rowid lookup.
    conn.execute(
        f"""CREATE TRIGGER IF NOT EXISTS {MESSAGES_TABLE}_search_delete
            AFTER DELETE ON {MESSAGES_TABLE}
            BEGIN
                DELETE FROM {SEARCH_TABLE} WHERE rowid = OLD.id;
            END"""
    )


def _add_clear_columns(conn: sqlite3.Connection) -> None:
    # What pruning needs of an encrypted item, kept in clear (see agent_sessions.encryption).
    # NULL in rows written before, or by a plain SQLiteSession: their payload is plain JSON,
    # and pruning decodes it as it always has.
    existing = _columns(conn, MESSAGES_TABLE)
    for column, kind in CLEAR_COLUMNS:
        if column not in existing:
            conn.execute(f"ALTER TABLE {MESSAGES_TABLE} ADD COLUMN {column} {kind}")


def _defer_index(conn: sqlite3.Connection) -> None:
    # Indexing moves off the write path: a turn inserts its rows only, and the rows above a
    # watermark (the highest message id dealt with) are indexed in batches before each
    # search and by the cleanup sweep (sql.index_pending). Every row there is now counts as
    # dealt with: it was indexed as it was written, or deliberately not.
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {SEARCH_STATE_TABLE} (
            only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
            indexed_through INTEGER NOT NULL
        )"""
    )
    conn.execute(
        f"INSERT OR IGNORE INTO {SEARCH_STATE_TABLE} (only_row, indexed_through) "
        f"SELECT 1, COALESCE(MAX(id), 0) FROM {MESSAGES_TABLE}"
    )
    # Rows written with search off (search_index=False, or sealed without the plaintext
    # index) are marked, so the indexer leaves them out as the write path used to. NULL (a
    # search-on writer, a plain SQLiteSession) is indexable: those writes cost nothing more.
    if "search_skip" not in _columns(conn, MESSAGES_TABLE):
        conn.execute(f"ALTER TABLE {MESSAGES_TABLE} ADD COLUMN search_skip INTEGER")
    # A pending row has no entry: deleting it (pruning, cleanup) touches no index page.
    conn.execute(f"DROP TRIGGER IF EXISTS {MESSAGES_TABLE}_search_delete")
    conn.execute(
        f"""CREATE TRIGGER {MESSAGES_TABLE}_search_delete
            AFTER DELETE ON {MESSAGES_TABLE}
            WHEN OLD.id <= (SELECT indexed_through FROM {SEARCH_STATE_TABLE})
            BEGIN
                DELETE FROM {SEARCH_TABLE} WHERE rowid = OLD.id;
            END"""
    )
    # Without AUTOINCREMENT (an adopted table of another shape) SQLite reuses the ids above
    # the largest left: deleting the newest rows must pull the watermark down with them, or
    # a new row could get an id the indexer already passed. The SDK's table never reuses.
    # (It deletes the entry itself too: the order two triggers fire in is not documented.)
    sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (MESSAGES_TABLE,)
    ).fetchone()
    conn.execute(f"DROP TRIGGER IF EXISTS {MESSAGES_TABLE}_search_reuse")
    if not (sql and "AUTOINCREMENT" in (sql[0] or "").upper()):
        conn.execute(
            f"""CREATE TRIGGER {MESSAGES_TABLE}_search_reuse
                AFTER DELETE ON {MESSAGES_TABLE}
                WHEN OLD.id >= (SELECT indexed_through FROM {SEARCH_STATE_TABLE})
                BEGIN
                    DELETE FROM {SEARCH_TABLE} WHERE rowid = OLD.id
                        AND OLD.id <= (SELECT indexed_through FROM {SEARCH_STATE_TABLE});
                    UPDATE {SEARCH_STATE_TABLE} SET indexed_through = MIN(
                        indexed_through, (SELECT COALESCE(MAX(id), 0) FROM {MESSAGES_TABLE})
                    );
                END"""
        )


CLEAR_COLUMNS = (
    ("is_user", "INTEGER"),
    ("call_key", "TEXT"),
    ("answer_key", "TEXT"),
    ("is_reasoning", "INTEGER"),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "adopt the SDK tables; add owner and activity columns", _adopt_sdk_tables),
    Migration(2, "remember calls answered after a later user message", _add_late_call_row),
    Migration(
        3, "re-check sessions for late answers, also after SDK writes", _recheck_after_sdk_writes
    ),
    Migration(4, "add per-session turn locks with leases", _add_turn_locks),
    Migration(5, "add conversation titles and metadata", _add_titles_and_metadata),
    Migration(6, "add the full-text search index of message text", _add_search_index),
    Migration(7, "record the latest cleanup sweeps", _add_sweeps),
    Migration(8, "keep what pruning needs of an encrypted item in clear", _add_clear_columns),
    Migration(9, "index message text for search in batches, off the write path", _defer_index),
)
LATEST_VERSION = MIGRATIONS[-1].version


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
