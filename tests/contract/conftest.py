"""The ``target`` every contract test runs on: a SQLite file, PostgreSQL, PostgreSQL via PgBouncer.

Each test gets a database of its own: a file in ``tmp_path``, or a fresh PostgreSQL database
(``tests.pg_server.fresh_database``) reached directly or through PgBouncer in transaction
mode. Without a server the PostgreSQL parameters skip; under ``CI=true`` they fail. The
process's PostgreSQL pools of the test's event loop are closed before the database is dropped.

Creating a database takes 0.1-0.3 s, more than most tests here: the next one is made in a
background thread while the current test runs, so the suite does not wait for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database

ROUTES = {"postgres": PG_URL, "pgbouncer": PGBOUNCER_URL}

Made = tuple[AbstractContextManager[str], str]


def _make(server_url: str) -> Made:
    database = fresh_database(server_url)
    return database, database.__enter__()


def _drop(database: AbstractContextManager[str]) -> None:
    database.__exit__(None, None, None)


class DatabaseSupply:
    """Fresh databases from ``tests.pg_server.fresh_database``, made ahead and dropped behind.

    One worker thread makes and drops them in turn, so the server never does both at once
    (a drop waits for a database being made) and tests wait only when it falls behind.
    """

    def __init__(self, server_url: str) -> None:
        self._url = server_url
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="contract-databases")
        self._next: Future[Made] = self._worker.submit(_make, server_url)
        self._drops: list[Future[None]] = []
        self._made: dict[str, AbstractContextManager[str]] = {}

    def take(self) -> str:
        """The name of a new, empty database, the test's own until ``give_back``."""
        database, name = self._next.result()
        self._next = self._worker.submit(_make, self._url)
        self._made[name] = database
        return name

    def give_back(self, name: str) -> None:
        """Drop the database (in the background); its connections must be closed."""
        self._drops.append(self._worker.submit(_drop, self._made.pop(name)))

    def close(self) -> None:
        try:
            for drop in self._drops:
                drop.result()  # a failed drop is reported here
            database, _ = self._next.result()
            _drop(database)
        finally:
            self._worker.shutdown()


@pytest.fixture(scope="session")
def database_supply() -> Iterator[DatabaseSupply]:
    supply = DatabaseSupply(require_postgres(PG_URL))
    try:
        yield supply
    finally:
        supply.close()


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The test's own empty database: a SQLite path or a ``postgresql://`` URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "contract.db")
        return
    from agent_sessions.backends.postgres import close_pools

    url = require_postgres(ROUTES[request.param])
    supply: DatabaseSupply = request.getfixturevalue("database_supply")
    name = supply.take()
    try:
        yield with_database(url, name)
    finally:
        try:
            await close_pools()
        finally:
            supply.give_back(name)
