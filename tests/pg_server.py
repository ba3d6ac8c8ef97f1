"""Where the PostgreSQL tests find their server, and a fresh database for each test module.

CI runs ``.ci/postgres.sh start DIR``, which starts PostgreSQL and PgBouncer (transaction
pooling) on loopback and prints the two URLs to export. Without them the PostgreSQL tests
skip with one line; under ``CI=true`` they fail instead, so CI never passes by skipping.

Isolation is a fresh *database* (``fresh_database``), not a schema. PgBouncer in transaction
mode gives each transaction whichever server connection is free, so a ``SET search_path``
leaks to other clients and is gone by the next transaction, and PgBouncer 1.18 refuses an
``options=-csearch_path=...`` startup parameter (or drops it, if told to ignore it). The
database name is part of PgBouncer's pool key, and ``.ci/postgres.sh`` routes every name to
the server (``* =``), so a database made through the direct URL is reachable through
PgBouncer too: ``with_database(bouncer_url, name)``. Creating one takes about 0.1 s, so make
it once per module; a unique table prefix is the cheaper choice where the code under test
takes table names::

    @pytest.fixture(scope="module")
    def pg_database() -> Iterator[str]:
        with fresh_database(require_postgres(PG_URL)) as name:
            yield name

    @pytest.fixture(params=[PG_URL, PGBOUNCER_URL])
    def pg_url(request: pytest.FixtureRequest, pg_database: str) -> str:
        return with_database(require_postgres(request.param), pg_database)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_URL = "AGENT_SESSIONS_TEST_PG_URL"
PGBOUNCER_URL = "AGENT_SESSIONS_TEST_PGBOUNCER_URL"


def postgres_urls() -> tuple[str | None, str | None]:
    """The direct server URL and the PgBouncer URL, each None when its variable is unset."""
    return os.environ.get(PG_URL) or None, os.environ.get(PGBOUNCER_URL) or None


def require_postgres(url_var: str = PG_URL) -> str:
    """The URL in ``url_var``; skip the test when it is unset, or fail under ``CI=true``."""
    url = os.environ.get(url_var)
    if url:
        return url
    message = f"PostgreSQL tests skipped: set {url_var} (CI starts a server with .ci/postgres.sh)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message.replace("tests skipped", "tests cannot run under CI=true"))
    pytest.skip(message)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (same host, port and user)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Create a uniquely named empty database on ``url``'s server; yield its name, then drop it.

    The drop uses ``WITH (FORCE)``, which also ends connections still open to it, PgBouncer's
    pooled ones included.
    """
    import psycopg  # only the PostgreSQL tests need the driver
    from psycopg import sql

    name = f"agent_sessions_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
