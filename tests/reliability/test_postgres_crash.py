"""SIGKILL a PostgreSQL client mid-write: nothing acknowledged lost, no half batch, no stuck lock.

A child process writes turns from a few tasks at once through ``PostgresSession.add_items``:
each task alternates between a session of its own (never pruned) and one all tasks share
(pruned to a few items). After each ``add_items`` returns, the task appends a line to a side
log (one ``write()`` per line, unbuffered: the log may miss the newest acknowledgement, never
show one that did not happen). The parent kills the child with SIGKILL a random moment after
it starts writing (sometimes while it is still connecting), then checks the database:

* every batch is whole or absent: each item carries its batch's id (``pg_batches``);
* each own session holds exactly the batches its task logged, in order, plus the ones its
  tasks were writing when killed, if those committed; the shared session is a valid suffix
  of what was committed, with no acknowledged batch missing after one that is there;
* every history is valid for the model;
* the killed client leaves no lock behind: the next write to each session goes through at
  once (under a short statement timeout), and no other client of the database is left in a
  transaction. Then a new child carries on, on the same sessions.

A batch being written when its process died may still commit *after* the parent has looked
(the server, or PgBouncer, already had the whole pipelined transaction): the checks allow
that, at any later moment, but only after the batches that preceded it, and whole; the
figures count such late commits.

Children are forked from a ``forkserver`` with the library preloaded (importing the Agents
SDK takes about 2 s, which every kill cannot pay).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_sessions import get_session_id
from agent_sessions.backends.postgres import close_pools
from agent_sessions.session import PostgresSession
from agent_sessions.settings import AgentSessionSettings
from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database
from tests.reliability.pg_batches import (
    batch,
    batch_ids,
    describe,
    half_batches,
    history_problems,
    stored_sessions,
)
from tests.reliability.tagged import Item

ROUTES = {"direct": PG_URL, "pgbouncer": PGBOUNCER_URL}
USER = "crash"
TASKS = 3
SHARED = "shared"
SHARED_MAX = 10  # every write to it prunes: kills land inside pruning transactions
NO_LIMIT = 1_000_000
OWN = tuple(f"own{task}" for task in range(TASKS))
KILLS = 6  # per route
SOAK_KILLS = 60
KILL_DELAY = (0.05, 0.4)  # seconds after the child reports it is about to write
EARLY_KILL_DELAY = (0.0, 0.05)  # every EARLY_EVERY-th kill (and the first): while connecting
EARLY_EVERY = 4
PROMPT = 2.0  # statement timeout of the write after a kill: a lock left behind fails it
LEFTOVER_BOUND = 5.0  # seconds for the server to end the dead client's backend
CHILD_SECONDS = 60.0  # a child whose parent died stops by itself


def plan(generation: int, task: int, n: int) -> tuple[str, str, list[Item]]:
    """The conversation, batch id and items of a task's ``n``-th ``add_items``."""
    conversation = OWN[task] if n % 2 == 0 else SHARED
    bid = f"g{generation}t{task}n{n}"
    return conversation, bid, batch(bid, 1 + (n // 2) % 2)


def max_messages(conversation: str) -> int:
    return SHARED_MAX if conversation == SHARED else NO_LIMIT


# --- the child ---------------------------------------------------------------------------------


async def _write_until_killed(url: str, log_path: str, generation: int, ready: Any) -> None:
    settings = AgentSessionSettings(pool_min_size=1, pool_max_size=TASKS, statement_timeout=5)
    sessions = {
        name: PostgresSession(
            USER, name, database_url=url, max_messages=max_messages(name), settings=settings
        )
        for name in (*OWN, SHARED)
    }
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    deadline = time.monotonic() + CHILD_SECONDS

    async def task(number: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            conversation, _, items = plan(generation, number, n)
            await sessions[conversation].add_items(items)  # type: ignore[arg-type]
            os.write(log, f"{number} {n}\n".encode())  # only after add_items returned
            n += 1

    ready.send("ready")
    await asyncio.gather(*(task(number) for number in range(TASKS)))


def crash_child(url: str, log_path: str, generation: int, ready: Any) -> None:
    try:
        asyncio.run(_write_until_killed(url, log_path, generation, ready))
    except BaseException:
        ready.send(f"error: {traceback.format_exc()}")
        raise


# --- the parent --------------------------------------------------------------------------------


@pytest.fixture(params=sorted(ROUTES))
def route(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A new, empty database; this loop's pools are closed before it is dropped."""
    with fresh_database(require_postgres(PG_URL)) as name:
        yield name
        await close_pools()


def read_log(log_path: Path) -> dict[int, int]:
    """How many writes each task logged (their numbers checked to run 0, 1, 2...)."""
    text = log_path.read_bytes().decode() if log_path.exists() else ""
    counts = dict.fromkeys(range(TASKS), 0)
    for line in text.split("\n")[:-1]:  # a last line without its newline was never complete
        task, n = map(int, line.split())
        assert n == counts[task], f"task {task} logged write {n} after {counts[task]} writes"
        counts[task] += 1
    return counts


def drain(reader: Any) -> str:
    """What the child sent before it died (an error report), without blocking."""
    messages = []
    try:
        while reader.poll():
            messages.append(str(reader.recv()))
    except EOFError:
        pass
    return "\n".join(messages)


async def kill_a_writer(
    context: Any, url: str, log_path: Path, generation: int, delay: float, figures: str
) -> None:
    """Start a child writing, kill it ``delay`` seconds after it reports ready."""
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=crash_child, args=(url, str(log_path), generation, writer))
    try:
        child.start()
        writer.close()
        assert await asyncio.to_thread(reader.poll, 60), f"{figures} child {generation}: no ready"
        message = reader.recv()
        assert message == "ready", f"{figures} child {generation}: {message}"
        await asyncio.sleep(delay)  # the moment of the kill, chosen at random: no event
        child.kill()
        await asyncio.to_thread(child.join, 30)
        report = drain(reader)
        assert child.exitcode == -signal.SIGKILL, (
            f"{figures} child {generation} ended by itself ({child.exitcode}): {report}"
        )
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        reader.close()
        child.close()


@dataclass(frozen=True)
class Span:
    """When a batch of the shared session surely committed, in generations.

    A child's acknowledged batch commits while generation ``generation`` runs (``low`` =
    ``high``), the parent's own write between two generations (+0.5). A batch in flight at a
    kill commits from its generation on, and before the check that first saw it (+0.25).
    """

    low: float
    high: float
    generation: int
    task: int  # -1: the parent's write
    n: int

    def surely_after(self, other: Span) -> bool:
        if self.low > other.high:
            return True
        same_task = self.task == other.task >= 0 and self.generation == other.generation
        return same_task and self.n > other.n


@dataclass
class InFlight:
    """A batch a task was writing when its process was killed: committed, or not, or later."""

    conversation: str
    generation: int
    task: int
    n: int
    after: str | None  # the own session's batch it must follow (its task's previous one)


def leftover_transactions(url: str) -> list[tuple[Any, ...]]:
    """Other clients of the database in a transaction or holding a lock (a dead one's)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT a.pid, a.state, left(a.query, 60), count(l.pid) FROM pg_stat_activity AS a "
            "LEFT JOIN pg_locks AS l ON l.pid = a.pid "
            "WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
            "AND a.pid <> pg_backend_pid() "
            "GROUP BY a.pid, a.state, a.query, a.xact_start "
            "HAVING a.xact_start IS NOT NULL OR count(l.pid) > 0"
        ).fetchall()


async def crash_and_check(route: str, database: str, kills: int) -> None:
    url = with_database(require_postgres(ROUTES[route]), database)
    direct = with_database(require_postgres(PG_URL), database)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = multiprocessing.get_context("forkserver")
    # Ignored if this pytest process already started its forkserver: children are then
    # slower (they import what is missing), equally valid.
    context.set_forkserver_preload(["agent_sessions.session", "psycopg_pool", "pytest"])
    prompt = AgentSessionSettings(pool_max_size=2, pool_timeout=PROMPT, statement_timeout=PROMPT)
    sessions = {
        name: PostgresSession(
            USER, name, database_url=url, max_messages=max_messages(name), settings=prompt
        )
        for name in (*OWN, SHARED)
    }
    ids = {name: get_session_id(USER, name) for name in (*OWN, SHARED)}
    own_order: dict[str, list[str]] = {name: [] for name in OWN}  # acknowledged or seen
    shared_spans: dict[str, Span] = {}  # shared batches acknowledged or seen
    in_flight: dict[str, InFlight] = {}  # not acknowledged, not seen (yet)
    acknowledged = unlogged = late = 0
    slowest = 0.0
    started = time.monotonic()

    def figures(kill: int) -> str:
        return (
            f"[{route}, seed {seed}, {kill} kills, {acknowledged} acknowledged add_items, "
            f"{unlogged} committed but not logged ({late} of them after the parent looked), "
            f"slowest write after a kill {slowest * 1000:.0f} ms, "
            f"{time.monotonic() - started:.1f} s]"
        )

    for kill in range(1, kills + 1):
        generation = kill - 1
        log_path = Path(f"acks-{route}-{generation}.log")  # the test's own cwd (tmp_path)
        early = kill == 1 or kill % EARLY_EVERY == 0
        delay = rng.uniform(*(EARLY_KILL_DELAY if early else KILL_DELAY))
        await kill_a_writer(context, url, log_path, generation, delay, figures(kill - 1))

        logged = read_log(log_path)
        acknowledged += sum(logged.values())
        for task in range(TASKS):
            for n in range(logged[task]):
                conversation, bid, _ = plan(generation, task, n)
                if conversation == SHARED:
                    shared_spans[bid] = Span(generation, generation, generation, task, n)
                else:
                    own_order[conversation].append(bid)
            conversation, bid, _ = plan(generation, task, logged[task])
            previous = own_order.get(conversation) or [None]
            in_flight[bid] = InFlight(conversation, generation, task, logged[task], previous[-1])

        where = f"{figures(kill)} after kill {kill}"
        stored = stored_sessions(direct)
        unknown = set(stored) - set(ids.values())
        assert not unknown, f"{where}: rows of sessions never written: {unknown}"
        items = {name: stored.get(ids[name], []) for name in ids}
        for name, held in items.items():
            halves = half_batches(held)
            assert not halves, f"{where}: {name} holds part of a batch: {halves[:3]}"
            if held:
                problems = history_problems(held)
                assert not problems, f"{where}: {name} is invalid ({describe(held)}): {problems}"

        seen: list[str] = []
        # Own sessions: exactly the acknowledged batches in order, and in-flight ones after
        # the batch that preceded them.
        for name in OWN:
            got = batch_ids(items[name])
            acked = [bid for bid in got if bid not in in_flight]
            assert acked == own_order[name], (
                f"{where}: {name} holds {acked[-4:]} ({len(acked)} acknowledged batches), "
                f"logged {own_order[name][-4:]} ({len(own_order[name])})"
            )
            for bid in set(got) - set(acked):
                assert in_flight[bid].conversation == name, f"{where}: {bid} in {name}"
                after = in_flight[bid].after
                assert after is None or got.index(after) < got.index(bid), (
                    f"{where}: {name} holds {bid} before {after}, written before it"
                )
                seen.append(bid)
            own_order[name] = got
        # The shared session: pruned, so a suffix of the commit order. Every batch surely
        # committed after one it holds must be there too.
        held_bids = batch_ids(items[SHARED])
        for bid in held_bids:
            if bid in in_flight:
                ghost = in_flight[bid]
                assert ghost.conversation == SHARED, f"{where}: {bid} in {SHARED}"
                span = Span(
                    ghost.generation, generation + 0.25, ghost.generation, ghost.task, ghost.n
                )
                shared_spans[bid] = span
                seen.append(bid)
        strange = set(held_bids) - set(shared_spans)
        assert not strange, f"{where}: shared holds batches never written: {strange}"
        assert len(items[SHARED]) <= SHARED_MAX or len(held_bids) == 1, f"{where}: not pruned"
        for bid in held_bids:
            missing = [
                later
                for later, span in shared_spans.items()
                if span.surely_after(shared_spans[bid]) and later not in held_bids
            ]
            assert not missing, f"{where}: shared holds {bid} but lost later {missing[:5]}"
        for bid in seen:
            unlogged += 1
            late += in_flight.pop(bid).generation < generation

        # Nothing of the dead client blocks the next writer of any of its sessions.
        for name, session in sessions.items():
            bid = f"p{generation}{name}"
            before = time.monotonic()
            await asyncio.wait_for(session.add_items(batch(bid, 1)), 3 * PROMPT)
            slowest = max(slowest, time.monotonic() - before)
            if name == SHARED:
                shared_spans[bid] = Span(generation + 0.5, generation + 0.5, generation, -1, 0)
            else:
                own_order[name].append(bid)
        deadline = time.monotonic() + LEFTOVER_BOUND
        while leftover := leftover_transactions(direct):
            assert time.monotonic() < deadline, f"{where}: the dead client's backend: {leftover}"
            await asyncio.sleep(0.01)
        # The library reads what the rows hold (read after it: a late commit may be new).
        for name, session in sessions.items():
            read = await session.get_items()
            rows = stored_sessions(direct)[ids[name]]
            if read != rows:
                new = set(batch_ids(rows)) - set(batch_ids(read))  # type: ignore[arg-type]
                assert new, f"{where}: {name} reads differently from its rows"
                assert new <= set(in_flight), f"{where}: {name} reads without {new}"

    final = figures(kills)
    assert acknowledged >= kills, f"{final} the children hardly wrote before being killed"
    print(f"postgres crash safety: {final}, 0 acknowledged batches lost")


async def test_sigkill_loses_no_acknowledged_write_and_leaves_no_lock(
    route: str, pg_database: str
) -> None:
    await crash_and_check(route, pg_database, KILLS)


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_write_and_leaves_no_lock_soak(
    route: str, pg_database: str
) -> None:
    await crash_and_check(route, pg_database, SOAK_KILLS)
