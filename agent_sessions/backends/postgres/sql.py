"""Every statement the PostgreSQL backend runs, by name; values are always parameters.

Tables are named apart from the SDK's ``SQLAlchemySession`` tables (``agent_sessions``,
``agent_messages``), which may live in the same database, and are found through the
connection's ``search_path``. Times are ``timestamptz``, read back ``AT TIME ZONE 'UTC'`` so
the server's ``TimeZone`` setting never matters.

Every writer of a session's items first locks the session's row, so within a write
transaction the items read are exactly the ones stored: nothing else can change them.
"""

from __future__ import annotations

from ...search import MIN_PREFIX_CHARS

SESSIONS = "agent_sessions_session"
ITEMS = "agent_sessions_item"
SCHEMA = "agent_sessions_schema"
TURN_LOCKS = "agent_sessions_turn_lock"
SWEEPS = "agent_sessions_sweep"
FULL_PRUNE_FUNCTION = "agent_sessions_full_prune_needed"
OUR_TABLES = (SESSIONS, ITEMS, SCHEMA, TURN_LOCKS, SWEEPS)
"""Every table of ours: the database's size in health() is theirs (add new tables here)."""
KEY_NEEDED_FUNCTION = "agent_sessions_key_needed"

# --- transactions ---------------------------------------------------------------------------

BEGIN = "BEGIN"
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ"
COMMIT = "COMMIT"
# set_config(..., true) is SET LOCAL with a parameter: it ends with the transaction, so a
# PgBouncer in transaction mode hands the server connection on unchanged.
SET_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %(timeout)s, true)"

# --- schema ---------------------------------------------------------------------------------

MIGRATION_LOCK_KEY = 0x6167656E745F7365  # b"agent_se": one advisory lock id for migrations
LOCK_FOR_MIGRATION = "SELECT pg_advisory_xact_lock(%(key)s)"
SELECT_TABLES = (
    f"SELECT to_regclass('{SCHEMA}') IS NOT NULL, to_regclass('{SESSIONS}') IS NOT NULL, "
    f"to_regclass('{ITEMS}') IS NOT NULL"
)
SELECT_VERSION = f"SELECT max(version) FROM {SCHEMA}"
CREATE_SCHEMA_TABLE = f"""
    CREATE TABLE IF NOT EXISTS {SCHEMA} (
        version integer PRIMARY KEY,
        description text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )"""
RECORD_MIGRATION = (
    f"INSERT INTO {SCHEMA} (version, description) VALUES (%(version)s, %(description)s)"
)

# --- one session: writes ------------------------------------------------------------------

# The upsert takes the session row's lock whether it inserts or updates, so the first two
# concurrent writes to a new session queue on it instead of failing on the primary key.
# It reserves seqs next_seq .. next_seq + n - 1 for the batch; a new session holds no call
# answered late (late_call_seq 0), unless this very batch answers one.
UPSERT_SESSION = f"""
    INSERT INTO {SESSIONS} AS s
        (session_id, user_id, conversation_id, created_at, last_activity, next_seq, late_call_seq,
         title)
    VALUES (
        %(sid)s, %(user)s, %(conv)s, %(now)s, %(now)s, 1 + %(n)s,
        CASE WHEN %(forget)s THEN NULL ELSE 0 END, %(title)s
    )
    ON CONFLICT (session_id) DO UPDATE SET
        last_activity = greatest(s.last_activity, excluded.last_activity),
        user_id = coalesce(s.user_id, excluded.user_id),
        conversation_id = coalesce(s.conversation_id, excluded.conversation_id),
        next_seq = s.next_seq + %(n)s,
        late_call_seq = CASE WHEN %(forget)s THEN NULL ELSE s.late_call_seq END,
        title = coalesce(s.title, excluded.title)"""
# Exact expiry: a session idle since before %(since)s (NULL: never) starts afresh. Its row is
# locked first, so a concurrent write waits and then finds the new row.
EXPIRE_ITEMS = f"""
    WITH expired AS (
        SELECT session_id FROM {SESSIONS}
        WHERE session_id = %(sid)s AND last_activity < %(since)s FOR UPDATE
    )
    DELETE FROM {ITEMS} WHERE session_id IN (SELECT session_id FROM expired)"""
EXPIRE_SESSION = f"DELETE FROM {SESSIONS} WHERE session_id = %(sid)s AND last_activity < %(since)s"

# The newest stored call of each key an output in the batch needs (read before the insert).
_STORED_CALLS = f"""
    SELECT call_key, max(seq) AS seq FROM {ITEMS}
    WHERE session_id = %(sid)s AND call_key = ANY(%(keys)s::text[])
    GROUP BY call_key"""
FIND_STORED_CALLS = f"SELECT call_key FROM ({_STORED_CALLS}) AS c"
# The stored part of ``pruning.answers_late``: a stored call answered by this batch after a
# user message (``late_keys``: outputs with one before them in the batch, or one themselves),
# or a stored user message at or after the newest stored call of a key the batch answers
# (as ``sqlite.sql._find_stored_calls`` scans it: a user row that is the call counts).
FORGET_IF_ANSWERED_LATE = f"""
    UPDATE {SESSIONS} SET late_call_seq = NULL
    WHERE session_id = %(sid)s AND EXISTS (
        SELECT 1 FROM ({_STORED_CALLS}) AS c
        WHERE c.call_key = ANY(%(late_keys)s::text[]) OR EXISTS (
            SELECT 1 FROM {ITEMS} AS u
            WHERE u.session_id = %(sid)s AND u.is_user AND u.seq >= c.seq
        )
    )"""
# Seqs come from the locked row the upsert just advanced, not from its result: the statements
# go to the server together. An output whose call is neither earlier in the batch nor stored
# (``needs`` names the call it needs) is left out.
# Payloads go in binary format (%(data)b): in text format psycopg escapes every quote and
# backslash of an array element with a regex in the event loop's thread (1.3 s for 1 MB).
# search_text and search_words are NULL arrays when nothing is indexed (unnest pads with NULL).
INSERT_ITEMS = f"""
    INSERT INTO {ITEMS}
        (session_id, seq, message_data, is_user, call_key, answer_key, is_reasoning,
         search_text, search_vector)
    SELECT s.session_id, s.next_seq - %(n)s + b.ord - 1, b.data, b.is_user, b.call_key,
        b.answer_key, b.is_reasoning, b.search_text, to_tsvector('simple', b.search_words)
    FROM {SESSIONS} AS s,
        unnest(%(data)b::text[], %(is_user)s::boolean[], %(call_key)s::text[], %(needs)s::text[],
               %(answer_key)s::text[], %(is_reasoning)s::boolean[],
               %(search_text)b::text[], %(search_words)b::text[])
            WITH ORDINALITY AS b(data, is_user, call_key, needs, answer_key, is_reasoning,
                                 search_text, search_words, ord)
    WHERE s.session_id = %(sid)s AND (
        b.needs IS NULL OR EXISTS (
            SELECT 1 FROM {ITEMS} AS c WHERE c.session_id = %(sid)s AND c.call_key = b.needs
        )
    )"""
# The pruning fast path, as sqlite.sql.prune takes it: when the session holds more than ``max``
# items and no call answered late (late_call_seq 0), cut at the first user message among the
# newest ``max``. Returns (stored, late, cut, deleted). With ``strict``, a session that needs
# the full rule raises FULL_PRUNE_SQLSTATE instead, which aborts the transaction (the client
# redoes it on the full path): that is what lets a write be sent with its COMMIT at once.
PRUNE_FAST = f"""
    WITH state AS (
        SELECT s.late_call_seq AS late,
            (SELECT count(*) FROM {ITEMS} AS i WHERE i.session_id = s.session_id) AS stored,
            (SELECT min(w.seq) FROM (
                SELECT i.seq, i.is_user FROM {ITEMS} AS i WHERE i.session_id = s.session_id
                ORDER BY i.seq DESC LIMIT %(max)s
            ) AS w WHERE w.is_user) AS cut
        FROM {SESSIONS} AS s WHERE s.session_id = %(sid)s
    ), pruned AS (
        DELETE FROM {ITEMS} AS i USING state
        WHERE i.session_id = %(sid)s AND state.stored > %(max)s AND state.late = 0
            AND i.seq < state.cut
        RETURNING 1
    )
    SELECT state.stored, state.late, state.cut, (SELECT count(*) FROM pruned),
        CASE WHEN %(strict)s AND state.stored > %(max)s
            AND (state.late IS DISTINCT FROM 0 OR state.cut IS NULL)
        THEN {FULL_PRUNE_FUNCTION}() END
    FROM state"""
SET_LATE_CALL = f"UPDATE {SESSIONS} SET late_call_seq = %(late)s WHERE session_id = %(sid)s"
DELETE_ITEMS_BEFORE = f"""
    WITH d AS (DELETE FROM {ITEMS} WHERE session_id = %(sid)s AND seq < %(seq)s RETURNING 1)
    SELECT count(*) FROM d"""
LOCK_SESSION = f"SELECT 1 FROM {SESSIONS} WHERE session_id = %(sid)s FOR UPDATE"
DELETE_ITEM = f"DELETE FROM {ITEMS} WHERE session_id = %(sid)s AND seq = %(seq)s"
TOUCH_SESSION = (
    f"UPDATE {SESSIONS} SET last_activity = greatest(last_activity, %(now)s) "
    "WHERE session_id = %(sid)s"
)
DELETE_SESSION_ITEMS = f"""
    WITH d AS (DELETE FROM {ITEMS} WHERE session_id = %(sid)s RETURNING 1)
    SELECT count(*) FROM d"""
DELETE_SESSION = f"DELETE FROM {SESSIONS} WHERE session_id = %(sid)s"

# --- one session: reads ---------------------------------------------------------------------

# Rows come with their clear columns (see agent_sessions.encryption): an encrypted row's
# skeleton for pruning, and the associated data that authenticates it.
_ROW = "seq, message_data, is_user, call_key, answer_key, is_reasoning"
SELECT_ALL_ITEMS = f"SELECT {_ROW} FROM {ITEMS} WHERE session_id = %(sid)s ORDER BY seq"
# A write without a key to a session whose newest row before this batch (its seqs start at
# next_seq - n) is encrypted: refused (it would mix plaintext into it), by raising
# KEY_NEEDED_SQLSTATE, so the write stays one round trip.
REFUSE_IF_ENCRYPTED = f"""
    SELECT CASE WHEN EXISTS (
        SELECT 1 FROM (
            SELECT i.message_data FROM {ITEMS} AS i, {SESSIONS} AS s
            WHERE s.session_id = %(sid)s AND i.session_id = %(sid)s
                AND i.seq < s.next_seq - %(n)s
            ORDER BY i.seq DESC LIMIT 1
        ) AS newest WHERE left(newest.message_data, 5) = 'enc1:'
    ) THEN {KEY_NEEDED_FUNCTION}() END"""
SESSION_EXISTS = f"SELECT 1 FROM {SESSIONS} WHERE session_id = %(sid)s"
# Items oldest first (all) or newest first (a limit), reading nothing of an expired session:
# one idle since before %(since)s (NULL: none expires). Tested once per statement, not per row.
_NOT_EXPIRED = f"""NOT EXISTS (
    SELECT 1 FROM {SESSIONS} AS e WHERE e.session_id = %(sid)s AND e.last_activity < %(since)s
)"""
READ_ALL_ITEMS = (
    f"SELECT {_ROW} FROM {ITEMS} WHERE session_id = %(sid)s AND {_NOT_EXPIRED} ORDER BY seq"
)
READ_NEWEST_ITEMS = (
    f"SELECT {_ROW} FROM {ITEMS} WHERE session_id = %(sid)s AND {_NOT_EXPIRED} "
    "ORDER BY seq DESC LIMIT %(limit)s"
)
SELECT_FIELDS = f"""
    SELECT title, metadata FROM {SESSIONS}
    WHERE session_id = %(sid)s AND NOT coalesce(last_activity < %(since)s, false)"""
LOCK_SESSION_ACTIVITY = (
    f"SELECT last_activity < %(since)s FROM {SESSIONS} WHERE session_id = %(sid)s FOR UPDATE"
)
INSERT_SESSION = f"""
    INSERT INTO {SESSIONS}
        (session_id, user_id, conversation_id, created_at, last_activity, next_seq, late_call_seq)
    VALUES (%(sid)s, %(user)s, %(conv)s, %(now)s, %(now)s, 1, 0)"""
SET_TITLE = f"UPDATE {SESSIONS} SET title = %(title)s WHERE session_id = %(sid)s"
SET_METADATA = f"UPDATE {SESSIONS} SET metadata = %(metadata)s WHERE session_id = %(sid)s"
SELECT_OWNER = f"SELECT user_id, conversation_id FROM {SESSIONS} WHERE session_id = %(sid)s"

# --- turn locks (see the sessions' turn_lock) -----------------------------------------------

# Lease times are the clients' POSIX seconds (their injected clocks), compared as numbers.
SELECT_TURN_LOCK_EXPIRY = f"SELECT expires_at FROM {TURN_LOCKS} WHERE session_id = %(sid)s"
TAKE_TURN_LOCK = f"""
    INSERT INTO {TURN_LOCKS} AS l (session_id, owner, expires_at)
    VALUES (%(sid)s, %(owner)s, %(expires)s)
    ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
        WHERE l.expires_at <= %(now)s"""
RENEW_TURN_LOCK = f"""
    UPDATE {TURN_LOCKS} SET expires_at = %(expires)s
    WHERE session_id = %(sid)s AND owner = %(owner)s"""
RELEASE_TURN_LOCK = f"DELETE FROM {TURN_LOCKS} WHERE session_id = %(sid)s AND owner = %(owner)s"
DELETE_IDLE_TURN_LOCKS = f"DELETE FROM {TURN_LOCKS} WHERE session_id = ANY(%(ids)s::text[])"

# --- copying between databases ---------------------------------------------------------------

SELECT_DUMP = f"""
    SELECT s.user_id, s.conversation_id,
        s.created_at AT TIME ZONE 'UTC', s.last_activity AT TIME ZONE 'UTC',
        ARRAY(SELECT i.message_data FROM {ITEMS} AS i
              WHERE i.session_id = s.session_id ORDER BY i.seq),
        s.title, s.metadata,
        ARRAY(SELECT ARRAY[i.is_user::text, i.call_key, i.answer_key, i.is_reasoning::text]
              FROM {ITEMS} AS i WHERE i.session_id = s.session_id ORDER BY i.seq)
    FROM {SESSIONS} AS s WHERE s.session_id = %(sid)s"""
# late_call_seq NULL: not known, so the next prune checks the session whole.
INSERT_DUMPED_SESSION = f"""
    INSERT INTO {SESSIONS}
        (session_id, user_id, conversation_id, created_at, last_activity, next_seq, late_call_seq,
         title, metadata)
    VALUES (%(sid)s, %(user)s, %(conv)s, %(created)s, %(active)s, 1 + %(n)s, NULL,
        %(title)s, %(metadata)s)"""
INSERT_DUMPED_ITEMS = f"""
    INSERT INTO {ITEMS}
        (session_id, seq, message_data, is_user, call_key, answer_key, is_reasoning,
         search_text, search_vector)
    SELECT %(sid)s, b.ord, b.data, b.is_user, b.call_key, b.answer_key, b.is_reasoning,
        b.search_text, to_tsvector('simple', b.search_words)
    FROM unnest(%(data)b::text[], %(is_user)s::boolean[], %(call_key)s::text[],
                %(answer_key)s::text[], %(is_reasoning)s::boolean[],
                %(search_text)b::text[], %(search_words)b::text[])
        WITH ORDINALITY AS b(data, is_user, call_key, answer_key, is_reasoning,
                             search_text, search_words, ord)"""

# --- re-encoding rows (rotate-key, encrypt, decrypt) -----------------------------------------

_SCAN = (
    f"SELECT session_id, seq, message_data, is_user, call_key, answer_key, is_reasoning "
    f"FROM {ITEMS}"
)
SCAN_ROWS_FIRST = f"{_SCAN} ORDER BY session_id, seq LIMIT %(limit)s"
SCAN_ROWS_AFTER = (
    f"{_SCAN} WHERE (session_id, seq) > (%(sid)s, %(seq)s) ORDER BY session_id, seq LIMIT %(limit)s"
)
# Compare-and-set: a row a writer deleted (pruned) or changed meanwhile is left alone.
REPLACE_ROWS = f"""
    UPDATE {ITEMS} AS i SET message_data = c.new, is_user = c.is_user, call_key = c.call_key,
        answer_key = c.answer_key, is_reasoning = c.is_reasoning
    FROM unnest(%(sid)s::text[], %(seq)s::bigint[], %(old)b::text[], %(new)b::text[],
                %(is_user)s::boolean[], %(call_key)s::text[], %(answer_key)s::text[],
                %(is_reasoning)s::boolean[])
        AS c(sid, seq, old, new, is_user, call_key, answer_key, is_reasoning)
    WHERE i.session_id = c.sid AND i.seq = c.seq AND i.message_data = c.old"""

# --- many sessions --------------------------------------------------------------------------

# session_id is COLLATE "C": ORDER BY it is code point order, as Python's sorted() and SQLite.
_STATS = f"""
    SELECT s.session_id, s.user_id, s.conversation_id,
        s.created_at AT TIME ZONE 'UTC', s.last_activity AT TIME ZONE 'UTC', s.title, s.metadata,
        ARRAY(SELECT i.message_data FROM {ITEMS} AS i
              WHERE i.session_id = s.session_id ORDER BY i.seq)
    FROM {SESSIONS} AS s"""
SESSION_STATS = f"{_STATS} WHERE s.session_id = %(sid)s"
# Listings count rows without reading them; conditions are added by the backend (fixed text).
LIST_WITH_COUNTS = f"""
    SELECT s.session_id, s.user_id, s.conversation_id,
        s.created_at AT TIME ZONE 'UTC', s.last_activity AT TIME ZONE 'UTC', s.title, s.metadata,
        (SELECT count(*) FROM {ITEMS} AS i WHERE i.session_id = s.session_id)
    FROM {SESSIONS} AS s"""
LIST_BY_USER = "s.user_id = %(user)s"
LIST_ACTIVE_SINCE = "s.last_activity >= %(since)s"
# A range plus a tie-break, so the (user_id, last_activity DESC, session_id) index serves it.
LIST_AFTER = (
    "s.last_activity <= %(after)s AND (s.last_activity < %(after)s OR s.session_id > %(after_id)s)"
)
LIST_ORDER = "ORDER BY s.last_activity DESC, s.session_id LIMIT %(limit)s OFFSET %(offset)s"
USER_SESSION_IDS = f"""
    SELECT session_id FROM {SESSIONS} WHERE user_id = %(user)s AND session_id > %(after)s
    ORDER BY session_id LIMIT %(limit)s"""
# delete_user, one batch per transaction: the rows are locked, so a write in flight waits and
# then finds its session gone (and creates it anew: the next batch takes it).
LOCK_USER_BATCH = f"""
    SELECT session_id FROM {SESSIONS} WHERE user_id = %(user)s
    ORDER BY session_id LIMIT %(limit)s FOR UPDATE"""
DELETE_BATCH_ITEMS = f"""
    WITH d AS (DELETE FROM {ITEMS} WHERE session_id = ANY(%(ids)s::text[]) RETURNING 1)
    SELECT count(*) FROM d"""
DELETE_BATCH_SESSIONS = f"DELETE FROM {SESSIONS} WHERE session_id = ANY(%(ids)s::text[])"
# LIMIT NULL is no limit.
LIST_IDLE_SESSIONS = (
    f"{LIST_WITH_COUNTS} WHERE s.last_activity < %(cutoff)s "
    "ORDER BY s.last_activity, s.session_id LIMIT %(limit)s"
)
SESSION_IDS = f"SELECT session_id FROM {SESSIONS} ORDER BY session_id"

# Search: the best item of each of the user's sessions (ts_rank, higher is better), then a
# headline of that item for the top ``limit`` sessions only (ts_headline reads the text).
# The query is built by tsquery() from words, each quoted: no user text is tsquery syntax.
SNIPPET_WORDS = 16
HEADLINE_OPTIONS = (
    f'StartSel="", StopSel="", MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 2}, ShortWord=0'
)
SEARCH_SESSIONS = f"""
    WITH q AS (SELECT to_tsquery('simple', %(query)s) AS query),
    best AS (
        SELECT DISTINCT ON (i.session_id) i.session_id, i.seq,
            ts_rank(i.search_vector, q.query) AS rank
        FROM q, {ITEMS} AS i JOIN {SESSIONS} AS s ON s.session_id = i.session_id
        WHERE i.search_vector @@ q.query AND s.user_id = %(user)s
            AND (%(since)s::timestamptz IS NULL OR s.last_activity >= %(since)s)
        ORDER BY i.session_id, rank DESC, i.seq DESC
    ), top AS (
        SELECT best.*, s.conversation_id, s.last_activity, s.title
        FROM best JOIN {SESSIONS} AS s ON s.session_id = best.session_id
        ORDER BY best.rank DESC, s.last_activity DESC, best.session_id
        LIMIT %(limit)s
    )
    SELECT top.session_id, top.conversation_id,
        ts_headline('simple', i.search_text, q.query, %(headline)s),
        top.rank, top.last_activity AT TIME ZONE 'UTC', top.title
    FROM q, top JOIN {ITEMS} AS i ON i.session_id = top.session_id AND i.seq = top.seq
    ORDER BY top.rank DESC, top.last_activity DESC, top.session_id"""


def tsquery(terms: list[str]) -> str:
    """The ``to_tsquery`` text for folded words: all must match, the last maybe as a prefix."""
    quoted = ["'" + term.replace("\\", "\\\\").replace("'", "''") + "'" for term in terms]
    if len(terms[-1]) >= MIN_PREFIX_CHARS:
        quoted[-1] += ":*"
    return " & ".join(quoted)


TOTALS = (
    f"SELECT (SELECT count(*) FROM {SESSIONS}), (SELECT count(*) FROM {ITEMS}), "
    f"(SELECT count(*) FROM {SESSIONS} WHERE last_activity >= %(since)s)"
)
COUNT_IDLE = f"SELECT count(*) FROM {SESSIONS} WHERE last_activity < %(cutoff)s"

# Cleanup: SKIP LOCKED, so sweepers running at once take disjoint batches and never wait on
# each other or on a session being written. The deletes re-check idleness under the locks.
LOCK_IDLE_BATCH = f"""
    SELECT session_id FROM {SESSIONS} WHERE last_activity < %(cutoff)s
    ORDER BY last_activity LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""
DELETE_IDLE_ITEMS = f"""
    DELETE FROM {ITEMS} WHERE session_id IN (
        SELECT session_id FROM {SESSIONS}
        WHERE session_id = ANY(%(ids)s::text[]) AND last_activity < %(cutoff)s
    )"""
DELETE_IDLE_SESSIONS = f"""
    DELETE FROM {SESSIONS}
    WHERE session_id = ANY(%(ids)s::text[]) AND last_activity < %(cutoff)s"""

# --- health and sweep records ---------------------------------------------------------------

SELECT_OLDEST_ACTIVITY = f"SELECT min(last_activity) AT TIME ZONE 'UTC' FROM {SESSIONS}"
# Only our tables (with their indexes and TOAST): the database may be the app's too. A table
# not created yet (to_regclass NULL) counts nothing.
SELECT_OUR_BYTES = """
    SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0)
    FROM unnest(%(tables)s::text[]) AS name"""
SELECT_LAST_SWEEP = f"""
    SELECT started_at AT TIME ZONE 'UTC', finished_at AT TIME ZONE 'UTC', outcome,
        sessions_deleted, error
    FROM {SWEEPS} ORDER BY id DESC LIMIT 1"""
INSERT_SWEEP = f"""
    INSERT INTO {SWEEPS} (started_at, outcome, sessions_deleted)
    VALUES (%(started)s, 'running', 0) RETURNING id"""
TRIM_SWEEPS = f"""
    DELETE FROM {SWEEPS} WHERE id <= (
        SELECT id FROM {SWEEPS} ORDER BY id DESC OFFSET %(keep)s LIMIT 1
    )"""
FINISH_SWEEP = f"""
    UPDATE {SWEEPS} SET finished_at = %(finished)s, outcome = %(outcome)s,
        sessions_deleted = %(deleted)s, error = %(error)s
    WHERE id = %(id)s"""
SCAN_FIELDS = f"""
    SELECT session_id, title, metadata FROM {SESSIONS}
    WHERE session_id > %(after)s AND (title IS NOT NULL OR metadata IS NOT NULL)
    ORDER BY session_id LIMIT %(limit)s"""
REPLACE_FIELDS = f"""
    UPDATE {SESSIONS} AS s SET title = c.title, metadata = c.metadata
    FROM unnest(%(sid)s::text[], %(title)s::text[], %(metadata)s::text[],
                %(old_title)s::text[], %(old_metadata)s::text[])
        AS c(sid, title, metadata, old_title, old_metadata)
    WHERE s.session_id = c.sid AND s.title IS NOT DISTINCT FROM c.old_title
        AND s.metadata IS NOT DISTINCT FROM c.old_metadata"""
DROP_SEARCH_BATCH = f"""
    WITH batch AS (
        SELECT session_id, seq FROM {ITEMS}
        WHERE search_text IS NOT NULL OR search_vector IS NOT NULL LIMIT %(limit)s
    )
    UPDATE {ITEMS} AS i SET search_text = NULL, search_vector = NULL
    FROM batch WHERE i.session_id = batch.session_id AND i.seq = batch.seq"""
