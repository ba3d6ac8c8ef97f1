"""``agent-sessions rotate-key`` while two other processes keep writing to the same database."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from agent_sessions import AgentSession, generate_key, get_agent_session
from agent_sessions.backends import close_server_pools, open_backend
from agent_sessions.cli import main
from agent_sessions.encryption import Keyring
from agent_sessions.rekeying import count_remaining
from tests.pg_server import PG_URL, fresh_database, require_postgres, with_database

OLD = generate_key()
NEW = generate_key()
TURNS = 40


def turn(tag: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": tag},
        {"type": "function_call", "call_id": f"c-{tag}", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": f"c-{tag}", "output": tag},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": tag}]},
    ]


async def _write(target: str, worker: int, keys: str, start: Any) -> int:
    start.wait(timeout=60)
    written = 0
    for number in range(TURNS):
        # A session object per request, as a web app opens them; the app already has the
        # new key first and the old one to read.
        with get_agent_session(
            f"w{worker}", "c", db_path=target, max_messages=10_000, encryption_key=keys
        ) as session:
            await session.get_items()
            await session.add_items(turn(f"w{worker}-{number}"))  # type: ignore[arg-type]
        written += 1
    await close_server_pools()
    return written


def writer_main(target: str, worker: int, keys: str, start: Any, results: Any) -> None:
    try:
        results.put((worker, asyncio.run(_write(target, worker, keys, start))))
    except Exception as exc:  # reported, and asserted to be absent
        results.put((worker, repr(exc)))


async def _prepare(target: str) -> None:
    for worker in range(2):
        with get_agent_session(
            f"w{worker}", "c", db_path=target, max_messages=10_000, encryption_key=OLD
        ) as session:
            for number in range(30):
                await session.add_items(turn(f"old{worker}-{number}"))  # type: ignore[arg-type]
    await close_server_pools()


async def _remaining(target: str) -> int:
    backend = open_backend(target, create=False, offload=True)
    try:
        return await count_remaining(backend, Keyring(NEW).write_key_id)
    finally:
        await backend.close()
        await close_server_pools()


async def _history(target: str, worker: int) -> list[Any]:
    with get_agent_session(
        f"w{worker}", "c", db_path=target, max_messages=10_000, encryption_key=NEW
    ) as session:
        items = await session.get_items()
    await close_server_pools()
    return items


def rotate_under_writers(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_prepare(target))
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    keys = f"{NEW},{OLD}"
    writers = [
        context.Process(target=writer_main, args=(target, n, keys, start, results))
        for n in range(2)
    ]
    for process in writers:
        process.start()
    monkeypatch.setenv("AGENT_SESSION_ENCRYPTION_KEY", keys)
    start.set()
    first = main(["--db", target, "rotate-key", "--batch-size", "5"], out=io.StringIO())
    outcome = dict(results.get(timeout=120) for _ in writers)
    for process in writers:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert outcome == {0: TURNS, 1: TURNS}, outcome
    assert first in (0, 1)  # 1: a row changed meanwhile; the rerun finishes the job
    out = io.StringIO()
    assert main(["--db", target, "rotate-key", "--json"], out=out) == 0, out.getvalue()
    assert asyncio.run(_remaining(target)) == 0, "every row is on the newest key"
    monkeypatch.setenv("AGENT_SESSION_ENCRYPTION_KEY", NEW)  # the old key can now go
    for worker in range(2):
        expected = [
            *(i for n in range(30) for i in turn(f"old{worker}-{n}")),
            *(i for n in range(TURNS) for i in turn(f"w{worker}-{n}")),
        ]
        assert asyncio.run(_history(target, worker)) == expected, "a write was lost"


def test_rotate_key_while_two_processes_write_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(tmp_path / "rotate.db")
    with AgentSession("setup", "c", db_path=target):
        pass
    rotate_under_writers(target, monkeypatch)


def test_rotate_key_while_two_processes_write_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    url = require_postgres(PG_URL)
    with fresh_database(url) as name:
        rotate_under_writers(with_database(url, name), monkeypatch)
