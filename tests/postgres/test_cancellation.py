"""A caller cancelled at any point leaves whole turns or nothing, and a usable pool."""

from __future__ import annotations

import asyncio

from agent_sessions.backends.postgres import PostgresBackend
from tests.items import assistant, call, output, user

from .helpers import append


async def test_cancelled_writes_are_all_or_nothing(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, pool_min_size=1, pool_max_size=2)
    await append(backend, "s", [user("start")])
    outcomes: list[str] = []
    for steps in range(0, 120, 3):  # cancel after 0, 3, 6, ... turns of the event loop
        tag = str(steps)
        task = asyncio.ensure_future(
            append(backend, "s", [user(tag), call(tag), output(tag), assistant(tag)], max_items=12)
        )
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        outcomes.append(type(outcome).__name__)
    await append(backend, "s", [user("end")], max_items=12)
    items = (await backend.read_items("s", None)).items
    assert items[-1] == user("end")
    turns = items[:-1]
    if turns and turns[0] == user("start"):
        turns = turns[1:]
    assert len(turns) % 4 == 0, turns
    for at in range(0, len(turns), 4):
        tag = turns[at]["content"]
        assert turns[at : at + 4] == [user(tag), call(tag), output(tag), assistant(tag)]
    assert "CancelledError" in outcomes
