"""Every SQL statement the SQLite backend runs, and the synchronous operations built on them.

Each operation takes a ``sqlite3.Connection`` and runs inside the caller's transaction; the
backend decides where (the event loop's thread or a worker) and retries while locked.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...clock import from_timestamp
from ...codec import DecodedRows, decode_item
from ...conversations import decode_metadata, open_field
from ...encryption import (
    ClearColumns,
    Keyring,
    clear_columns,
    columns_of,
    decode_stored,
    is_encrypted,
    open_row,
    pruning_item,
)
from ...errors import EncryptionKeyError
from ...models import SearchHit, SessionStats, SweepRecord
from ...pruning import (
    Item,
    answers_late,
    cut_index,
    is_user_message,
    late_call_index,
    outputs_needing_stored_calls,
    pairing,
)
from ...search import MIN_PREFIX_CHARS, indexed_text, owner_token, snippet
from ..base import (
    SWEEP_HISTORY,
    UNCHANGED,
    FieldsChange,
    ListPosition,
    RowChange,
    SessionDump,
    SessionFields,
    SessionKey,
    StoredFields,
    StoredRow,
    Totals,
)
from .schema import (
    MESSAGES_TABLE,
    SEARCH_STATE_TABLE,
    SEARCH_TABLE,
    SESSIONS_TABLE,
    SWEEPS_TABLE,
    TURN_LOCKS_TABLE,
)

logger = logging.getLogger("agent_sessions")

# --- session reads and writes (synchronous, one connection) -------------------------------

# message_data is read as bytes (CAST ... AS BLOB) and decoded here: a row that is not valid
# UTF-8 (a flipped bit) must count as one corrupt row, not fail the fetch of the whole session.
# Rows come with their clear columns (see agent_sessions.encryption): an encrypted row's
# skeleton for pruning, and the associated data that authenticates it.
_DATA = "CAST(message_data AS BLOB)"
_ROW = f"id, {_DATA}, is_user, call_key, answer_key, is_reasoning"
SELECT_ALL_ROWS = f"SELECT {_ROW} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id"
SELECT_NEWEST_ROWS = (
    f"SELECT {_ROW} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id DESC LIMIT ?"
)
SELECT_ROWS_FROM_OFFSET = (
    f"SELECT {_ROW} FROM {MESSAGES_TABLE} WHERE session_id = ? ORDER BY id LIMIT -1 OFFSET ?"
)
# The newest row's payload prefix, to refuse a write without a key to an encrypted session.
SELECT_NEWEST_KEY_ID = (
    f"SELECT substr(CAST(message_data AS BLOB), 1, 5) FROM {MESSAGES_TABLE} WHERE session_id = ? "
    "ORDER BY id DESC LIMIT 1"
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
INSERT_SEARCH_ENTRY = (
    f"INSERT INTO {SEARCH_TABLE} (rowid, body, owner, session_id) VALUES (?, ?, ?, ?)"
)
"""A plain row without its clear columns (they read as NULL: pruning decodes the payload)."""
INSERT_ITEM_ROW = (
    f"INSERT INTO {MESSAGES_TABLE} "
    "(session_id, message_data, is_user, call_key, answer_key, is_reasoning) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# A row written with search off: the indexer passes over it (migration 9).
INSERT_UNSEARCHABLE_ROW = (
    f"INSERT INTO {MESSAGES_TABLE} "
    "(session_id, message_data, is_user, call_key, answer_key, is_reasoning, search_skip) "
    "VALUES (?, ?, ?, ?, ?, ?, 1)"
)
UPSERT_SESSION = f"""
    INSERT INTO {SESSIONS_TABLE}
        (session_id, user_id, conversation_id, created_ts, last_activity_ts, title)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (session_id) DO UPDATE SET
        last_activity_ts = max(coalesce(last_activity_ts, 0), excluded.last_activity_ts),
        user_id = coalesce(user_id, excluded.user_id),
        conversation_id = coalesce(conversation_id, excluded.conversation_id),
        created_ts = coalesce(created_ts, excluded.created_ts),
        title = coalesce(title, excluded.title)
"""
INSERT_SESSION = f"""
    INSERT INTO {SESSIONS_TABLE}
        (session_id, user_id, conversation_id, created_ts, last_activity_ts)
    VALUES (?, ?, ?, ?, ?)
"""
SELECT_ACTIVITY = f"SELECT last_activity_ts FROM {SESSIONS_TABLE} WHERE session_id = ?"
DELETE_SESSION_LOCK = f"DELETE FROM {TURN_LOCKS_TABLE} WHERE session_id = ?"
TOUCH_SESSION = (
    f"UPDATE {SESSIONS_TABLE} SET last_activity_ts = max(coalesce(last_activity_ts, 0), ?) "
    "WHERE session_id = ?"
)


def is_expired(conn: sqlite3.Connection, session_id: str, active_since: float | None) -> bool:
    """Whether the session exists and its last activity is before ``active_since``."""
    if active_since is None:
        return False
    row = conn.execute(SELECT_ACTIVITY, (session_id,)).fetchone()
    return row is not None and row[0] is not None and row[0] < active_since


def _start_afresh(conn: sqlite3.Connection, session_id: str) -> None:
    """Delete an expired session's rows and its row: the next write creates it anew."""
    conn.execute(DELETE_SESSION_ROWS, (session_id,))
    conn.execute(DELETE_SESSION, (session_id,))


def read_items(
    conn: sqlite3.Connection,
    session_id: str,
    limit: int | None,
    active_since: float | None = None,
    keyring: Keyring | None = None,
) -> DecodedRows:
    """Return a session's items in order, oldest first, with the SDK's ``limit`` semantics.

    ``None`` or a negative limit reads everything, ``0`` reads nothing, ``n > 0`` reads the
    newest ``n`` decodable items (the read window widens past corrupt rows). A session whose
    last activity is before ``active_since`` has expired and reads as empty. Encrypted rows
    are opened with ``keyring`` (see ``encryption.decode_stored`` for what raises).
    """
    if is_expired(conn, session_id, active_since):
        return DecodedRows([], [])
    if limit is None or limit < 0:
        return decode_stored(conn.execute(SELECT_ALL_ROWS, (session_id,)), keyring, session_id)
    if limit == 0:
        return DecodedRows([], [])
    window = limit
    while True:
        rows = conn.execute(SELECT_NEWEST_ROWS, (session_id, window)).fetchall()
        decoded = decode_stored(rows[::-1], keyring, session_id)
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
            for row in window:  # stepped lazily: usually only a few rows are read
                if is_user_message(pruning_item(row)):
                    cut_row_id = row[0]
                    break
        finally:
            window.close()
        if cut_row_id is not None:
            return int(conn.execute(DELETE_ROWS_BEFORE, (session_id, cut_row_id)).rowcount)
    rows = conn.execute(SELECT_ALL_ROWS, (session_id,)).fetchall()
    # Encrypted rows are never decrypted here: their skeletons classify exactly as they do.
    items = [pruning_item(row) for row in rows]
    cut = cut_index(items, max_items)
    late = late_call_index(items[cut:])
    late_row = LATE_CALL_NONE if late is None else rows[cut + late][0]
    conn.execute(SET_LATE_CALL_ROW, (late_row, session_id))
    if cut == 0:
        return 0
    return int(conn.execute(DELETE_ROWS_BEFORE, (session_id, rows[cut][0])).rowcount)


def append_items(
    conn: sqlite3.Connection,
    key: SessionKey,
    items: Sequence[Item],
    payloads: Sequence[str],
    now: float,
    max_items: int,
    active_since: float | None = None,
    title: str | None = None,
    *,
    index: bool = True,
    refuse_if_encrypted: bool = False,
) -> int:
    """Record activity, insert encoded items and prune, inside the caller's transaction.

    An expired session (last activity before ``active_since``) is started afresh first.
    ``title`` becomes the session's title unless it has one.

    ``payloads[i]`` is the JSON text of ``items[i]``, or that text sealed (see
    ``encryption``); the clear columns are stored either way, and with ``index`` message
    text is indexed for search. With ``refuse_if_encrypted`` (a session without a key), a
    session whose newest row is encrypted raises ``EncryptionKeyError`` and nothing is
    written: plaintext must not be mixed into it.

    A tool output or approval response
    whose call is neither earlier in the batch nor stored is not inserted: that happens when
    an approval is answered so late that pruning already removed its call, and storing it
    would leave an output the model rejects. It is logged as a warning.

    Returns:
        The number of rows pruned.
    """
    if is_expired(conn, key.session_id, active_since):
        _start_afresh(conn, key.session_id)
    elif refuse_if_encrypted:
        newest = conn.execute(SELECT_NEWEST_KEY_ID, (key.session_id,)).fetchone()
        if newest is not None and is_encrypted(newest[0]):
            raise EncryptionKeyError(key.session_id, [], [], writing=True)
    conn.execute(
        UPSERT_SESSION, (key.session_id, key.user_id, key.conversation_id, now, now, title)
    )
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
    insert_rows(
        conn,
        key.session_id,
        [(item, payload, clear_columns(item)) for item, payload in rows],
        searchable=index,
    )
    return prune(conn, key.session_id, max_items)


def insert_rows(
    conn: sqlite3.Connection,
    session_id: str,
    rows: Sequence[tuple[Item | None, str, ClearColumns]],
    *,
    searchable: bool = True,
) -> None:
    """Insert ``(item, payload, clear columns)`` rows in order.

    Nothing is indexed here: ``index_pending`` indexes the rows later, before the next
    search, unless they are written with ``searchable=False`` (search is off).
    """
    statement = INSERT_ITEM_ROW if searchable else INSERT_UNSEARCHABLE_ROW
    conn.executemany(statement, [(session_id, payload, *clear) for _, payload, clear in rows])


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
        for row in cursor:
            row_id = row[0]
            item = pruning_item(row)
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


def pop_newest(
    conn: sqlite3.Connection,
    session_id: str,
    now: float,
    active_since: float | None = None,
    keyring: Keyring | None = None,
) -> Item | None:
    """Delete and return the newest decodable item; corrupt rows are skipped, not deleted.

    An expired session (activity before ``active_since``) has none.

    Raises:
        EncryptionKeyError: if the newest row is encrypted with a key ``keyring`` lacks.
    """
    if is_expired(conn, session_id, active_since):
        return None
    window = 1
    while True:
        rows = conn.execute(SELECT_NEWEST_ROWS, (session_id, window)).fetchall()
        for row in rows:
            item = open_row(row, keyring, session_id)
            if item is not None:
                conn.execute(DELETE_ROW, (row[0],))
                conn.execute(TOUCH_SESSION, (now, session_id))
                return item
        if len(rows) < window:
            return None
        window *= 4


def delete_session(conn: sqlite3.Connection, session_id: str) -> int | None:
    """Delete a session's rows and its session row explicitly.

    Returns:
        The rows deleted, or ``None`` if there was neither a session row nor a row.
    """
    deleted = conn.execute(DELETE_SESSION_ROWS, (session_id,)).rowcount
    existed = conn.execute(DELETE_SESSION, (session_id,)).rowcount
    return int(deleted) if deleted or existed else None


def stored_items(
    conn: sqlite3.Connection, session_id: str, keyring: Keyring | None = None
) -> DecodedRows | None:
    """All of a session's items, or ``None`` if no session row has this id."""
    if not session_exists(conn, session_id):
        return None
    return decode_stored(conn.execute(SELECT_ALL_ROWS, (session_id,)), keyring, session_id)


def prune_session(conn: sqlite3.Connection, session_id: str, max_items: int) -> int | None:
    """``prune`` for the manager: ``None`` if no session row has this id."""
    if not session_exists(conn, session_id):
        return None
    return prune(conn, session_id, max_items)


SELECT_FIELDS = (
    f"SELECT title, metadata, last_activity_ts FROM {SESSIONS_TABLE} WHERE session_id = ?"
)
SET_TITLE = f"UPDATE {SESSIONS_TABLE} SET title = ? WHERE session_id = ?"
SET_METADATA = f"UPDATE {SESSIONS_TABLE} SET metadata = ? WHERE session_id = ?"


def read_session_fields(
    conn: sqlite3.Connection, session_id: str, active_since: float | None
) -> SessionFields | None:
    """A session's title and metadata text; ``None`` if it does not exist or has expired."""
    row = conn.execute(SELECT_FIELDS, (session_id,)).fetchone()
    if row is None or (active_since is not None and row[2] is not None and row[2] < active_since):
        return None
    return SessionFields(title=row[0], metadata=row[1])


def set_session_fields(
    conn: sqlite3.Connection,
    key: SessionKey,
    now: float,
    active_since: float | None,
    create: bool,
    title: object,
    metadata: object,
) -> bool:
    """Set a session's title and/or metadata; inside a write transaction.

    See ``Backend.set_session_fields``.
    """
    row = conn.execute(SELECT_ACTIVITY, (key.session_id,)).fetchone()
    expired = (
        row is not None
        and active_since is not None
        and row[0] is not None
        and row[0] < active_since
    )
    if row is None or expired:
        if not create:
            return False
        if expired:
            _start_afresh(conn, key.session_id)
        conn.execute(INSERT_SESSION, (key.session_id, key.user_id, key.conversation_id, now, now))
    if title is not UNCHANGED:
        conn.execute(SET_TITLE, (title, key.session_id))
    if metadata is not UNCHANGED:
        conn.execute(SET_METADATA, (metadata, key.session_id))
    return True


# --- turn locks (see the sessions' turn_lock) -------------------------------------------

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
    return conn.execute(TAKE_TURN_LOCK, (session_id, owner, expires, now)).rowcount == 1


def renew_turn_lock(conn: sqlite3.Connection, session_id: str, owner: str, expires: float) -> bool:
    """Extend ``owner``'s lease to ``expires``; ``False`` if it no longer holds the lock."""
    return conn.execute(RENEW_TURN_LOCK, (expires, session_id, owner)).rowcount == 1


def release_turn_lock(conn: sqlite3.Connection, session_id: str, owner: str) -> bool:
    """Delete the lock row if ``owner`` still holds it; ``False`` if it did not."""
    return conn.execute(RELEASE_TURN_LOCK, (session_id, owner)).rowcount == 1


# --- copying between databases ----------------------------------------------------------


def dump_session(conn: sqlite3.Connection, session_id: str) -> SessionDump | None:
    """A session's row and decodable items as stored (see ``Backend.dump_session``)."""
    row = conn.execute(SELECT_SESSION, (session_id,)).fetchone()
    if row is None:
        return None
    _, user_id, conversation_id, created_ts, last_activity_ts, title, metadata = row
    payloads: list[str] = []
    clear: list[ClearColumns | None] = []
    corrupt = 0
    for row in conn.execute(SELECT_ALL_ROWS, (session_id,)):  # bytes: CAST AS BLOB
        data = row[1]
        if is_encrypted(data):  # copied sealed, with its clear columns (it cannot be checked)
            payloads.append(data.decode("ascii", "replace"))
            clear.append(columns_of(row))
        elif decode_item(data) is None:
            corrupt += 1
        else:
            payloads.append(data.decode("utf-8"))  # valid: it decoded
            clear.append(None)
    return SessionDump(
        session_id=session_id,
        user_id=user_id,
        conversation_id=conversation_id,
        created_at=float(created_ts if created_ts is not None else 0.0),
        last_activity=float(last_activity_ts if last_activity_ts is not None else 0.0),
        payloads=tuple(payloads),
        corrupt_rows=corrupt,
        title=title,
        metadata=metadata,
        clear=tuple(clear) if any(clear) else (),
    )


INSERT_DUMPED_SESSION = f"""
    INSERT INTO {SESSIONS_TABLE}
        (session_id, user_id, conversation_id, created_ts, last_activity_ts, late_call_row,
         title, metadata)
    VALUES (?, ?, ?, ?, ?, NULL, ?, ?)
"""


def load_session(conn: sqlite3.Connection, dump: SessionDump, *, index: bool = True) -> None:
    """Replace a session with ``dump``, inside the caller's write transaction.

    ``late_call_row`` is left unknown, so the next prune checks the session whole. With
    ``index``, message text is indexed for search (by ``index_pending``, later).
    """
    delete_session(conn, dump.session_id)
    conn.execute(
        INSERT_DUMPED_SESSION,
        (
            dump.session_id,
            dump.user_id,
            dump.conversation_id,
            dump.created_at,
            dump.last_activity,
            dump.title,
            dump.metadata,
        ),
    )
    clear = dump.clear or (None,) * len(dump.payloads)
    rows: list[tuple[Item | None, str, ClearColumns]] = []
    for payload, columns in zip(dump.payloads, clear, strict=True):
        # A sealed payload is copied as stored, with its clear columns.
        if columns is None:
            item = None if is_encrypted(payload) else decode_item(payload)
            columns = clear_columns(item or {})
        rows.append((None, payload, columns))
    insert_rows(conn, dump.session_id, rows, searchable=index)


# --- many sessions ---------------------------------------------------------------------

_SESSION_COLUMNS = (
    "session_id, user_id, conversation_id, created_ts, last_activity_ts, title, metadata"
)
LIST_WITH_COUNTS = (
    "SELECT s.session_id, s.user_id, s.conversation_id, s.created_ts, s.last_activity_ts, "
    f"s.title, s.metadata, (SELECT COUNT(*) FROM {MESSAGES_TABLE} AS m "
    f"WHERE m.session_id = s.session_id) FROM {SESSIONS_TABLE} AS s"
)
LIST_ORDER = "ORDER BY s.last_activity_ts DESC, s.session_id LIMIT ? OFFSET ?"
SELECT_SESSION = f"SELECT {_SESSION_COLUMNS} FROM {SESSIONS_TABLE} WHERE session_id = ?"
LIST_SESSION_IDS = f"SELECT session_id FROM {SESSIONS_TABLE} ORDER BY session_id"
COUNT_ACTIVE_SESSIONS = f"SELECT COUNT(*) FROM {SESSIONS_TABLE} WHERE last_activity_ts >= ?"
COUNT_SESSIONS_AND_ROWS = (
    f"SELECT (SELECT COUNT(*) FROM {SESSIONS_TABLE}), (SELECT COUNT(*) FROM {MESSAGES_TABLE})"
)
# One idleness test, ``last_activity_ts < cutoff``, for counting, listing and deleting.
COUNT_IDLE_SESSIONS = f"SELECT COUNT(*) FROM {SESSIONS_TABLE} WHERE last_activity_ts < ?"
LIST_IDLE_SESSIONS = (
    f"{LIST_WITH_COUNTS} WHERE s.last_activity_ts < ? "
    "ORDER BY s.last_activity_ts, s.session_id LIMIT ?"
)
SELECT_IDLE_BATCH = (
    f"SELECT session_id FROM {SESSIONS_TABLE} WHERE last_activity_ts < ? "
    "ORDER BY last_activity_ts LIMIT ?"
)


def _stats(
    conn: sqlite3.Connection, row: Sequence[Any], keyring: Keyring | None = None
) -> SessionStats:
    session_id = row[0]
    # Encrypted rows are counted as items without a key (they cannot be checked without one).
    items = corrupt = 0
    for stored in conn.execute(SELECT_ALL_ROWS, (session_id,)):
        if is_encrypted(stored[1]) or decode_item(stored[1]) is not None:
            items += 1
        else:
            corrupt += 1
    return _stats_from(row, items, corrupt, keyring)


def _stats_from(
    row: Sequence[Any], count: int, corrupt: int | None, keyring: Keyring | None = None
) -> SessionStats:
    session_id, user_id, conversation_id, created_ts, last_activity_ts, title, metadata = row[:7]
    return SessionStats(
        session_id=session_id,
        user_id=user_id,
        conversation_id=conversation_id,
        message_count=count,
        corrupt_items=corrupt,
        created_at=from_timestamp(created_ts if created_ts is not None else 0.0),
        last_activity=from_timestamp(last_activity_ts if last_activity_ts is not None else 0.0),
        title=open_field(keyring, session_id, _text(title), "title", strict=False),
        metadata=decode_metadata(
            open_field(keyring, session_id, _text(metadata), "metadata", strict=False)
        ),
    )


def _text(value: object) -> str | None:
    # A column a hand-written row may hold a number (or bytes) in: not text of ours.
    return value if isinstance(value, str) else None


def session_exists(conn: sqlite3.Connection, session_id: str) -> bool:
    """Whether a session row has this id."""
    return conn.execute(SELECT_SESSION, (session_id,)).fetchone() is not None


def session_stats(
    conn: sqlite3.Connection, session_id: str, keyring: Keyring | None = None
) -> SessionStats | None:
    """What is stored for one session, or ``None`` if no session row has this id."""
    row = conn.execute(SELECT_SESSION, (session_id,)).fetchone()
    return None if row is None else _stats(conn, row, keyring)


def list_sessions(
    conn: sqlite3.Connection,
    user_id: str | None,
    limit: int,
    offset: int,
    after: ListPosition | None,
    active_since: float | None,
    keyring: Keyring | None = None,
) -> list[tuple[SessionStats, ListPosition]]:
    """Sessions (of ``user_id``, or all), most recent activity first; see the Backend's."""
    conditions: list[str] = []
    params: list[Any] = []
    if user_id is not None:
        conditions.append("s.user_id = ?")
        params.append(user_id)
    if active_since is not None:
        conditions.append("s.last_activity_ts >= ?")
        params.append(active_since)
    if after is not None:
        # Written as a range plus a tie-break, so the index serves the range.
        conditions.append(
            "s.last_activity_ts <= ? AND (s.last_activity_ts < ? OR s.session_id > ?)"
        )
        params.extend((after.activity, after.activity, after.session_id))
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    rows = conn.execute(
        f"{LIST_WITH_COUNTS} {where}{LIST_ORDER}", (*params, limit, offset)
    ).fetchall()
    return [
        (
            _stats_from(row, int(row[7]), None, keyring),
            ListPosition(float(row[4] or 0.0), row[0]),
        )
        for row in rows
    ]


LIST_USER_SESSION_IDS = (
    f"SELECT session_id FROM {SESSIONS_TABLE} WHERE user_id = ? AND session_id > ? "
    "ORDER BY session_id LIMIT ?"
)
_USER_SESSIONS = f"SELECT session_id FROM {SESSIONS_TABLE} WHERE user_id = ?"
DELETE_USER_ROWS = f"DELETE FROM {MESSAGES_TABLE} WHERE session_id IN ({_USER_SESSIONS})"
DELETE_USER_LOCKS = f"DELETE FROM {TURN_LOCKS_TABLE} WHERE session_id IN ({_USER_SESSIONS})"
DELETE_USER_SESSIONS = f"DELETE FROM {SESSIONS_TABLE} WHERE user_id = ?"


def user_session_ids(
    conn: sqlite3.Connection, user_id: str, after: str | None, limit: int
) -> list[str]:
    """Up to ``limit`` of a user's session ids after ``after``, sorted."""
    return [row[0] for row in conn.execute(LIST_USER_SESSION_IDS, (user_id, after or "", limit))]


SELECT_USER_BATCH = f"SELECT session_id FROM {SESSIONS_TABLE} WHERE user_id = ? LIMIT ?"


def delete_user_batch(conn: sqlite3.Connection, user_id: str, limit: int) -> tuple[int, int]:
    """Delete up to ``limit`` of a user's sessions with their rows; inside a write transaction."""
    ids = [row[0] for row in conn.execute(SELECT_USER_BATCH, (user_id, limit))]
    if not ids:
        return 0, 0
    marks = ", ".join("?" * len(ids))
    rows = conn.execute(f"DELETE FROM {MESSAGES_TABLE} WHERE session_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM {TURN_LOCKS_TABLE} WHERE session_id IN ({marks})", ids)
    sessions = conn.execute(f"DELETE FROM {SESSIONS_TABLE} WHERE session_id IN ({marks})", ids)
    return int(sessions.rowcount), int(rows.rowcount)


def delete_user(conn: sqlite3.Connection, user_id: str) -> tuple[int, int]:
    """Delete a user's sessions with their rows and locks; inside one write transaction."""
    rows = conn.execute(DELETE_USER_ROWS, (user_id,)).rowcount
    conn.execute(DELETE_USER_LOCKS, (user_id,))
    sessions = conn.execute(DELETE_USER_SESSIONS, (user_id,)).rowcount
    return int(sessions), int(rows)


def list_idle_sessions(
    conn: sqlite3.Connection, cutoff: float, limit: int | None, keyring: Keyring | None = None
) -> list[SessionStats]:
    """Sessions idle since before ``cutoff``, oldest activity first."""
    rows = conn.execute(LIST_IDLE_SESSIONS, (cutoff, -1 if limit is None else limit)).fetchall()
    return [_stats_from(row, int(row[7]), None, keyring) for row in rows]


# --- search ------------------------------------------------------------------------------

SEARCH_CANDIDATES = 2000
"""Matching messages ranked per search: the user's newest, in sessions not expired. A word in
more of their messages (one they use all the time) is looked for among these only, so a
search's cost stays bounded: older matches are not found."""

# The best entry of each of the user's sessions among the newest SEARCH_CANDIDATES matches:
# FTS5 matches only the owner's entries (newest first, by rowid, without ranking them all),
# ranks those with bm25 over the body alone (its rank column, which unlike bm25() can be
# aggregated; lower is better, so negated), and SQLite takes a bare column (rowid) from the
# row max() picks. The session row is checked for the owner too: the token only narrows.
SEARCH_SESSIONS = f"""
    WITH candidates AS MATERIALIZED (
        SELECT f.session_id, f.rowid AS row_id, -f.rank AS score
        FROM {SEARCH_TABLE} AS f JOIN {SESSIONS_TABLE} AS live ON live.session_id = f.session_id
        WHERE {SEARCH_TABLE} MATCH ? AND f.rank MATCH 'bm25(1.0, 0.0)'
            AND (? IS NULL OR live.last_activity_ts >= ?)
        ORDER BY f.rowid DESC LIMIT {SEARCH_CANDIDATES}
    ), best AS (
        SELECT session_id, row_id, max(score) AS rank FROM candidates GROUP BY session_id
    )
    SELECT m.session_id, m.row_id, m.rank, s.conversation_id, s.last_activity_ts, s.title
    FROM best AS m
    JOIN {SESSIONS_TABLE} AS s ON s.session_id = m.session_id
    WHERE s.user_id = ? AND (? IS NULL OR s.last_activity_ts >= ?)
    ORDER BY m.rank DESC, s.last_activity_ts DESC, m.session_id
    LIMIT ?"""
# The best messages' text, by rowid alone: no MATCH, for FTS5's snippet() seeks every
# phrase's doclist to each row, which takes milliseconds a row for a word in most messages.
_TEXTS = f"SELECT rowid, body FROM {SEARCH_TABLE} WHERE rowid IN ({{marks}})"


INDEX_BATCH = 500
"""Rows ``index_pending`` reads, decodes and indexes per write transaction."""

SELECT_INDEXED_THROUGH = f"SELECT indexed_through FROM {SEARCH_STATE_TABLE}"
SELECT_ANY_PENDING = (
    f"SELECT EXISTS (SELECT 1 FROM {MESSAGES_TABLE} WHERE id > ({SELECT_INDEXED_THROUGH}))"
)
# The owner comes from the session row: the token a search narrows by. The payload is read
# as bytes: a TEXT value that is not UTF-8 (a bit flip) must not fail every search after it.
SELECT_PENDING = f"""
    SELECT m.id, CAST(m.message_data AS BLOB), m.is_user, m.call_key, m.answer_key, m.is_reasoning,
        m.session_id, s.user_id, m.search_skip
    FROM {MESSAGES_TABLE} AS m LEFT JOIN {SESSIONS_TABLE} AS s ON s.session_id = m.session_id
    WHERE m.id > ? ORDER BY m.id LIMIT ?"""
SET_INDEXED_THROUGH = f"UPDATE {SEARCH_STATE_TABLE} SET indexed_through = ?"


def any_pending(conn: sqlite3.Connection) -> bool:
    """Whether rows above the watermark wait to be indexed."""
    return bool(conn.execute(SELECT_ANY_PENDING).fetchone()[0])


def index_pending(
    conn: sqlite3.Connection, keyring: Keyring | None, limit: int = INDEX_BATCH
) -> bool:
    """Index up to ``limit`` rows above the watermark and move it past them; inside a write.

    Rows of every user are indexed, oldest first. Passed over: rows written with search off,
    rows of a session without an owner, text that does not decode, and sealed rows unless
    ``keyring`` is given (the plaintext index is opted into) and opens them.

    Returns:
        Whether rows may still be pending (a full batch was read).
    """
    (through,) = conn.execute(SELECT_INDEXED_THROUGH).fetchone()
    rows = conn.execute(SELECT_PENDING, (through, limit)).fetchall()
    if not rows:
        return False
    tokens: dict[str, str] = {}
    entries = []
    for row in rows:
        row_id, data, session_id, user_id, skip = row[0], row[1], row[6], row[7], row[8]
        if skip or not isinstance(user_id, str):
            continue
        if is_encrypted(data):
            if keyring is None:
                continue
            try:
                item = open_row(row[:6], keyring, session_id)
            except EncryptionKeyError:
                continue
        else:
            item = decode_item(data)
        text = indexed_text(item)
        if text is None:
            continue
        token = tokens.get(user_id)
        if token is None:
            token = tokens[user_id] = owner_token(user_id)
        entries.append((row_id, text, token, session_id))
    if entries:
        conn.executemany(INSERT_SEARCH_ENTRY, entries)
    conn.execute(SET_INDEXED_THROUGH, (rows[-1][0],))
    return len(rows) == limit


def _quoted(word: str) -> str:
    # An FTS5 string: whatever it holds is text to match, never syntax (a " is doubled).
    return '"' + word.replace('"', '""') + '"'


def match_expression(user_id: str, terms: Sequence[str]) -> str:
    """The FTS5 query for ``terms`` (all must match) in ``user_id``'s entries."""
    phrases = [_quoted(term) for term in terms]
    if len(terms[-1]) >= MIN_PREFIX_CHARS:
        phrases[-1] += " *"
    return f"owner : {_quoted(owner_token(user_id))} AND body : ({' AND '.join(phrases)})"


def search_sessions(
    conn: sqlite3.Connection,
    user_id: str,
    terms: Sequence[str],
    limit: int,
    active_since: float | None,
    keyring: Keyring | None = None,
) -> list[SearchHit]:
    """See ``Backend.search_sessions``."""
    if not terms:
        return []
    match = match_expression(user_id, terms)
    rows = conn.execute(
        SEARCH_SESSIONS,
        (match, active_since, active_since, user_id, active_since, active_since, limit),
    ).fetchall()
    if not rows:
        return []
    row_ids = [row[1] for row in rows]
    texts = dict(conn.execute(_TEXTS.format(marks=", ".join("?" * len(row_ids))), row_ids))
    return [
        SearchHit(
            session_id=session_id,
            conversation_id=conversation_id,
            title=open_field(keyring, session_id, _text(title), "title", strict=False),
            snippet=snippet(texts.get(row_id) or "", list(terms)),
            rank=float(rank),
            last_activity=from_timestamp(last_activity if last_activity is not None else 0.0),
        )
        for session_id, row_id, rank, conversation_id, last_activity, title in rows
    ]


def session_ids(conn: sqlite3.Connection) -> list[str]:
    """Every session id, sorted."""
    return [row[0] for row in conn.execute(LIST_SESSION_IDS)]


def totals(conn: sqlite3.Connection, active_since: float) -> Totals:
    """Session and row counts, and the sessions active since ``active_since``."""
    sessions, rows = conn.execute(COUNT_SESSIONS_AND_ROWS).fetchone()
    (active,) = conn.execute(COUNT_ACTIVE_SESSIONS, (active_since,)).fetchone()
    return Totals(sessions=int(sessions), items=int(rows), active_sessions=int(active))


def count_idle_sessions(conn: sqlite3.Connection, cutoff: float) -> int:
    """How many sessions are idle since before ``cutoff``."""
    return int(conn.execute(COUNT_IDLE_SESSIONS, (cutoff,)).fetchone()[0])


def delete_idle_batch(conn: sqlite3.Connection, cutoff: float, batch_size: int) -> int:
    """Delete up to ``batch_size`` idle sessions with their rows; inside a write transaction.

    The write lock is held from the selection to the deletes, so no session selected here
    can be written to before it is deleted.
    """
    ids = [row[0] for row in conn.execute(SELECT_IDLE_BATCH, (cutoff, batch_size))]
    if not ids:
        return 0
    marks = ", ".join("?" * len(ids))
    conn.execute(f"DELETE FROM {MESSAGES_TABLE} WHERE session_id IN ({marks})", ids)
    # Turn locks of idle sessions are leases long expired (a holder that was killed).
    conn.execute(f"DELETE FROM {TURN_LOCKS_TABLE} WHERE session_id IN ({marks})", ids)
    deleted = conn.execute(f"DELETE FROM {SESSIONS_TABLE} WHERE session_id IN ({marks})", ids)
    return int(deleted.rowcount)


# --- health and sweep records ---------------------------------------------------------------

SELECT_OLDEST_ACTIVITY = f"SELECT MIN(last_activity_ts) FROM {SESSIONS_TABLE}"  # the index's first
SELECT_LAST_SWEEP = (
    f"SELECT started_ts, finished_ts, outcome, sessions_deleted, error FROM {SWEEPS_TABLE} "
    "ORDER BY id DESC LIMIT 1"
)
INSERT_SWEEP = (
    f"INSERT INTO {SWEEPS_TABLE} (started_ts, outcome, sessions_deleted) VALUES (?, 'running', 0)"
)
TRIM_SWEEPS = f"""
    DELETE FROM {SWEEPS_TABLE} WHERE id <= (
        SELECT id FROM {SWEEPS_TABLE} ORDER BY id DESC LIMIT 1 OFFSET ?
    )"""
FINISH_SWEEP = (
    f"UPDATE {SWEEPS_TABLE} SET finished_ts = ?, outcome = ?, sessions_deleted = ?, error = ? "
    "WHERE id = ?"
)


def oldest_activity(conn: sqlite3.Connection) -> float | None:
    """The least recent last activity of any session, or ``None`` without sessions."""
    value = conn.execute(SELECT_OLDEST_ACTIVITY).fetchone()[0]
    return None if value is None else float(value)


def last_sweep(conn: sqlite3.Connection) -> SweepRecord | None:
    """The most recently started sweep's record, or ``None`` if none was recorded."""
    row = conn.execute(SELECT_LAST_SWEEP).fetchone()
    if row is None:
        return None
    started, finished, outcome, deleted, error = row
    return SweepRecord(
        started_at=from_timestamp(started),
        finished_at=None if finished is None else from_timestamp(finished),
        outcome=outcome,
        sessions_deleted=int(deleted),
        error=error,
    )


def start_sweep(conn: sqlite3.Connection, started: float) -> int:
    """Record a running sweep and trim the history; inside a write transaction."""
    sweep_id = conn.execute(INSERT_SWEEP, (started,)).lastrowid
    conn.execute(TRIM_SWEEPS, (SWEEP_HISTORY,))
    assert sweep_id is not None  # an INSERT sets it
    return sweep_id


def finish_sweep(
    conn: sqlite3.Connection,
    sweep_id: int,
    finished: float,
    outcome: str,
    sessions_deleted: int,
    error: str | None,
) -> None:
    """Record how a sweep ended; inside a write transaction."""
    conn.execute(FINISH_SWEEP, (finished, outcome, sessions_deleted, error, sweep_id))


# --- re-encoding rows (rotate-key, encrypt, decrypt) ----------------------------------------

SCAN_ROWS = (
    f"SELECT session_id, id, message_data, is_user, call_key, answer_key, is_reasoning "
    f"FROM {MESSAGES_TABLE} WHERE id > ? ORDER BY id LIMIT ?"
)
# Compare-and-set: a row a writer deleted (pruned) or changed meanwhile is left alone.
REPLACE_ROW = (
    f"UPDATE {MESSAGES_TABLE} SET message_data = ?, is_user = ?, call_key = ?, "
    "answer_key = ?, is_reasoning = ? WHERE id = ? AND message_data = ?"
)


def scan_rows(conn: sqlite3.Connection, after: int, limit: int) -> list[StoredRow]:
    """Up to ``limit`` rows with an id above ``after``, in id order."""
    rows = conn.execute(SCAN_ROWS, (after, limit)).fetchall()
    return [
        StoredRow(
            session_id=row[0],
            ref=row[1],
            data=row[2] if isinstance(row[2], str) else bytes(row[2]).decode("utf-8", "replace"),
            clear=(bool(row[3]), row[4], row[5], bool(row[6])),
        )
        for row in rows
    ]


def replace_rows(conn: sqlite3.Connection, changes: Sequence[RowChange]) -> int:
    """Apply ``changes`` where the row still holds their ``old`` payload; inside a write."""
    changed = 0
    for change in changes:
        changed += conn.execute(
            REPLACE_ROW, (change.new, *change.clear, change.ref, change.old)
        ).rowcount
    return changed


SCAN_FIELDS = (
    f"SELECT session_id, title, metadata FROM {SESSIONS_TABLE} WHERE session_id > ? "
    "AND (title IS NOT NULL OR metadata IS NOT NULL) ORDER BY session_id LIMIT ?"
)
# Compare-and-set: "IS" matches NULL to NULL.
REPLACE_FIELDS = (
    f"UPDATE {SESSIONS_TABLE} SET title = ?, metadata = ? "
    "WHERE session_id = ? AND title IS ? AND metadata IS ?"
)


def scan_session_fields(
    conn: sqlite3.Connection, after: str | None, limit: int
) -> list[StoredFields]:
    """Up to ``limit`` sessions after ``after`` holding a title or metadata, by id."""
    return [
        StoredFields(row[0], _text(row[1]), _text(row[2]))
        for row in conn.execute(SCAN_FIELDS, (after or "", limit))
    ]


def replace_session_fields(conn: sqlite3.Connection, changes: Sequence[FieldsChange]) -> int:
    """Apply ``changes`` where the session still holds their ``old`` fields; inside a write."""
    changed = 0
    for change in changes:
        changed += conn.execute(
            REPLACE_FIELDS,
            (
                change.title,
                change.metadata,
                change.session_id,
                change.old.title,
                change.old.metadata,
            ),
        ).rowcount
    return changed


DROP_SEARCH_BATCH = (
    f"DELETE FROM {SEARCH_TABLE} WHERE rowid IN (SELECT rowid FROM {SEARCH_TABLE} LIMIT ?)"
)
# Merges the index's segments into one: the entries deleted leave its pages (FTS5 deletes
# add tombstones; the text they hide stays in older segments until a merge).
OPTIMIZE_SEARCH = f"INSERT INTO {SEARCH_TABLE} ({SEARCH_TABLE}) VALUES ('optimize')"


def drop_search_batch(conn: sqlite3.Connection, limit: int) -> int:
    """Delete up to ``limit`` search entries; inside a write transaction."""
    return int(conn.execute(DROP_SEARCH_BATCH, (limit,)).rowcount)
