"""Driver errors leave the backend as typed ``StorageError``s naming the password-less URL."""

from __future__ import annotations

import socket

import psycopg
import psycopg_pool
import pytest
from psycopg import errors as pg_errors

from agent_sessions.backends.postgres import PostgresBackend, close_pools
from agent_sessions.backends.postgres.errors import translate_error
from agent_sessions.errors import (
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from tests.items import user
from tests.pg_server import PG_URL, require_postgres, with_database

from .helpers import T0, append, connect


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_closed_port_is_unavailable_and_named_without_the_password() -> None:
    backend = PostgresBackend(f"postgresql://app:s3cret@127.0.0.1:{closed_port()}/db")
    with pytest.raises(StorageUnavailableError) as caught:
        await backend.open()
    error = caught.value
    assert backend.location in str(error)
    assert "s3cret" not in str(error)
    assert "s3cret" not in backend.location
    assert error.path == backend.location
    assert isinstance(error.__cause__, psycopg.OperationalError)
    with pytest.raises(StorageUnavailableError):  # and again on every call, not only open()
        await append(backend, "s", [user("q")])


async def test_a_database_that_does_not_exist_is_unavailable(pg_database: str) -> None:
    url = with_database(require_postgres(PG_URL), f"{pg_database}_missing")
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        await PostgresBackend(url).open()


async def test_a_lock_held_past_the_statement_timeout_is_busy(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, statement_timeout=0.2)
    await append(backend, "s", [user("q")])
    async with await connect(pg_url) as other, other.transaction():
        await other.execute(
            "SELECT 1 FROM agent_sessions_session WHERE session_id = 's' FOR UPDATE"
        )
        with pytest.raises(StorageBusyError) as caught:
            await append(backend, "s", [user("again")])
    assert isinstance(caught.value.__cause__, pg_errors.QueryCanceled)
    assert caught.value.path == backend.location
    # Nothing of the failed write was kept; the next one goes through.
    await append(backend, "s", [user("later")], now=T0 + 1)
    assert (await backend.read_items("s", None)).items == [user("q"), user("later")]


async def test_a_lost_connection_is_unavailable_once_then_replaced(pg_database: str) -> None:
    # Directly: the server ends our session (as on a failover or restart).
    url = with_database(require_postgres(PG_URL), pg_database)
    backend = PostgresBackend(url, pool_min_size=1, pool_max_size=1)
    try:
        await append(backend, "s", [user("q")])
        async with await connect(url) as admin:
            ended = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert await ended.fetchall() == [(True,)]
        with pytest.raises(StorageUnavailableError) as caught:
            await backend.read_items("s", None)
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)
        assert (await backend.read_items("s", None)).items == [user("q")]
    finally:
        await close_pools()


LOCATION = "postgresql://app@db/x"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pg_errors.AdminShutdown("terminating connection"), StorageUnavailableError),
        (pg_errors.CannotConnectNow("the database system is starting up"), StorageUnavailableError),
        (pg_errors.TooManyConnections("too many clients"), StorageUnavailableError),
        (pg_errors.InvalidCatalogName('database "x" does not exist'), StorageUnavailableError),
        (pg_errors.InvalidPassword("password authentication failed"), StorageUnavailableError),
        (pg_errors.ReadOnlySqlTransaction("read-only transaction"), StorageUnavailableError),
        (pg_errors.ConnectionFailure("connection failure"), StorageUnavailableError),
        (
            psycopg.OperationalError("server closed the connection"),
            StorageUnavailableError,
        ),
        (
            psycopg_pool.PoolTimeout("no connection after 10.00 sec"),
            StorageUnavailableError,
        ),
        (pg_errors.QueryCanceled("canceling statement due to statement timeout"), StorageBusyError),
        (pg_errors.LockNotAvailable("could not obtain lock"), StorageBusyError),
        (pg_errors.SerializationFailure("could not serialize access"), StorageBusyError),
        (pg_errors.DeadlockDetected("deadlock detected"), StorageBusyError),
        (pg_errors.DiskFull("could not extend file: No space left on device"), StorageFullError),
        (pg_errors.UndefinedTable('relation "x" does not exist'), StorageError),
        (pg_errors.UniqueViolation("duplicate key"), StorageError),
    ],
)
def test_each_driver_error_maps_to_its_kind(error: Exception, expected: type[Exception]) -> None:
    translated = translate_error(error, "postgresql://app:s3cret@db/x")
    assert type(translated) is expected
    assert isinstance(translated, StorageError)
    assert translated.path == LOCATION
    assert LOCATION in str(translated)


def test_a_password_echoed_by_libpq_is_masked() -> None:
    url = "postgresql://app:s3cret@db/x"
    translated = translate_error(psycopg.ProgrammingError(f"bad conninfo {url}"), url)
    assert "s3cret" not in str(translated)
