"""Driver errors translated into the library's ``StorageError`` tree, at one boundary.

Messages name the database by its URL with the password removed (``redact``); the
original error stays attached as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import (
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from .. import is_url, redact_url

FULL_PRUNE_SQLSTATE = "ASP01"
"""Raised on purpose by the one-round-trip write when the fast pruning rule does not apply."""

# Class 08: connection exceptions; 57P01-57P05: shutdown, crash, starting up, idle timeout;
# 53300: too many connections; 3D000: no such database; 28xxx: authentication; 25006: a
# read-only standby. Each means the server cannot serve us now, not that a statement failed.
_UNAVAILABLE = {"53300", "57P01", "57P02", "57P03", "57P05", "3D000", "28000", "28P01", "25006"}
# statement_timeout or lock_timeout, a lock held elsewhere, a serialization failure, a deadlock.
_BUSY = {"57014", "55P03", "40001", "40P01"}
_FULL = {"53100"}


KEY_NEEDED_SQLSTATE = "ASP02"
"""Raised on purpose by a write without a key to a session holding encrypted items."""


class FullPruneNeeded(Exception):
    """The write must be redone on the full pruning path (never leaves the backend)."""


class KeyNeeded(Exception):
    """A write without a key met an encrypted session (leaves as ``EncryptionKeyError``)."""


def redact(url: str) -> str:
    """Return ``url`` (a URI or a ``key=value`` string) without its password."""
    if is_url(url):
        return redact_url(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable connection string>"
    params.pop("password", None)
    return make_conninfo("", **params)


def _password(url: str) -> str | None:
    try:
        value = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return None
    return str(value) if value else None


def translate_error(exc: Exception, url: str) -> StorageError | FullPruneNeeded | KeyNeeded:
    """Map a psycopg or pool error to a ``StorageError`` subclass naming the redacted URL."""
    location = redact(url)
    text = str(exc).strip()
    password = _password(url)
    if password:  # libpq may echo a malformed connection string back
        text = text.replace(password, "***")
    where = f"PostgreSQL database {location!r}"
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StorageUnavailableError(
            f"no connection to {where} became free in time (is the server reachable?): {text}",
            path=location,
        )
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StorageUnavailableError(f"the pool for {where} was closed: {text}", path=location)
    state = getattr(exc, "sqlstate", None)
    if state == FULL_PRUNE_SQLSTATE:
        return FullPruneNeeded()
    if state == KEY_NEEDED_SQLSTATE:
        return KeyNeeded()
    if state in _FULL:
        return StorageFullError(f"storage is full: {where}: {text}", path=location)
    if state in _BUSY:
        return StorageBusyError(
            f"{where} stayed busy (a lock or the statement timeout): {text}", path=location
        )
    if (
        state in _UNAVAILABLE
        or (state is not None and state.startswith("08"))
        # No SQLSTATE: libpq itself failed (refused, unreachable, connection lost).
        or (state is None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError))
    ):
        return StorageUnavailableError(f"cannot use {where}: {text}", path=location)
    return StorageError(f"{where}: {text}", path=location)


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise psycopg and pool errors inside the block as ``StorageError`` subclasses."""
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
        raise translate_error(exc, url) from exc
