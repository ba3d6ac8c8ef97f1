"""Fixtures: a fresh database per test, reached directly and through PgBouncer.

Every test that takes ``pg_url`` runs twice, ``[direct]`` and ``[pgbouncer]`` (transaction
pooling). Without a server the tests skip; under ``CI=true`` they fail (``tests.pg_server``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from agent_sessions.backends.postgres import PostgresBackend, close_pools
from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database

from .helpers import connect

ROUTES = {"direct": PG_URL, "pgbouncer": PGBOUNCER_URL}


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new, empty database (made and dropped through the direct URL)."""
    with fresh_database(require_postgres(PG_URL)) as name:
        yield name


@pytest.fixture(params=sorted(ROUTES))
def route(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def pg_url(route: str, pg_database: str) -> AsyncIterator[str]:
    """The test's own database, directly or through PgBouncer; pools closed afterwards."""
    yield with_database(require_postgres(ROUTES[route]), pg_database)
    await close_pools()


@pytest.fixture
async def backend(pg_url: str) -> AsyncIterator[PostgresBackend]:
    opened = PostgresBackend(pg_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of the test's own, for SQL beside the backend."""
    async with await connect(pg_url) as conn:
        yield conn
