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
from ...models import SessionStats
from ...pruning import (
    Item,
    answers_late,
    cut_index,
    is_user_message,
    late_call_index,
    outputs_needing_stored_calls,
    pairing,
)
from ..base import RowChange, SessionDump, SessionKey, StoredRow, Totals
from .schema import MESSAGES_TABLE, SESSIONS_TABLE, TURN_LOCKS_TABLE

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
    f"SELECT substr(message_data, 1, 5) FROM {MESSAGES_TABLE} WHERE session_id = ? "
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
"""A plain row without its clear columns (they read as NULL: pruning decodes the payload)."""
INSERT_ITEM_ROW = (
    f"INSERT INTO {MESSAGES_TABLE} "
    "(session_id, message_data, is_user, call_key, answer_key, is_reasoning) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
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


def read_items(
    conn: sqlite3.Connection, session_id: str, limit: int | None, keyring: Keyring | None = None
) -> DecodedRows:
    """Return a session's items in order, oldest first, with the SDK's ``limit`` semantics.

    ``None`` or a negative limit reads everything, ``0`` reads nothing, ``n > 0`` reads the
    newest ``n`` decodable items (the read window widens past corrupt rows). Encrypted rows
    are opened with ``keyring`` (see ``encryption.decode_stored`` for what raises).
    """
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
    *,
    refuse_if_encrypted: bool = False,
) -> int:
    """Record activity, insert encoded items and prune, inside the caller's transaction.

    ``payloads[i]`` is the JSON text of ``items[i]``, or that text sealed (see
    ``encryption``); the clear columns are stored either way. With ``refuse_if_encrypted``
    (a session without a key), a session whose newest row is encrypted raises
    ``EncryptionKeyError`` and nothing is written: plaintext must not be mixed into it.

    A tool output or approval response
    whose call is neither earlier in the batch nor stored is not inserted: that happens when
    an approval is answered so late that pruning already removed its call, and storing it
    would leave an output the model rejects. It is logged as a warning.

    Returns:
        The number of rows pruned.
    """
    if refuse_if_encrypted:
        newest = conn.execute(SELECT_NEWEST_KEY_ID, (key.session_id,)).fetchone()
        if newest is not None and is_encrypted(newest[0]):
            raise EncryptionKeyError(key.session_id, [], [], writing=True)
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
    conn.executemany(
        INSERT_ITEM_ROW,
        [(key.session_id, payload, *clear_columns(item)) for item, payload in rows],
    )
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
    conn: sqlite3.Connection, session_id: str, now: float, keyring: Keyring | None = None
) -> Item | None:
    """Delete and return the newest decodable item; corrupt rows are skipped, not deleted.

    Raises:
        EncryptionKeyError: if the newest row is encrypted with a key ``keyring`` lacks.
    """
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
    _, user_id, conversation_id, created_ts, last_activity_ts = row
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
        clear=tuple(clear) if any(clear) else (),
    )


INSERT_DUMPED_SESSION = f"""
    INSERT INTO {SESSIONS_TABLE}
        (session_id, user_id, conversation_id, created_ts, last_activity_ts, late_call_row)
    VALUES (?, ?, ?, ?, ?, NULL)
"""


def load_session(conn: sqlite3.Connection, dump: SessionDump) -> None:
    """Replace a session with ``dump``, inside the caller's write transaction.

    ``late_call_row`` is left unknown, so the next prune checks the session whole.
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
        ),
    )
    clear = dump.clear or (None,) * len(dump.payloads)
    conn.executemany(
        INSERT_ITEM_ROW,
        [
            (dump.session_id, payload, *(columns or clear_columns(decode_item(payload) or {})))
            for payload, columns in zip(dump.payloads, clear, strict=True)
        ],
    )


# --- many sessions ---------------------------------------------------------------------

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
# One idleness test, ``last_activity_ts < cutoff``, for counting, listing and deleting.
COUNT_IDLE_SESSIONS = f"SELECT COUNT(*) FROM {SESSIONS_TABLE} WHERE last_activity_ts < ?"
LIST_IDLE_SESSIONS = (
    f"SELECT {_SESSION_COLUMNS} FROM {SESSIONS_TABLE} WHERE last_activity_ts < ? "
    "ORDER BY last_activity_ts, session_id LIMIT ?"
)
SELECT_IDLE_BATCH = (
    f"SELECT session_id FROM {SESSIONS_TABLE} WHERE last_activity_ts < ? "
    "ORDER BY last_activity_ts LIMIT ?"
)


def _stats(conn: sqlite3.Connection, row: Sequence[Any]) -> SessionStats:
    session_id, user_id, conversation_id, created_ts, last_activity_ts = row
    # Encrypted rows are counted as items without a key (they cannot be checked without one).
    items = corrupt = 0
    for row in conn.execute(SELECT_ALL_ROWS, (session_id,)):
        if is_encrypted(row[1]) or decode_item(row[1]) is not None:
            items += 1
        else:
            corrupt += 1
    return SessionStats(
        session_id=session_id,
        user_id=user_id,
        conversation_id=conversation_id,
        message_count=items,
        corrupt_items=corrupt,
        created_at=from_timestamp(created_ts if created_ts is not None else 0.0),
        last_activity=from_timestamp(last_activity_ts if last_activity_ts is not None else 0.0),
    )


def session_exists(conn: sqlite3.Connection, session_id: str) -> bool:
    """Whether a session row has this id."""
    return conn.execute(SELECT_SESSION, (session_id,)).fetchone() is not None


def session_stats(conn: sqlite3.Connection, session_id: str) -> SessionStats | None:
    """What is stored for one session, or ``None`` if no session row has this id."""
    row = conn.execute(SELECT_SESSION, (session_id,)).fetchone()
    return None if row is None else _stats(conn, row)


def list_sessions(
    conn: sqlite3.Connection, user_id: str | None, limit: int, offset: int
) -> list[SessionStats]:
    """Sessions (of ``user_id``, or all), most recent activity first."""
    if user_id is None:
        rows = conn.execute(LIST_SESSIONS, (limit, offset)).fetchall()
    else:
        rows = conn.execute(LIST_USER_SESSIONS, (user_id, limit, offset)).fetchall()
    return [_stats(conn, row) for row in rows]


def list_idle_sessions(
    conn: sqlite3.Connection, cutoff: float, limit: int | None
) -> list[SessionStats]:
    """Sessions idle since before ``cutoff``, oldest activity first."""
    rows = conn.execute(LIST_IDLE_SESSIONS, (cutoff, -1 if limit is None else limit)).fetchall()
    return [_stats(conn, row) for row in rows]


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
