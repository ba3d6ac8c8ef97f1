"""``python -m benchmarks.encryption``: encrypted sessions against plain ones, on both backends.

Two workloads, each run with and without ``encryption_key=``: a turn (read the history, add
the user message, add a tool call, its output and the answer, pruning at 200) and
``get_items()`` of a 200-item session. Targets: an encrypted turn runs at >= 0.7x the plain
turn's rate, ``get_items`` of 200 items at >= 0.6x. Rounds alternate plain and encrypted so
both see the same machine; the median round counts.

``--postgres [URL]`` adds PostgreSQL (default ``AGENT_SESSIONS_TEST_PG_URL``), in a database
made for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import items as bench_items

TARGETS = {"turn": 0.7, "get_items_200": 0.6, "get_items_200_cold": 0.6}
"""``get_items_200_cold`` empties the keyring's cache of opened rows before every read: the
first read of a history in a process (the warm workloads read what the keyring opened
before, as an app does on every turn of a conversation)."""


def _sizes(quick: bool) -> dict[str, int]:
    return {
        "turns": 60 if quick else 400,
        "reads": 100 if quick else 1000,
        "rounds": 3 if quick else 5,
    }


async def _turns(target: str, key: str | None, count: int) -> float:
    from agent_sessions import get_agent_session

    conversation = uuid.uuid4().hex
    start = time.perf_counter()
    for turn in range(count):
        with get_agent_session(
            "bench", conversation, db_path=target, max_messages=200, encryption_key=key
        ) as session:
            await session.get_items()
            user, run = bench_items.turn(turn)
            await session.add_items(user)  # type: ignore[arg-type]
            await session.add_items(run)  # type: ignore[arg-type]
    return count / (time.perf_counter() - start)


async def _reads(target: str, key: str | None, count: int, *, cold: bool = False) -> float:
    from agent_sessions import get_agent_session
    from agent_sessions.encryption import keyring_for

    keyring = keyring_for(key)
    forget = keyring._opened.clear if cold and keyring is not None else (lambda: None)

    with get_agent_session(
        "bench", uuid.uuid4().hex, db_path=target, max_messages=200, encryption_key=key
    ) as session:
        await session.add_items(bench_items.history(200))  # type: ignore[arg-type]
        assert len(await session.get_items()) == 200
        for _ in range(10):
            await session.get_items()
        elapsed = 0.0
        for _ in range(count):
            forget()  # not timed
            start = time.perf_counter()
            await session.get_items()
            elapsed += time.perf_counter() - start
        return count / elapsed


async def _measure(target: str, sizes: dict[str, int], key: str) -> dict[str, dict[str, float]]:
    from agent_sessions import close_server_pools

    rates: dict[str, dict[str, list[float]]] = {
        name: {"plain": [], "encrypted": []} for name in TARGETS
    }
    for _ in range(sizes["rounds"]):
        for mode, use in (("plain", None), ("encrypted", key)):
            rates["turn"][mode].append(await _turns(target, use, sizes["turns"]))
            rates["get_items_200"][mode].append(await _reads(target, use, sizes["reads"]))
            rates["get_items_200_cold"][mode].append(
                await _reads(target, use, sizes["reads"], cold=True)
            )
    await close_server_pools()
    return {
        name: {mode: statistics.median(values) for mode, values in modes.items()}
        for name, modes in rates.items()
    }


def _report(backend: str, figures: dict[str, dict[str, float]]) -> bool:
    ok = True
    print(f"## {backend}\n")
    print("| workload | plain (ops/s) | encrypted (ops/s) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for name, modes in figures.items():
        ratio = modes["encrypted"] / modes["plain"]
        met = ratio >= TARGETS[name]
        ok = ok and met
        print(
            f"| {name} | {modes['plain']:,.0f} | {modes['encrypted']:,.0f} | {ratio:.2f}x | "
            f">= {TARGETS[name]}x {'met' if met else 'MISSED'} |"
        )
    print()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encryption", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("AGENT_SESSIONS_TEST_PG_URL") or "",
        metavar="URL",
        help="also run on this PostgreSQL server (the role needs CREATEDB)",
    )
    args = parser.parse_args(argv)
    from agent_sessions import generate_key

    key = generate_key()
    sizes = _sizes(args.quick)
    print(f"# encryption at rest ({'quick' if args.quick else 'full'}, {sizes['rounds']} rounds)\n")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        figures = asyncio.run(_measure(str(Path(folder) / "bench.db"), sizes, key))
        ok = _report("SQLite", figures) and ok
    if args.postgres is not None:
        if not args.postgres:
            parser.error("--postgres needs a URL or AGENT_SESSIONS_TEST_PG_URL")
        from .postgres.server import fresh_database

        with fresh_database(args.postgres) as url:
            figures = asyncio.run(_measure(url, sizes, key))
        ok = _report("PostgreSQL", figures) and ok
    print("targets met" if ok else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
