"""Entry points of the processes the PostgreSQL tests start (importable by ``spawn``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from agent_sessions.backends.postgres import PostgresBackend, close_pools, schema
from agent_sessions.errors import AgentSessionsError
from tests.items import assistant, call, output, user

from .helpers import append

SHARED = "shared"  # pruned to SHARED_MAX by every writer at once
SHARED_ALL = "shared-all"  # never pruned: every item of every writer must be there
SHARED_MAX = 8
NO_LIMIT = 1_000_000


def _test_step(version: int) -> schema.Migration:
    # Not idempotent on purpose: applying it twice fails on the existing table.
    return schema.Migration(version, f"test step {version}", (f"CREATE TABLE step_{version} ()",))


def migrate(url: str, extra_steps: int, barrier: Any, results: Any) -> None:
    """Run the migrations (with ``extra_steps`` more) once the others are ready too."""
    schema.MIGRATIONS = schema.MIGRATIONS + tuple(
        _test_step(version)
        for version in range(schema.LATEST_VERSION + 1, schema.LATEST_VERSION + 1 + extra_steps)
    )
    schema.LATEST_VERSION = schema.MIGRATIONS[-1].version

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            barrier.wait()
            return await schema.migrate(conn, url, create=True, statement_timeout=60)

    try:
        results.put((os.getpid(), asyncio.run(run())))
    except Exception as exc:
        results.put((os.getpid(), repr(exc)))


def write(
    url: str, worker: int, tasks: int, turns: int, now: float, barrier: Any, results: Any
) -> None:
    """Write turns from ``tasks`` tasks at once: to shared sessions, an own one, a revived one."""

    async def run() -> list[str]:
        backend = PostgresBackend(url, pool_max_size=4)
        await backend.open()
        errors: list[str] = []

        async def task(number: int) -> None:
            own = f"own-{worker}-{number}"
            for turn in range(turns):
                tag = f"w{worker}-t{number}-n{turn}"
                targets = [(SHARED, SHARED_MAX), (SHARED_ALL, NO_LIMIT), (own, NO_LIMIT)]
                if turn == 0:  # first, while the sweepers are busy: revives an idle session
                    targets.insert(0, (f"idle-{worker}-{number}", NO_LIMIT))
                for session_id, max_items in targets:
                    try:
                        await append(backend, session_id, [user(tag)], now=now, max_items=max_items)
                        turn_items = [call(tag), output(tag), assistant(tag)]
                        await append(backend, session_id, turn_items, now=now, max_items=max_items)
                    except AgentSessionsError as exc:  # counted, and asserted to be none
                        errors.append(repr(exc))

        barrier.wait()
        await asyncio.gather(*(task(number) for number in range(tasks)))
        await close_pools()
        return errors

    results.put(("writer", worker, asyncio.run(run())))


def sweep(url: str, cutoff: float, batch_size: int, barrier: Any, results: Any) -> None:
    """Delete idle sessions batch by batch until none is left; report how many and batches."""

    async def run() -> tuple[int, int, list[str]]:
        backend = PostgresBackend(url, statement_timeout=5)
        await backend.open()
        deleted = batches = 0
        errors: list[str] = []
        barrier.wait()
        while True:
            try:
                count = await backend.delete_idle_batch(cutoff, batch_size)
            except AgentSessionsError as exc:
                errors.append(repr(exc))
                break
            if count == 0:
                break
            deleted += count
            batches += 1
        await close_pools()
        return deleted, batches, errors

    results.put(("sweeper", os.getpid(), asyncio.run(run())))
