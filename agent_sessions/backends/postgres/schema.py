"""The PostgreSQL schema: an ordered list of migrations, recorded in a table of our own.

Migrations run in one transaction under a transaction-scoped advisory lock, and the version
is read again once the lock is held: when many processes start at once, the first applies
each step and the others find it done. Nothing outlives the transaction (no session-level
lock or setting), so this works through PgBouncer in transaction mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...errors import StorageError, StorageUnavailableError
from . import sql
from .transaction import transaction


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once inside the migrating transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


_CREATE_TABLES = (
    # session_id and user_id are COLLATE "C": equality and ordering by code point, as in
    # Python and SQLite, whatever the database's default collation.
    f"""CREATE TABLE {sql.SESSIONS} (
        session_id text COLLATE "C" PRIMARY KEY,
        user_id text COLLATE "C",
        conversation_id text,
        created_at timestamptz NOT NULL,
        last_activity timestamptz NOT NULL,
        next_seq bigint NOT NULL DEFAULT 1 CHECK (next_seq >= 1),
        -- NULL: not known; 0: no call answered after a later user message is stored;
        -- otherwise the seq of the oldest such call (see sqlite.sql.LATE_CALL_NONE).
        late_call_seq bigint CHECK (late_call_seq >= 0)
    )""",
    # message_data is text, not jsonb: payloads come back byte for byte. is_user and call_key
    # are what pruning needs to know of an item without decoding it.
    f"""CREATE TABLE {sql.ITEMS} (
        session_id text COLLATE "C" NOT NULL REFERENCES {sql.SESSIONS} (session_id),
        seq bigint NOT NULL,
        message_data text NOT NULL,
        is_user boolean NOT NULL,
        call_key text COLLATE "C",
        PRIMARY KEY (session_id, seq)
    )""",
    f"""CREATE INDEX {sql.SESSIONS}_user_activity
        ON {sql.SESSIONS} (user_id, last_activity DESC, session_id)""",
    f"CREATE INDEX {sql.SESSIONS}_activity ON {sql.SESSIONS} (last_activity)",
    # Called by sql.PRUNE_FAST to abort a write whose prune needs the full rule.
    f"""CREATE FUNCTION {sql.FULL_PRUNE_FUNCTION}() RETURNS bigint LANGUAGE plpgsql AS $fn$
    BEGIN
        RAISE EXCEPTION 'agent_sessions: this session needs the full pruning rule; '
            'the client redoes the write'
            USING ERRCODE = 'ASP01';
    END
    $fn$""",
)

_CREATE_TURN_LOCKS = (
    # One row per session whose turn lock is held: who holds it, and until when (POSIX
    # seconds of the holder's clock) unless renewed; an expired row belongs to no one.
    f"""CREATE TABLE {sql.TURN_LOCKS} (
        session_id text COLLATE "C" PRIMARY KEY,
        owner text NOT NULL,
        expires_at double precision NOT NULL
    )""",
)

_ADD_TITLES_AND_METADATA = (
    # A conversation's title (its first user message unless the app set one) and the app's
    # metadata as JSON text (text, like message_data: returned byte for byte). A user's
    # keyset-paginated list is served by the (user_id, last_activity DESC, session_id) index.
    f"ALTER TABLE {sql.SESSIONS} ADD COLUMN title text, ADD COLUMN metadata text",
)

_CREATE_SWEEPS = (
    # The latest cleanup sweeps, so health() in any process sees the last one. A row is
    # written as 'running' when a sweep starts: one whose process died stays that way.
    f"""CREATE TABLE {sql.SWEEPS} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        outcome text NOT NULL CHECK (outcome IN ('running', 'ok', 'failed')),
        sessions_deleted bigint NOT NULL DEFAULT 0,
        error text
    )""",
)

_ADD_SEARCH_INDEX = (
    # On the item row itself, so whatever deletes an item deletes its entry. search_text is
    # the message text (search.indexed_text), kept for ts_headline; search_vector its folded
    # words (search.folded_words) under the language-neutral 'simple' configuration. Both
    # are NULL for items that are not message text, and when search_index is off.
    f"""ALTER TABLE {sql.ITEMS}
        ADD COLUMN search_text text,
        ADD COLUMN search_vector tsvector""",
    f"CREATE INDEX {sql.ITEMS}_search ON {sql.ITEMS} USING gin (search_vector)",
)

_ADD_CLEAR_COLUMNS = (
    # What pruning needs of an encrypted item beyond is_user and call_key, in clear (see
    # agent_sessions.encryption). NULL in rows written before: their payload is plain JSON.
    f"""ALTER TABLE {sql.ITEMS}
        ADD COLUMN answer_key text COLLATE "C",
        ADD COLUMN is_reasoning boolean""",
    # Called by sql.REFUSE_IF_ENCRYPTED to abort a write without a key to an encrypted session.
    f"""CREATE FUNCTION {sql.KEY_NEEDED_FUNCTION}() RETURNS bigint LANGUAGE plpgsql AS $fn$
    BEGIN
        RAISE EXCEPTION 'agent_sessions: this session holds encrypted items and no '
            'encryption key is configured'
            USING ERRCODE = 'ASP02';
    END
    $fn$""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the session and item tables", _CREATE_TABLES),
    Migration(2, "add per-session turn locks with leases", _CREATE_TURN_LOCKS),
    Migration(3, "add conversation titles and metadata", _ADD_TITLES_AND_METADATA),
    Migration(4, "add the full-text search index of message text", _ADD_SEARCH_INDEX),
    Migration(5, "record the latest cleanup sweeps", _CREATE_SWEEPS),
    Migration(6, "keep what pruning needs of an encrypted item in clear", _ADD_CLEAR_COLUMNS),
)
LATEST_VERSION = MIGRATIONS[-1].version


async def _fetch_one(conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    return None if row is None else row[0]


async def _tables(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, bool]:
    """Whether the schema table exists, and whether any of our session tables does."""
    row = await (await conn.execute(sql.SELECT_TABLES)).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1] or row[2])


async def _version(conn: psycopg.AsyncConnection[Any], location: str) -> int:
    try:
        return int(await _fetch_one(conn, sql.SELECT_VERSION) or 0)
    except (psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch, ValueError) as exc:
        raise StorageError(
            f"PostgreSQL database {location!r} has a table {sql.SCHEMA} that agent_sessions "
            "did not write",
            path=location,
        ) from exc


def _check_not_newer(version: int, location: str) -> None:
    if version > LATEST_VERSION:
        raise StorageError(
            f"PostgreSQL database {location!r} has agent_sessions schema version {version}, "
            f"newer than this agent_sessions supports ({LATEST_VERSION}); upgrade agent_sessions",
            path=location,
        )


async def migrate(
    conn: psycopg.AsyncConnection[Any], location: str, *, create: bool, statement_timeout: float
) -> int:
    """Bring the schema up to ``LATEST_VERSION`` on an autocommit connection.

    Args:
        conn: An autocommit connection (its own, or through PgBouncer).
        location: The redacted URL, for messages.
        create: Create the tables in a database that has none; with ``False`` such a
            database is refused and left unchanged.
        statement_timeout: Seconds any statement (the lock wait included) may take.

    Returns:
        The number of migrations applied by this call.

    Raises:
        StorageUnavailableError: if ``create`` is ``False`` and the database holds no sessions.
        StorageError: if the schema is newer than this library, or the tables are not ours.
    """
    has_schema, has_tables = await _tables(conn)
    if has_schema:
        version = await _version(conn, location)
        _check_not_newer(version, location)
        if version == LATEST_VERSION:
            return 0
    elif not create:
        raise StorageUnavailableError(
            f"PostgreSQL database {location!r} holds no sessions (no {sql.SCHEMA} table); "
            "it was left as it was",
            path=location,
        )
    if has_tables and not has_schema:
        raise StorageError(
            f"PostgreSQL database {location!r} has a table {sql.SESSIONS} or {sql.ITEMS} "
            f"that agent_sessions did not create (there is no {sql.SCHEMA} table)",
            path=location,
        )
    applied = 0
    async with transaction(conn, statement_timeout):
        await conn.execute(sql.LOCK_FOR_MIGRATION, {"key": sql.MIGRATION_LOCK_KEY})
        await conn.execute(sql.CREATE_SCHEMA_TABLE)
        current = await _version(conn, location)  # again: another process may have migrated
        _check_not_newer(current, location)
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                sql.RECORD_MIGRATION,
                {"version": migration.version, "description": migration.description},
            )
            applied += 1
    return applied
