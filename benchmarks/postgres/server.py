"""The server side of the suite: a database per run, resetting it between blocks, its settings.

Every run creates a uniquely named database on the server the URL points at (its user needs
``CREATEDB``) and drops it at the end ``WITH (FORCE)``. Both candidates' tables live in it;
before every measured block they are emptied with ``TRUNCATE`` (new, empty files: no bloat or
dead rows carried from one block to the next) and a ``CHECKPOINT`` is requested, so that no
block pays for flushing an earlier block's writes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

SETTINGS = (
    "server_version",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "max_connections",
    "full_page_writes",
    "wal_sync_method",
    "max_wal_size",
    "checkpoint_timeout",
    "work_mem",
    "autovacuum",
)

AGENT_TABLES = (
    "agent_sessions_item",
    "agent_sessions_session",
    "agent_sessions_turn_lock",
)
SDK_TABLES = ("agent_messages", "agent_sessions")
"""``SQLAlchemySession``'s default table names."""


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (same host, port, user and options)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"--postgres needs a postgresql:// URL, got {redact(url)!r}")
    return urlunsplit(parts._replace(path=f"/{name}"))


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy's psycopg 3 dialect (``postgresql+psycopg://``)."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {redact(url)!r}")
    return f"postgresql+psycopg://{rest}"


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Create an empty database on ``url``'s server; yield its URL, then drop it."""
    name = f"agent_sessions_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_info(url: str) -> dict[str, Any]:
    """The server's version and the settings that move these figures."""
    with psycopg.connect(url, autocommit=True) as conn:
        info: dict[str, Any] = {}
        for name in SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            info[name] = row[0] if row else None
        row = conn.execute("SELECT inet_server_addr()::text, inet_server_port()").fetchone()
        info["address"] = f"{row[0]}:{row[1]}" if row and row[0] else "unix socket"
    return info


def reset(url: str) -> None:
    """Empty both candidates' tables (those that exist) and ask for a checkpoint."""
    with psycopg.connect(url, autocommit=True) as conn:
        present = [
            name
            for name in (*AGENT_TABLES, *SDK_TABLES)
            if (row := conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()) and row[0]
        ]
        if present:
            conn.execute(
                sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, present)))
            )
        checkpoint(conn)


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """``CHECKPOINT`` if the role may (superuser or ``pg_checkpoint``); else nothing."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def settle_tables(url: str, tables: tuple[str, ...]) -> None:
    """``VACUUM (ANALYZE)`` and a checkpoint after a bulk load, as autovacuum would get to.

    Statistics are needed for the planner to choose the indexes a live table would use, and a
    vacuumed table has its visibility map set; neither should depend on when autovacuum woke.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
        )
        checkpoint(conn)
