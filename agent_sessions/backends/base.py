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
* Errors are the library's: driver errors leave a backend only as ``StorageError``
  subclasses naming ``location``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..codec import DecodedRows
from ..encryption import ClearColumns
from ..models import SessionStats
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

    async def read_items(self, session_id: str, limit: int | None) -> DecodedRows:
        """A session's items, oldest first; ``None`` or a negative limit reads all.

        ``limit=n > 0`` returns the newest ``n`` decodable items (the window widens past
        corrupt rows); ``0`` returns none. An unknown session has no items.
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
    ) -> int:
        """Record activity, store the items and prune to ``max_items``, in one transaction.

        Creates the session row if needed. A tool output or approval response whose call is
        neither earlier in ``items`` nor stored is left out (with a warning): the model
        would reject it.

        Returns:
            The number of items pruned.
        """
        ...

    async def pop_item(self, session_id: str, now: float) -> Item | None:
        """Delete and return the newest decodable item, or ``None`` if there is none."""
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
        self, user_id: str | None, limit: int, offset: int
    ) -> list[SessionStats]:
        """Sessions (of ``user_id``, or all), most recent activity first."""
        ...

    async def list_idle_sessions(self, cutoff: float, limit: int | None) -> list[SessionStats]:
        """Sessions whose last activity is before ``cutoff``, oldest activity first."""
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
