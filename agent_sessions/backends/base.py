"""The storage seam: everything sessions, the manager, the scheduler and the CLI ask of a database.

A backend owns one database (a SQLite file, a PostgreSQL server) and hides its driver, its
SQL and its connections. The rest of the library speaks to it only through ``Backend``; the
pure decisions that must be the same everywhere (the pruning rule, the item codec, ids)
live beside the backends, not inside one of them.

Conventions every backend keeps:

* Times are POSIX seconds (``float``, UTC) from the caller's injected clock: a backend
  never reads the time itself, so tests move it by hand.
* Payloads are the JSON text ``codec.encode_items`` produced, stored and returned byte for
  byte; rows that do not decode are set aside as corrupt (``codec.DecodedRows``).
* Every write (``append_items``, ``pop_item``, ``delete_session``, ``prune_session``, each
  cleanup batch) is one transaction: done whole or not at all.
* Message text (``search.indexed_text``) is indexed for search, unless the backend was made
  with ``search_index=False``: PostgreSQL as items are written, SQLite in batches before
  ``search_sessions`` searches (and in ``finish_cleanup``), so a committed item is always
  found by the next search; an item's index entry goes with it, on every path that deletes it.
* Errors are the library's: driver errors leave a backend only as ``StorageError``
  subclasses naming ``location``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ..codec import DecodedRows
from ..encryption import ClearColumns
from ..models import SearchHit, SessionStats, SweepRecord
from ..pruning import Item

Owner = tuple[str | None, str | None]
"""A session's stored ``(user_id, conversation_id)``; either is ``None`` where unknown."""


@dataclass(frozen=True)
class SessionKey:
    """Who a session belongs to, as written to its row."""

    session_id: str
    user_id: str | None
    conversation_id: str | None


@dataclass(frozen=True)
class Totals:
    """Counts over the whole database."""

    sessions: int
    items: int
    """Stored rows, corrupt ones included."""
    active_sessions: int
    """Sessions whose last activity is at or after the cutoff asked for."""


SWEEP_HISTORY = 20
"""Sweep records kept; older ones are deleted when a sweep starts."""


@dataclass(frozen=True)
class HealthFacts:
    """What a backend knows of its database's health, read together."""

    totals: Totals
    oldest_activity: float | None
    """The least recent last activity (POSIX seconds); ``None`` without sessions."""
    database_bytes: int | None
    """Bytes the database uses for our data; ``None`` where it has no size (in memory)."""
    last_sweep: SweepRecord | None
    """The most recently started sweep."""


@dataclass(frozen=True)
class ListPosition:
    """Where a page of ``list_sessions`` ended: its last session's activity and id.

    ``activity`` is the backend's exact stored value (POSIX seconds on SQLite, microseconds
    on PostgreSQL): the next page starts strictly after it, in the listing's order.
    """

    activity: float | int
    session_id: str


@dataclass(frozen=True)
class SessionFields:
    """A session's title and metadata as stored (the metadata as JSON text)."""

    title: str | None
    metadata: str | None


UNCHANGED: object = object()
"""Passed for a field ``set_session_fields`` must leave as it is."""


@dataclass(frozen=True)
class SessionDump:
    """One session as stored, for copying it between databases byte for byte."""

    session_id: str
    user_id: str | None
    conversation_id: str | None
    created_at: float
    last_activity: float
    payloads: tuple[str, ...]
    """The items' stored JSON text, oldest first (rows that do not decode are left out)."""
    corrupt_rows: int
    """Stored rows left out because they do not decode (they cannot be copied faithfully)."""
    title: str | None = None
    metadata: str | None = None
    """The metadata's JSON text."""
    clear: tuple[ClearColumns | None, ...] = ()
    """For each payload, its clear columns if it is encrypted (copied sealed, as stored), else
    ``None``; empty when no payload is encrypted."""


@dataclass(frozen=True)
class StoredRow:
    """One stored item row, as ``agent-sessions rotate-key``/``encrypt``/``decrypt`` see it."""

    session_id: str
    ref: int
    """The row's place: SQLite's row id, PostgreSQL's seq within the session."""
    data: str
    """The payload as stored: JSON text, or sealed (``encryption.PREFIX``)."""
    clear: ClearColumns
    """The stored clear columns (all false or ``None`` where never written)."""


@dataclass(frozen=True)
class StoredFields:
    """A session's title and metadata as stored (sealed or not), for re-encoding them."""

    session_id: str
    title: str | None
    metadata: str | None


@dataclass(frozen=True)
class FieldsChange:
    """New title and metadata for a session, applied only if it still holds the old ones."""

    session_id: str
    old: StoredFields
    title: str | None
    metadata: str | None


@dataclass(frozen=True)
class RowChange:
    """A new payload (and clear columns) for a row, applied only if it still holds ``old``."""

    session_id: str
    ref: int
    old: str
    new: str
    clear: ClearColumns


class Backend(Protocol):
    """One database, as the rest of the library sees it."""

    @property
    def location(self) -> str:
        """What messages name: the file's path, or the URL without its password."""
        ...

    async def open(self) -> None:
        """Connect, and create or migrate the schema; idempotent.

        Raises:
            StorageUnavailableError: if the database cannot be reached, or does not exist
                (or holds no sessions) and the backend was made with ``create=False``.
            StorageError: if its schema is newer than this library, or not ours.
        """
        ...

    async def close(self) -> None:
        """Release what this object holds; idempotent."""
        ...

    async def migrate(self) -> tuple[int, int]:
        """Apply the schema's pending migrations now.

        Returns:
            How many were applied by this call, and the schema version now.
        """
        ...

    @property
    def holds_resources(self) -> bool:
        """Whether ``close()`` has something to release (left unclosed, it leaks)."""
        ...

    # --- one session ---

    async def read_items(
        self, session_id: str, limit: int | None, active_since: float | None = None
    ) -> DecodedRows:
        """A session's items, oldest first; ``None`` or a negative limit reads all.

        ``limit=n > 0`` returns the newest ``n`` decodable items (the window widens past
        corrupt rows); ``0`` returns none. An unknown session has no items, and so has one
        whose last activity is before ``active_since`` (it has expired).
        """
        ...

    async def stored_items(self, session_id: str) -> DecodedRows | None:
        """All of a session's items, or ``None`` if no session has that id."""
        ...

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
        """Record activity, store the items and prune to ``max_items``, in one transaction.

        Creates the session row if needed, with ``title`` (the default title of ``items``)
        unless it has one. A session whose last activity is before ``active_since`` has
        expired: it starts afresh (items, title and metadata deleted) before the items go in.

        A tool output or approval response whose call is neither earlier in ``items`` nor
        stored is left out (with a warning): the model would reject it.

        Returns:
            The number of items pruned.
        """
        ...

    async def pop_item(
        self, session_id: str, now: float, active_since: float | None = None
    ) -> Item | None:
        """Delete and return the newest decodable item, or ``None`` if there is none.

        An expired session (activity before ``active_since``) has none.
        """
        ...

    async def delete_session(self, session_id: str) -> int | None:
        """Delete a session and its items; the items deleted, or ``None`` if it did not exist."""
        ...

    async def session_owner(self, session_id: str) -> Owner | None:
        """The stored owner of a session, or ``None`` if no session has that id."""
        ...

    async def prune_session(self, session_id: str, max_items: int) -> int | None:
        """Apply the pruning rule now; the items deleted, or ``None`` for an unknown session."""
        ...

    async def read_session_fields(
        self, session_id: str, active_since: float | None
    ) -> SessionFields | None:
        """A session's title and metadata; ``None`` if it does not exist or has expired."""
        ...

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
        """Set a session's title (``str | None``) and/or metadata (JSON text or ``None``).

        A session that does not exist or has expired (activity before ``active_since``) is
        created afresh, at ``now``, when ``create`` is true; otherwise nothing is written.
        Setting a field is not activity: ``last_activity`` is left as it is.

        Returns:
            Whether the session was written.
        """
        ...

    # --- turn locks: one run at a time per session, across processes ---

    async def turn_lock_is_free(self, session_id: str, now: float) -> bool:
        """Whether no unexpired lease holds the session's turn lock (a cheap read to poll)."""
        ...

    async def take_turn_lock(self, session_id: str, owner: str, now: float, expires: float) -> bool:
        """Take the lock for ``owner`` until ``expires`` unless an unexpired lease holds it."""
        ...

    async def renew_turn_lock(self, session_id: str, owner: str, expires: float) -> bool:
        """Extend ``owner``'s lease; ``False`` if it no longer holds the lock."""
        ...

    async def release_turn_lock(self, session_id: str, owner: str) -> bool:
        """Drop the lock if ``owner`` still holds it; ``False`` if it did not."""
        ...

    # --- many sessions ---

    async def session_stats(self, session_id: str) -> SessionStats | None:
        """What is stored for one session, or ``None`` if no session has that id."""
        ...

    async def list_sessions(
        self,
        user_id: str | None,
        limit: int,
        offset: int,
        after: ListPosition | None = None,
        active_since: float | None = None,
    ) -> list[tuple[SessionStats, ListPosition]]:
        """Sessions (of ``user_id``, or all), most recent activity first, ties by id.

        Starts after ``after`` (keyset) and skips ``offset`` more; leaves out sessions whose
        activity is before ``active_since``. Counts are of stored rows (``corrupt_items`` is
        ``None``: a listing does not decode items). Each comes with its list position.
        """
        ...

    async def user_session_ids(self, user_id: str, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` of a user's session ids greater than ``after``, sorted."""
        ...

    @property
    def deletes_users_atomically(self) -> bool:
        """Whether ``delete_user`` is one transaction (else it works in batches)."""
        ...

    async def delete_user_batch(self, user_id: str, limit: int) -> tuple[int, int]:
        """Delete up to ``limit`` sessions of ``user_id`` with their items, in one transaction.

        Returns:
            The sessions and the items deleted (no sessions: none is left).
        """
        ...

    async def delete_user(self, user_id: str) -> tuple[int, int]:
        """Delete every session of ``user_id`` with all their items, in one transaction.

        Returns:
            The sessions and the items deleted.
        """
        ...

    async def list_idle_sessions(self, cutoff: float, limit: int | None) -> list[SessionStats]:
        """Sessions whose last activity is before ``cutoff``, oldest activity first.

        As in ``list_sessions``, counts are of stored rows (``corrupt_items`` is ``None``).
        """
        ...

    async def search_sessions(
        self, user_id: str, terms: Sequence[str], limit: int, active_since: float | None
    ) -> list[SearchHit]:
        """``user_id``'s sessions with a message holding every word of ``terms``.

        ``terms`` are words (``search.query_words``): the last also matches as a prefix when
        it has ``search.MIN_PREFIX_CHARS`` or more. Only sessions whose last activity is at or
        after ``active_since`` (when given) count. One hit per session, for its best message,
        best rank first.
        """
        ...

    async def session_ids(self) -> list[str]:
        """Every session id, sorted."""
        ...

    async def totals(self, active_since: float) -> Totals:
        """Session and item counts, and how many sessions were active since the cutoff."""
        ...

    async def count_idle_sessions(self, cutoff: float) -> int:
        """How many sessions' last activity is before ``cutoff``."""
        ...

    async def delete_idle_batch(self, cutoff: float, batch_size: int) -> int:
        """Delete up to ``batch_size`` sessions idle since before ``cutoff``, in one transaction.

        Idleness is checked inside the transaction: a session written meanwhile is kept
        whole. Returns the number of sessions deleted (0: none left).
        """
        ...

    async def dump_session(self, session_id: str) -> SessionDump | None:
        """A session's row and items as stored, or ``None`` if no session has that id."""
        ...

    async def load_session(self, dump: SessionDump) -> None:
        """Replace the session ``dump.session_id`` with ``dump``, in one transaction.

        Rows and times are written as given; nothing is pruned.
        """
        ...

    async def finish_cleanup(self) -> None:
        """Housekeeping after a cleanup deleted sessions (SQLite: a WAL checkpoint)."""
        ...

    # --- health ---

    async def health(self, active_since: float) -> HealthFacts:
        """Counts (as ``totals``), the oldest activity, the size and the last sweep.

        Cheap: the counts of ``totals`` and index lookups, no other scan.
        """
        ...

    async def start_sweep(self, started: float) -> int:
        """Record a sweep as running from ``started``, keeping ``SWEEP_HISTORY`` records.

        Returns:
            The record's id, for ``finish_sweep``.
        """
        ...

    async def finish_sweep(
        self,
        sweep_id: int,
        finished: float,
        outcome: Literal["ok", "failed"],
        sessions_deleted: int,
        error: str | None,
    ) -> None:
        """Record how the sweep ``sweep_id`` ended (nothing if its record is gone)."""
        ...

    # --- re-encoding rows (encryption) ---

    async def scan_rows(self, after: tuple[str, int] | None, limit: int) -> list[StoredRow]:
        """Up to ``limit`` item rows after ``(session_id, ref)`` (``None``: from the start).

        In a fixed order per backend, so a scan can be resumed from its last row.
        """
        ...

    async def replace_rows(self, changes: Sequence[RowChange]) -> int:
        """Apply the changes whose row still holds ``old``, in one short transaction.

        Returns:
            How many rows were changed (a row changed or deleted meanwhile is left alone).
        """
        ...

    async def scan_session_fields(self, after: str | None, limit: int) -> list[StoredFields]:
        """Up to ``limit`` sessions after ``after`` (by id) with a title or metadata stored."""
        ...

    async def replace_session_fields(self, changes: Sequence[FieldsChange]) -> int:
        """Apply the changes whose session still holds ``old``, in one short transaction."""
        ...

    async def drop_search_index(self) -> int:
        """Delete every search index entry, in short transactions; how many there were.

        For ``agent-sessions encrypt``: the index holds message text in clear.
        """
        ...

    async def begin_rewrite(self) -> None:
        """Before re-encoding: zero what is overwritten, where the database can.

        SQLite: ``secure_delete`` on this backend's connection.
        """
        ...

    async def finish_rewrite(self) -> None:
        """After re-encoding: drop old versions, where the database can.

        SQLite: a ``TRUNCATE`` checkpoint of the WAL.
        """
        ...
