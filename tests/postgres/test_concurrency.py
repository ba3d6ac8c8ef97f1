"""Real processes at once: writers sharing sessions, sweepers deleting idle ones beside them.

8 processes x 8 tasks write the same sessions (one pruned, one never pruned) and their own,
while 2 sweeper processes delete idle sessions, some of which the writers revive. Nothing is
lost or written twice, every history stays valid, and no session is deleted by halves.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import psycopg

from agent_sessions.backends.postgres import PostgresBackend
from agent_sessions.pruning import cut_index
from tests.items import assistant, call, output, user

from . import workers
from .helpers import T0, append, query

PROCESSES = 8
TASKS = 8
TURNS = 6
SWEEPERS = 2
OTHER_IDLE = 336
DAY = 86_400.0


def check_valid(items: list[dict[str, Any]]) -> None:
    """Starts at a user message, every output right after its call, nothing twice."""
    assert items, "empty"
    assert items[0].get("role") == "user", items[0]
    keys = [repr(sorted(item.items())) for item in items]
    assert len(set(keys)) == len(keys), "an item is stored twice"
    for at, item in enumerate(items):
        if item.get("type") == "function_call_output":
            assert at > 0, "an output without its call"
            assert items[at - 1] == call(item["call_id"]), f"output {at} not after its call"


def run_processes(targets: list[tuple[Any, tuple[Any, ...]]], timeout: float = 240) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(targets))
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, barrier, results)) for target, args in targets
    ]
    for process in processes:
        process.start()
    try:
        collected = [results.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert all(process.exitcode == 0 for process in processes)
    return collected


async def test_writers_and_sweepers_at_once(backend: PostgresBackend, pg_url: str) -> None:
    old = T0 - 10 * DAY
    revivable = [f"idle-{w}-{t}" for w in range(PROCESSES) for t in range(TASKS)]
    idle = revivable + [f"idle-x-{n}" for n in range(OTHER_IDLE)]
    for session_id in idle:
        await append(backend, session_id, [user("old"), assistant("old")], now=old)

    results = run_processes(
        [(workers.write, (pg_url, w, TASKS, TURNS, T0)) for w in range(PROCESSES)]
        + [(workers.sweep, (pg_url, T0 - DAY, 3)) for _ in range(SWEEPERS)]
    )

    writer_errors = [error for kind, _, errors in results if kind == "writer" for error in errors]
    assert writer_errors == []
    sweeps = [outcome for kind, _, outcome in results if kind == "sweeper"]
    assert [errors for _, _, errors in sweeps] == [[]] * SWEEPERS
    deleted = sum(count for count, _, _ in sweeps)

    tags = [f"w{w}-t{t}-n{n}" for w in range(PROCESSES) for t in range(TASKS) for n in range(TURNS)]
    # Never pruned: every writer's every item, exactly once, each turn's tool items together.
    everything = (await backend.read_items(workers.SHARED_ALL, None)).items
    check_valid(everything)
    assert len(everything) == 4 * len(tags)
    assert Counter(i["content"] for i in everything if i.get("role") == "user") == Counter(tags)
    # Pruned by all at once: still a valid history, within the bound unless the newest user
    # message is followed by more tool turns than that (the current turn stays whole).
    shared = (await backend.read_items(workers.SHARED, None)).items
    check_valid(shared)
    users = [at for at, item in enumerate(shared) if item.get("role") == "user"]
    assert len(shared) <= workers.SHARED_MAX or users == [0]
    assert cut_index(shared, workers.SHARED_MAX) == 0
    # One writer each: exactly what it wrote, in order.
    for w in range(PROCESSES):
        for t in range(TASKS):
            own = (await backend.read_items(f"own-{w}-{t}", None)).items
            assert own == [
                item
                for n in range(TURNS)
                for tag in [f"w{w}-t{t}-n{n}"]
                for item in (user(tag), call(tag), output(tag), assistant(tag))
            ]
    # Revived sessions were kept whole, or deleted before their new turn and made afresh.
    kept_whole = 0
    for session_id in revivable:
        items = (await backend.read_items(session_id, None)).items
        check_valid(items)
        new = items[-4:]
        assert [i.get("content") for i in new if i.get("role") == "user"] != ["old"]
        if len(items) == 6:
            assert items[:2] == [user("old"), assistant("old")]
            kept_whole += 1
        else:
            assert len(items) == 4, f"{session_id} was deleted by halves: {items}"
    assert deleted == len(idle) - kept_whole
    assert await backend.count_idle_sessions(T0 - DAY) == 0
    assert await backend.delete_idle_batch(T0 - DAY, 100) == 0
    seqs = await query(
        pg_url,
        "SELECT count(*), count(DISTINCT (session_id, seq)) FROM agent_sessions_item",
    )
    assert seqs[0][0] == seqs[0][1]


async def test_a_sweep_skips_sessions_held_by_others_without_waiting(
    backend: PostgresBackend, pg_url: str
) -> None:
    for n in range(4):
        await append(backend, f"idle-{n}", [user("old")], now=T0 - DAY)
    impatient = PostgresBackend(pg_url, statement_timeout=0.5)
    # Another app instance's sweep (or a write) holds two of them in an open transaction:
    # with a wait, this sweep would fail on its statement timeout.
    async with await psycopg.AsyncConnection.connect(pg_url, prepare_threshold=None) as other:
        held = await other.execute(
            "SELECT session_id FROM agent_sessions_session WHERE session_id IN "
            "('idle-0', 'idle-2') FOR UPDATE"
        )
        assert len(await held.fetchall()) == 2
        assert await impatient.delete_idle_batch(T0, 10) == 2
        assert await impatient.delete_idle_batch(T0, 10) == 0
        await other.rollback()
    assert await impatient.session_ids() == ["idle-0", "idle-2"]
    assert await impatient.delete_idle_batch(T0, 10) == 2
