"""One pool per process, event loop and URL: shared, replaced after its loop, never forked."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

from agent_sessions.backends.postgres import PostgresBackend, close_pools
from tests.items import assistant, user
from tests.pg_server import PG_URL, PGBOUNCER_URL, require_postgres, with_database

from .helpers import append, query

ROUTES = {"direct": PG_URL, "pgbouncer": PGBOUNCER_URL}


def url_for(route: str, database: str) -> str:
    return with_database(require_postgres(ROUTES[route]), database)


async def server_connections(url: str) -> int:
    rows = await query(
        url,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


async def test_backends_on_one_url_share_one_pool(pg_database: str) -> None:
    # Directly, so each client connection is one server connection to count.
    url = url_for("direct", pg_database)
    try:
        backends = [PostgresBackend(url, pool_min_size=1, pool_max_size=1) for _ in range(10)]
        for number, backend in enumerate(backends):
            await append(backend, f"s{number}", [user("q")])
        await asyncio.gather(*(b.read_items("s0", None) for b in backends))
        assert await server_connections(url) == 1
    finally:
        await close_pools()
    assert await server_connections(url) == 0


def test_a_new_event_loop_gets_a_new_pool(route: str, pg_database: str) -> None:
    url = url_for(route, pg_database)
    backend = PostgresBackend(url)

    async def first() -> None:
        await append(backend, "s", [user("q")])  # its pool is left open when the loop ends

    async def second() -> list[Any]:
        try:
            await append(backend, "s", [assistant("a")])
            return (await backend.read_items("s", None)).items
        finally:
            await close_pools()

    asyncio.run(first())
    assert asyncio.run(second()) == [user("q"), assistant("a")]


def child_writes(url: str, results: Any) -> None:
    async def run() -> list[Any]:
        backend = PostgresBackend(url)
        await append(backend, "child", [user("from the child")])
        items = (await backend.read_items("parent", None)).items
        await close_pools()  # the child's own pool; the parent's it never touches
        return items

    results.put(asyncio.run(run()))


def test_a_forked_child_opens_its_own_pool_and_leaves_the_parents(
    route: str, pg_database: str
) -> None:
    url = url_for(route, pg_database)
    backend = PostgresBackend(url, pool_min_size=1, pool_max_size=1)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(append(backend, "parent", [user("from the parent")]))
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=child_writes, args=(url, results))
        child.start()
        assert results.get(timeout=60) == [user("from the parent")]
        child.join(timeout=30)
        assert child.exitcode == 0
        # The parent's pooled connection survived the child: using it raises nothing.
        items = loop.run_until_complete(backend.read_items("child", None)).items
        assert items == [user("from the child")]
        loop.run_until_complete(append(backend, "parent", [assistant("still here")]))
    finally:
        loop.run_until_complete(close_pools())
        loop.close()
