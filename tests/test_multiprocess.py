"""Several processes (think uvicorn workers) sharing one database file."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_sessions import AgentSession, AgentSessionsError, SessionManager
from agent_sessions.clock import utc_now

PROCESSES = 4
TURNS = 60  # per process and session; the soak test runs 20 times as many
MAX_MESSAGES = 12


def turn_items(tag: str) -> list[dict[str, Any]]:
    call_id = f"call-{tag}"
    return [
        {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call_id, "output": tag},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": tag}]},
    ]


async def _worker(db_path: str, worker: int, turns: int) -> dict[str, Any]:
    errors: list[str] = []
    written = 0
    own = AgentSession(f"worker{worker}", "own", db_path=db_path, max_messages=MAX_MESSAGES)
    shared = AgentSession("everyone", "shared", db_path=db_path, max_messages=MAX_MESSAGES)
    try:
        for turn in range(turns):
            for session in (own, shared):
                tag = f"w{worker}-t{turn}"
                try:
                    await session.get_items()
                    await session.add_items([{"role": "user", "content": tag}])
                    await session.add_items(turn_items(tag))
                    written += 1
                except AgentSessionsError as exc:  # counted, and asserted to be zero
                    errors.append(repr(exc))
    finally:
        own.close()
        shared.close()
    return {"errors": errors, "turns": written}


def worker_main(db_path: str, worker: int, turns: int, results: Any) -> None:
    results.put((worker, asyncio.run(_worker(db_path, worker, turns))))


def check_history(items: list[dict[str, Any]]) -> None:
    assert items, "history is empty"
    assert items[0].get("role") == "user", f"starts with {items[0]}"
    seen_calls: set[str] = set()
    for item in items:
        if item.get("type") == "function_call":
            seen_calls.add(item["call_id"])
        if item.get("type") == "function_call_output":
            assert item["call_id"] in seen_calls, f"orphaned output {item['call_id']}"


def run_processes(db_path: str, turns: int) -> None:
    """Run PROCESSES workers of ``turns`` turns each on one file and check what is stored."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=worker_main, args=(db_path, n, turns, results))
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcome = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    errors = [error for result in outcome.values() for error in result["errors"]]
    turns_each = turns
    turns = sum(result["turns"] for result in outcome.values())
    assert not errors, f"{len(errors)} errors reached callers in {turns} turns: {errors[:3]}"
    assert turns == PROCESSES * turns_each * 2

    async def read(user: str, conversation: str) -> list[dict[str, Any]]:
        with AgentSession(user, conversation, db_path=db_path, max_messages=MAX_MESSAGES) as s:
            return await s.get_items()  # type: ignore[return-value]

    for worker in range(PROCESSES):
        items = asyncio.run(read(f"worker{worker}", "own"))
        # A private session is written by one process only: exactly its last 3 turns remain.
        last = [f"w{worker}-t{turn}" for turn in range(turns_each - 3, turns_each)]
        expected = [i for tag in last for i in [{"role": "user", "content": tag}, *turn_items(tag)]]
        assert items == expected, f"worker {worker}: {len(items)} items, not the last 3 turns"
    shared = asyncio.run(read("everyone", "shared"))
    assert len(shared) <= MAX_MESSAGES
    check_history(shared)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_four_processes_share_one_file(tmp_path: Path) -> None:
    run_processes(str(tmp_path / "shared.db"), TURNS)


@pytest.mark.slow
def test_four_processes_share_one_file_soak(tmp_path: Path) -> None:
    run_processes(str(tmp_path / "shared.db"), TURNS * 20)


# --- several processes cleaning up at once (each app process may run the scheduler) ------

IDLE_SESSIONS = 1500
CLEANERS = 3


def cleaner_main(db_path: str, start: Any, results: Any) -> None:
    async def clean() -> int:
        async with SessionManager(db_path, retention_days=7, cleanup_batch_size=10) as manager:
            start.wait(timeout=60)  # all cleaners begin together, each with the file open
            return await manager.cleanup_inactive_sessions()

    try:
        results.put(("deleted", asyncio.run(clean())))
    except Exception as exc:  # reported, and asserted to be absent
        results.put(("error", repr(exc)))


async def _write_idle_and_live(db_path: str) -> None:
    month_ago = utc_now() - timedelta(days=30)
    for n in range(IDLE_SESSIONS):
        with AgentSession(f"idle{n}", "c", db_path=db_path, clock=lambda: month_ago) as session:
            await session.add_items([{"role": "user", "content": f"idle {n}"}, *turn_items(str(n))])
    with AgentSession("live", "c", db_path=db_path) as session:
        await session.add_items([{"role": "user", "content": "live"}])


def test_several_processes_cleaning_up_at_once_delete_each_session_once(tmp_path: Path) -> None:
    db_path = str(tmp_path / "shared.db")
    asyncio.run(_write_idle_and_live(db_path))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(CLEANERS), context.Queue()
    cleaners = [
        context.Process(target=cleaner_main, args=(db_path, start, results))
        for _ in range(CLEANERS)
    ]
    for process in cleaners:
        process.start()
    outcome = [results.get(timeout=120) for _ in cleaners]
    for process in cleaners:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert [kind for kind, _ in outcome] == ["deleted"] * CLEANERS, outcome
    assert sum(count for _, count in outcome) == IDLE_SESSIONS, outcome
    with closing(sqlite3.connect(db_path)) as conn:
        sessions = conn.execute("SELECT session_id FROM agent_sessions").fetchall()
        owners = conn.execute("SELECT DISTINCT session_id FROM agent_messages").fetchall()
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    assert sessions == owners == [("user_live_conv_c",)]
    assert check == "ok"
