"""asyncpg against psycopg 3 on a real PostgreSQL server, directly and through PgBouncer.

``python -m benchmarks.pg_drivers [--url URL] [--pgbouncer-url URL] [--rounds N] [--seconds S]
[--unlogged]``; the URLs
default to ``AGENT_SESSIONS_TEST_PG_URL`` and ``AGENT_SESSIONS_TEST_PGBOUNCER_URL`` (start a
server with ``.ci/postgres.sh start DIR``). Each driver works through a pool of 4 connections.

Targets: ``direct`` with each driver's default statement preparation, ``direct-noprep`` and
``pgbouncer`` with the settings PgBouncer's transaction mode needs (asyncpg
``statement_cache_size=0``, psycopg ``prepare_threshold=None``: no named prepared statement
may outlive a transaction).

Workloads, over 100 sessions of 200 items (~250-byte text):

* ``turn/stmts``: one transaction of separate statements: upsert the session row
  (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, which row-locks it), insert 3 items
  numbered from it, delete all but the newest 200. psycopg sends it as one pipeline;
  asyncpg awaits each statement (``executemany`` sends its 3 rows at once).
* ``turn/cte``: the same work as one statement (data-modifying CTEs), no explicit transaction.
  Its prune reads the statement's snapshot, so after waiting for another turn's row lock it
  may leave a few items over the cap until the next turn; separate statements do not.
* ``read200``: the newest 200 items of a session.
* ``x16 turn/...``: 16 tasks at once over the 100 sessions, sharing the pool of 4.

``RT`` is client-to-server round trips per operation, pool acquire and release included,
counted by a relaying proxy on one connection (a separate pass, not in the timings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .stats import percentile

SESSIONS = 100
KEEP = 200
NEW_ITEMS = 3
POOL_SIZE = 4
TASKS = 16
BODY = 250

SCHEMA = [
    "DROP TABLE IF EXISTS drivers_bench_items, drivers_bench_sessions",
    """CREATE {unlogged} TABLE drivers_bench_sessions (
        session_id text PRIMARY KEY,
        last_seq bigint NOT NULL,
        updated_at timestamptz NOT NULL)""",
    """CREATE {unlogged} TABLE drivers_bench_items (
        session_id text NOT NULL,
        seq bigint NOT NULL,
        body text NOT NULL,
        PRIMARY KEY (session_id, seq))""",
    f"""INSERT INTO drivers_bench_sessions
        SELECT 'bench-' || s, {KEEP}, now() FROM generate_series(0, {SESSIONS - 1}) s""",
    f"""INSERT INTO drivers_bench_items
        SELECT 'bench-' || s, n, repeat(md5(s::text || '/' || n::text), 8)
        FROM generate_series(0, {SESSIONS - 1}) s, generate_series(1, {KEEP}) n""",
    # Settle the load so that each target starts alike: no autovacuum pass or checkpoint
    # of the load's writes falls into the timings.
    "VACUUM (ANALYZE) drivers_bench_sessions, drivers_bench_items",
    "CHECKPOINT",
]
DROP = "DROP TABLE IF EXISTS drivers_bench_items, drivers_bench_sessions"

# Statements use $n placeholders (asyncpg); psycopg gets them rewritten to %(pn)s.
UPSERT = """
INSERT INTO drivers_bench_sessions AS s (session_id, last_seq, updated_at) VALUES ($1, $2, now())
ON CONFLICT (session_id) DO UPDATE
    SET last_seq = s.last_seq + EXCLUDED.last_seq, updated_at = EXCLUDED.updated_at
RETURNING last_seq"""
INSERT_ITEM = """
INSERT INTO drivers_bench_items (session_id, seq, body)
SELECT $1, last_seq - $2 + $3, $4 FROM drivers_bench_sessions WHERE session_id = $1"""
PRUNE = """
DELETE FROM drivers_bench_items WHERE session_id = $1 AND seq <= (
    SELECT seq FROM drivers_bench_items WHERE session_id = $1
    ORDER BY seq DESC OFFSET $2 LIMIT 1)"""
TURN_CTE = """
WITH s AS (
    INSERT INTO drivers_bench_sessions AS s (session_id, last_seq, updated_at)
    VALUES ($1, $2, now())
    ON CONFLICT (session_id) DO UPDATE
        SET last_seq = s.last_seq + EXCLUDED.last_seq, updated_at = EXCLUDED.updated_at
    RETURNING last_seq
), ins AS (
    INSERT INTO drivers_bench_items (session_id, seq, body)
    SELECT $1, s.last_seq - $2 + t.ord, t.body
    FROM s, unnest($3::text[]) WITH ORDINALITY AS t(body, ord)
), del AS (
    -- the statement's snapshot holds none of the new rows: keep KEEP - n older ones
    DELETE FROM drivers_bench_items WHERE session_id = $1 AND seq <= (
        SELECT seq FROM drivers_bench_items WHERE session_id = $1
        ORDER BY seq DESC OFFSET $4::int - $2::int LIMIT 1)
)
SELECT last_seq FROM s"""
READ = """
SELECT body FROM drivers_bench_items WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"""

CHECK = f"""
SELECT count(*) FILTER (WHERE n > {KEEP} + {TASKS} * {NEW_ITEMS} OR n < {KEEP}),
       count(*) FILTER (WHERE top <> last_seq)
FROM (SELECT s.session_id, s.last_seq, count(i.seq) AS n, max(i.seq) AS top
      FROM drivers_bench_sessions s LEFT JOIN drivers_bench_items i USING (session_id)
      GROUP BY s.session_id, s.last_seq) x"""


def pg_format(sql: str) -> str:
    return re.sub(r"\$(\d+)", r"%(p\1)s", sql)


def pg_args(*values: Any) -> dict[str, Any]:
    return {f"p{n}": value for n, value in enumerate(values, 1)}


def new_bodies(rng: random.Random) -> list[str]:
    return ["".join(rng.choices("abcdefghij ", k=BODY)) for _ in range(NEW_ITEMS)]


# -- drivers --------------------------------------------------------------------------------


class AsyncpgDriver:
    name = "asyncpg"

    def __init__(self, url: str, prepare: bool) -> None:
        self.url, self.prepare = url, prepare
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            statement_cache_size=100 if self.prepare else 0,
        )

    async def close(self) -> None:
        await self.pool.close()

    async def turn_stmts(self, session_id: str, bodies: list[str]) -> None:
        n = len(bodies)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.fetchval(UPSERT, session_id, n)
            await conn.executemany(
                INSERT_ITEM, [(session_id, n, k, body) for k, body in enumerate(bodies, 1)]
            )
            await conn.execute(PRUNE, session_id, KEEP)

    async def turn_cte(self, session_id: str, bodies: list[str]) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval(TURN_CTE, session_id, len(bodies), bodies, KEEP)

    async def read(self, session_id: str) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(READ, session_id, KEEP)
        return [row[0] for row in reversed(rows)]


class PsycopgDriver:
    name = "psycopg"

    def __init__(self, url: str, prepare: bool) -> None:
        self.url, self.prepare = url, prepare
        self.pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        kwargs: dict[str, Any] = {"autocommit": True}
        if not self.prepare:
            kwargs["prepare_threshold"] = None
        self.pool = AsyncConnectionPool(
            self.url, min_size=POOL_SIZE, max_size=POOL_SIZE, kwargs=kwargs, open=False
        )
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def turn_stmts(self, session_id: str, bodies: list[str]) -> None:
        # BEGIN and COMMIT as statements: conn.transaction() syncs the pipeline on entry and
        # exit (4 round trips here, not 1).
        n = len(bodies)
        async with self.pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    cur = await conn.execute(pg_format(UPSERT), pg_args(session_id, n))
                    await conn.cursor().executemany(
                        pg_format(INSERT_ITEM),
                        [pg_args(session_id, n, k, body) for k, body in enumerate(bodies, 1)],
                    )
                    await conn.execute(pg_format(PRUNE), pg_args(session_id, KEEP))
                    await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await cur.fetchone()  # the RETURNING row, after the pipeline's one sync

    async def turn_cte(self, session_id: str, bodies: list[str]) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                pg_format(TURN_CTE), pg_args(session_id, len(bodies), bodies, KEEP)
            )
            await cur.fetchone()

    async def read(self, session_id: str) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(pg_format(READ), pg_args(session_id, KEEP))
            rows = await cur.fetchall()
        return [row[0] for row in reversed(rows)]


DRIVERS: dict[str, type[AsyncpgDriver] | type[PsycopgDriver]] = {
    "asyncpg": AsyncpgDriver,
    "psycopg": PsycopgDriver,
}


# -- round trips ----------------------------------------------------------------------------


class RoundTripProxy:
    """Relays TCP to the server, counting client sends that follow a server reply."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.round_trips = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        client_turn = [False]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up and not client_turn[0]:
                        self.round_trips += 1
                    client_turn[0] = up
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


async def count_round_trips(
    driver_cls: Any, url: str, prepare: bool, ops: dict[str, Callable[[Any], Awaitable[Any]]]
) -> dict[str, float]:
    parts = urlsplit(url)
    proxy = RoundTripProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    driver = driver_cls(via(url, proxy.port), prepare)
    counts = {}
    try:
        await driver.open()
        for name, op in ops.items():
            for _ in range(8):  # past psycopg's prepare threshold and asyncpg's cache fill
                await op(driver)
            before, repeats = proxy.round_trips, 5
            for _ in range(repeats):
                await op(driver)
            counts[name] = (proxy.round_trips - before) / repeats
    finally:
        await driver.close()
        await proxy.stop()
    return counts


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Result:
    """Rounds of one workload on one driver: ops/s is the median round's, latencies pooled."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        return [
            f"{statistics.median(self.rates):,.0f}",
            f"{percentile(self.latencies, 50) * 1e3:.2f}",
            f"{percentile(self.latencies, 99) * 1e3:.2f}",
        ]


async def timed(
    op: Callable[[int], Awaitable[Any]], seconds: float, tasks: int, result: Result
) -> None:
    latencies: list[float] = []

    async def worker(index: int, until: float, record: bool) -> None:
        n = index
        while time.perf_counter() < until:
            start = time.perf_counter()
            await op(n)
            if record:
                latencies.append(time.perf_counter() - start)
            n += tasks

    await asyncio.gather(*(worker(i, time.perf_counter() + 0.1, False) for i in range(tasks)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(i, start + seconds, True) for i in range(tasks)))
    result.rates.append(len(latencies) / (time.perf_counter() - start))
    result.latencies += latencies


async def run(
    targets: dict[str, tuple[str, bool]], seconds: float, rounds: int, unlogged: bool
) -> list[list[str]]:
    rng = random.Random(1)
    bodies = [new_bodies(rng) for _ in range(64)]

    def session(n: int) -> str:
        return f"bench-{(n * 37) % SESSIONS}"

    workloads: dict[str, tuple[Callable[[Any, int], Awaitable[Any]], int]] = {
        "turn/stmts": (lambda d, n: d.turn_stmts(session(n), bodies[n % 64]), 1),
        "turn/cte": (lambda d, n: d.turn_cte(session(n), bodies[n % 64]), 1),
        "read200": (lambda d, n: d.read(session(n)), 1),
        f"x{TASKS} turn/stmts": (lambda d, n: d.turn_stmts(session(n), bodies[n % 64]), TASKS),
        f"x{TASKS} turn/cte": (lambda d, n: d.turn_cte(session(n), bodies[n % 64]), TASKS),
    }
    single = {w: (lambda d, op=op: op(d, 0)) for w, (op, t) in workloads.items() if t == 1}
    rows = []
    for target, (url, prepare) in targets.items():
        await setup(url, unlogged)
        rts = {
            name: await count_round_trips(cls, url, prepare, single)
            for name, cls in DRIVERS.items()
        }
        drivers = {name: cls(url, prepare) for name, cls in DRIVERS.items()}
        try:
            for driver in drivers.values():
                await driver.open()
            for workload, (op, tasks) in workloads.items():
                # Rounds alternate between the drivers so that drift in the machine (fsync
                # latency, the other core's load) falls on both alike.
                results = {name: Result() for name in drivers}
                for _ in range(rounds):
                    for name, driver in drivers.items():
                        await timed(
                            lambda n, op=op, d=driver: op(d, n), seconds, tasks, results[name]
                        )
                for name, result in results.items():
                    rt = rts[name].get(workload.split(" ")[-1])
                    rows.append([name, target, workload, f"{rt:g}", *result.row()])
                    print(" | ".join(rows[-1]), file=sys.stderr)
        finally:
            for driver in drivers.values():
                if driver.pool is not None:
                    await driver.close()
        await check(url)
    await teardown(next(iter(targets.values()))[0])
    return rows


async def setup(url: str, unlogged: bool) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in SCHEMA:
            await conn.execute(statement.replace("{unlogged}", "UNLOGGED" if unlogged else ""))


async def check(url: str) -> None:
    """Every session keeps about KEEP items numbered up to its last_seq."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(CHECK)
        bad_counts, bad_seq = await cur.fetchone() or (1, 1)
    if bad_counts or bad_seq:
        raise SystemExit(f"check failed: {bad_counts} sessions off the cap, {bad_seq} off seq")


async def teardown(url: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(DROP)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_drivers", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("AGENT_SESSIONS_TEST_PG_URL"))
    parser.add_argument(
        "--pgbouncer-url", default=os.environ.get("AGENT_SESSIONS_TEST_PGBOUNCER_URL")
    )
    parser.add_argument(
        "--seconds", type=float, default=0.4, help="per round and driver (default 0.4)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument(
        "--unlogged",
        action="store_true",
        help="UNLOGGED tables: no WAL flush per commit, leaving driver and round-trip costs",
    )
    args = parser.parse_args(argv)
    targets: dict[str, tuple[str, bool]] = {}
    if args.url:
        targets["direct"] = (args.url, True)
        targets["direct-noprep"] = (args.url, False)
    if args.pgbouncer_url:
        targets["pgbouncer"] = (args.pgbouncer_url, False)
    if not targets:
        parser.error("give --url and/or --pgbouncer-url (or set AGENT_SESSIONS_TEST_PG_URL)")
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("asyncpg", "psycopg", "psycopg-pool")
    )
    tables = "UNLOGGED tables" if args.unlogged else "logged tables, fsync on"
    print(
        f"{versions}; pool {POOL_SIZE}; {args.rounds} x {args.seconds:g} s per workload; {tables}",
        file=sys.stderr,
    )
    rows = asyncio.run(run(targets, args.seconds, args.rounds, args.unlogged))
    headers = ["driver", "target", "workload", "RT", "ops/s", "p50 ms", "p99 ms"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
