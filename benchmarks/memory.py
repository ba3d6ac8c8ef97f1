"""Memory: RSS of a fresh process per candidate after many sessions and many turns.

Run by the suite as ``python -m benchmarks.memory CANDIDATE PATH OPENS TURNS``, which prints
one JSON object. RSS is read from ``/proc/self/status`` after a ``gc.collect()``, at 10%, 50%
and 100% of each phase, so growth is visible:

1. open a session object, ``get_items()``, close, for ``OPENS`` distinct sessions in turn;
2. ``TURNS`` turns on one session. Here the turn reads with ``get_items(200)`` for both
   candidates: the SDK never deletes, and reading its whole, ever-growing history would make
   10,000 turns take hours; the agent session holds at most 200 items anyway.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import candidates, items
from .core import Context, Section, progress
from .turns import preload

NAMES = ("agent", "sdk")
CHECKPOINTS = (("10%", 0.1), ("50%", 0.5), ("100%", 1.0))


def rss_mib() -> float:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def marks(total: int) -> dict[int, str]:
    return {max(1, round(total * fraction)): label for label, fraction in CHECKPOINTS}


async def measure(candidate: str, path: Path, opens: int, turns: int) -> dict[str, Any]:
    candidates.create_file(candidate, path)
    store = candidates.Store(candidate, path)
    warm = store.open("warm-up", "conv-1")  # imports and first connection, before "start"
    await warm.get_items()
    await candidates.close_session(warm)
    rss: dict[str, float] = {"start": rss_mib()}
    at = marks(opens)
    start = time.perf_counter()
    for n in range(1, opens + 1):
        session = store.open(f"user-{n}", "conv-1")
        await session.get_items()
        await candidates.close_session(session)
        if n in at:
            rss[f"opens {at[n]}"] = rss_mib()
    opens_s = time.perf_counter() - start
    session = store.open("turns", "conv-1")
    await preload(session)
    rss["turns 0%"] = rss_mib()
    at = marks(turns)
    start = time.perf_counter()
    for n in range(1, turns + 1):
        user, run = items.turn(n)
        await session.get_items(200)
        await session.add_items(user)
        await session.add_items(run)
        if n in at:
            rss[f"turns {at[n]}"] = rss_mib()
    turns_s = time.perf_counter() - start
    await candidates.close_session(session)
    store.close()
    return {"rss_mib": rss, "opens": opens, "opens_s": opens_s, "turns": turns, "turns_s": turns_s}


def memory(ctx: Context) -> Section:
    sizes = ctx.sizes["memory"]
    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    # IO-bound (the SDK fsyncs every commit) and RSS does not depend on timing: run both.
    running = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.memory",
                name,
                str(ctx.tmp / f"memory-{name}.db"),
                str(sizes["opens"]),
                str(sizes["turns"]),
            ],
            stdout=subprocess.PIPE,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for name in NAMES
    }
    raw: dict[str, Any] = {}
    for name, process in running.items():
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"memory subprocess for {name} exited with {process.returncode}")
        raw[name] = json.loads(out)
        candidates.remove_file(ctx.tmp / f"memory-{name}.db")
        progress(f"memory {name}: {raw[name]['rss_mib']}")
    keys = list(raw[NAMES[0]]["rss_mib"])
    headers = ["candidate", *[f"RSS MiB {key}" for key in keys], "opens/s", "turns/s"]
    rows = [
        [
            name,
            *[f"{raw[name]['rss_mib'][key]:.1f}" for key in keys],
            f"{raw[name]['opens'] / raw[name]['opens_s']:,.0f}",
            f"{raw[name]['turns'] / raw[name]['turns_s']:,.0f}",
        ]
        for name in NAMES
    ]
    title = (
        f"memory: RSS after {sizes['opens']:,} sessions opened and closed one after another "
        f"(with a get_items each), then {sizes['turns']:,} turns on one session"
    )
    notes = [
        "one fresh process per candidate, both running at once, one run (not repeated)",
        "the turn phase reads with get_items(200) for both candidates (see benchmarks/memory.py)",
        "opens/s and turns/s here are informational only: the two processes share the machine",
    ]
    summary = {
        name: {
            "opens_growth_mib": raw[name]["rss_mib"]["opens 100%"] - raw[name]["rss_mib"]["start"],
            "turns_growth_mib": raw[name]["rss_mib"]["turns 100%"]
            - raw[name]["rss_mib"]["turns 0%"],
        }
        for name in NAMES
    }
    return Section("memory", title, headers, rows, notes, summary, raw)


if __name__ == "__main__":
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    name, db, opens_arg, turns_arg = sys.argv[1:5]
    result = asyncio.run(measure(name, Path(db), int(opens_arg), int(turns_arg)))
    print(json.dumps(result))
