"""Storage backends: one package per database kind, behind ``base.Backend``.

``open_backend`` picks one from the database target (a SQLite path or a server URL) and
imports its driver only then, so SQLite apps never import a PostgreSQL driver.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, InvalidArgumentError
from .base import Backend

if TYPE_CHECKING:
    from ..encryption import Keyring

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(target: object) -> bool:
    """Whether ``target`` is a server URL (``scheme://...``) rather than a SQLite path."""
    text = os.fspath(target) if isinstance(target, os.PathLike) else target
    match = _URL.match(text) if isinstance(text, str) else None
    return match is not None and match.group(1).lower() != "file"


@dataclass(frozen=True)
class PoolOptions:
    """How a server backend's shared connection pool is sized and timed (see settings)."""

    min_size: int = 0
    """0: no connection is opened in the background (see ``close_server_pools``)."""
    max_size: int = 10
    timeout: float = 10.0
    """Seconds to wait for a connection: to connect, or for a free one."""
    statement_timeout: float = 30.0
    """Seconds a statement may run, lock waits included; ``0`` for no limit."""


async def close_server_pools() -> None:
    """Close the server connection pools this process opened in the running event loop.

    Call it before an event loop ends (``asyncio.run`` returning) in a program that used a
    ``postgresql://`` database: a pool still opening a connection then can hold up the exit.
    A no-op when no server backend was used.
    """
    postgres = sys.modules.get(f"{__name__}.postgres")
    if postgres is not None:
        await postgres.close_pools()


def redact_url(target: object) -> str:
    """``target`` as text, without any password of a URL (user info or ``password=``)."""
    text = str(target)
    if not is_url(text):
        return text
    # By hand, not urllib: urlunsplit would turn "postgresql:///db" into "postgresql:/db".
    scheme, _, rest = text.partition("://")
    # libpq takes a password with an unescaped "/", "?" or "#": the user info ends at the
    # last "@", wherever it is (one later in the query only hides more, never less).
    user = ""
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user = userinfo.partition(":")[0] + "@"
    end = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    netloc, path = user + rest[:end], rest[end:]
    path, _, query = path.partition("?")
    query, hash_mark, fragment = query.partition("#")
    query = "&".join(
        field for field in query.split("&") if field and field.partition("=")[0] != "password"
    )
    tail = (f"?{query}" if query else "") + (f"#{fragment}" if hash_mark else "")
    return f"{scheme}://{netloc}{path}{tail}"


def open_backend(
    target: object,
    *,
    create: bool = True,
    offload: bool = False,
    pool: PoolOptions | None = None,
    search_index: bool = True,
    keyring: Keyring | None = None,
    index_sealed: bool = False,
) -> Backend:
    """The backend for a database target: a SQLite path, or a ``postgresql://`` URL.

    Args:
        target: A SQLite file path (or ``":memory:"``), or a ``postgresql://`` URL.
        create: Create the database's tables if needed; with ``False`` refuse a database
            without them.
        offload: SQLite only: run operations in a worker thread (the manager's choice).
        pool: PostgreSQL only: the shared pool's sizes and timeouts.
        search_index: Index message text for search as items are written.
        keyring: Opens (and lets sessions write) encrypted items; see ``encryption``.
        index_sealed: SQLite only: its deferred indexer indexes the text of encrypted rows
            too, opened with ``keyring`` (the plaintext index is opted into).

    Raises:
        InvalidArgumentError: if ``target`` is not a path, or a URL of a database kind not
            supported.
        ConfigurationError: if a PostgreSQL URL is given and the ``postgres`` extra is not
            installed.
    """
    if not is_url(target):
        from .sqlite import SQLiteBackend

        return SQLiteBackend(
            target,
            create=create,
            offload=offload,
            search_index=search_index,
            keyring=keyring,
            index_sealed=index_sealed,
        )
    url = str(target)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        raise InvalidArgumentError(
            f"unsupported database URL scheme {scheme!r}: use a SQLite file path or a "
            "postgresql:// URL"
        )
    try:
        from .postgres import PostgresBackend
    except ImportError as exc:  # psycopg is an optional extra
        raise ConfigurationError(
            "a postgresql:// database needs the PostgreSQL driver: "
            "pip install 'agent-sessions[postgres]'"
        ) from exc
    options = pool or PoolOptions()
    return PostgresBackend(
        url,
        create=create,
        pool_min_size=options.min_size,
        pool_max_size=options.max_size,
        connect_timeout=options.timeout,
        statement_timeout=options.statement_timeout,
        search_index=search_index,
        keyring=keyring,
    )


__all__ = [
    "Backend",
    "PoolOptions",
    "close_server_pools",
    "is_url",
    "open_backend",
    "redact_url",
]
