"""Schema creation and migrations: at most once per step under any race, and never forced."""

from __future__ import annotations

import multiprocessing

import pytest

from agent_sessions.backends.postgres import PostgresBackend, close_pools, schema
from agent_sessions.errors import StorageError, StorageUnavailableError
from tests.items import user

from . import workers
from .helpers import append, query

RACERS = 16
EXTRA_STEPS = 3

OUR_TABLES = (
    "SELECT relname FROM pg_class WHERE relname LIKE 'agent\\_sessions\\_%' AND relkind = 'r' "
    "ORDER BY relname"
)


def test_sixteen_processes_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    # Each step beyond the real ones creates a table: applied twice, it would fail.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS)
    results = context.Queue()
    processes = [
        context.Process(target=workers.migrate, args=(pg_url, EXTRA_STEPS, barrier, results))
        for _ in range(RACERS)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120)[1] for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [o for o in outcomes if not isinstance(o, int)] == []  # no errors
    assert sorted(outcomes) == [0] * (RACERS - 1) + [len(schema.MIGRATIONS) + EXTRA_STEPS]


async def test_concurrent_first_calls_in_one_process_check_the_schema_once(pg_url: str) -> None:
    import asyncio

    backends = [PostgresBackend(pg_url) for _ in range(20)]
    await asyncio.gather(*(append(b, f"s{n}", [user("q")]) for n, b in enumerate(backends)))
    rows = await query(pg_url, "SELECT version FROM agent_sessions_schema ORDER BY version")
    assert rows == [(m.version,) for m in schema.MIGRATIONS], "each step once"
    assert len(await backends[0].session_ids()) == 20


async def test_create_false_refuses_an_empty_database_and_leaves_it(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, create=False)
    with pytest.raises(StorageUnavailableError, match="holds no sessions") as caught:
        await backend.open()
    assert caught.value.path == backend.location
    with pytest.raises(StorageUnavailableError):
        await backend.read_items("s", None)
    assert await query(pg_url, OUR_TABLES) == []
    # Once another backend has created the tables, create=False uses them.
    await append(PostgresBackend(pg_url), "s", [user("q")])
    await close_pools()  # forget that this process saw the schema
    assert (await backend.read_items("s", None)).items == [user("q")]


async def test_a_newer_schema_is_refused_with_a_clear_error(pg_url: str) -> None:
    await PostgresBackend(pg_url).open()
    await query(
        pg_url,
        "INSERT INTO agent_sessions_schema (version, description) VALUES (%s, 'from the future')",
        (schema.LATEST_VERSION + 1,),
    )
    await close_pools()
    backend = PostgresBackend(pg_url)
    with pytest.raises(StorageError, match="newer than this agent_sessions supports") as caught:
        await backend.open()
    assert f"version {schema.LATEST_VERSION + 1}" in str(caught.value)
    assert caught.value.path == backend.location


async def test_tables_of_our_names_that_we_did_not_create_are_refused(pg_url: str) -> None:
    await query(pg_url, "CREATE TABLE agent_sessions_session (id int)")
    with pytest.raises(StorageError, match="did not create"):
        await PostgresBackend(pg_url).open()
    assert await query(pg_url, OUR_TABLES) == [("agent_sessions_session",)]


async def test_the_sdk_sqlalchemy_tables_can_share_the_database(pg_url: str) -> None:
    # SQLAlchemySession's default tables: names of their own, untouched by ours.
    await query(pg_url, "CREATE TABLE agent_sessions (session_id text PRIMARY KEY)")
    await query(pg_url, "CREATE TABLE agent_messages (id serial, session_id text)")
    await query(pg_url, "INSERT INTO agent_sessions VALUES ('s')")
    backend = PostgresBackend(pg_url)
    await append(backend, "s", [user("q")])
    assert await query(pg_url, "SELECT session_id FROM agent_sessions") == [("s",)]
    assert (await backend.read_items("s", None)).items == [user("q")]
    assert await query(pg_url, OUR_TABLES) == [
        ("agent_sessions_item",),
        ("agent_sessions_schema",),
        ("agent_sessions_session",),
        ("agent_sessions_turn_lock",),
    ]
