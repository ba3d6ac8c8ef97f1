"""Several processes (think uvicorn workers) writing turns to their own sessions on one server.

As ``benchmarks.multiprocess``: worker processes are started once (``spawn``) and run every
candidate of every round on command; a barrier starts all of them at once, and each writes
turns for a fixed duration on its own sessions, one task per process. Each process has its
own pool (``agent``) or its own shared engine (``sdk_sqlalchemy``), made before the barrier.
Exceptions are caught per turn and counted as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from typing import Any

from .. import items, stats
from ..core import Section, fmt, latencies_us, progress, rotated
from ..turns import preload, timed_turn
from . import server
from .candidates import PAIR, SDK, Store
from .rounds import PgContext

SESSIONS_PER_PROCESS = 10
BARRIER_TIMEOUT_S = 300


async def work(
    worker: int, candidate: str, url: str, duration: float, barrier: Any
) -> dict[str, Any]:
    store = Store(candidate, url)
    await store.start()
    sessions = [
        store.open(f"worker-{worker}-user-{n}", "conv-1") for n in range(SESSIONS_PER_PROCESS)
    ]
    turns = [items.turn(n) for n in range(64)]
    latencies: list[int] = []
    errors: list[str] = []
    error_count = 0
    try:
        for n, session in enumerate(sessions):
            await preload(session)
            await timed_turn(session, turns[n])  # warm-up
        stats.settle()
        await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT_S)
        start = stats.now_ns()
        deadline = start + int(duration * 1e9)
        n = 0
        while stats.now_ns() < deadline:
            try:
                latencies.append(await timed_turn(sessions[n % len(sessions)], turns[n % 64]))
            except Exception as exc:  # counted and reported: the figure of interest
                error_count += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
            n += 1
        elapsed = stats.now_ns() - start
    finally:
        for session in sessions:
            await store.close_session(session)
        await store.close()
    return {
        "turns": len(latencies),
        "seconds": elapsed / 1e9,
        "errors": error_count,
        "error_samples": errors,
        "latencies_ns": latencies,
    }


def worker_main(worker: int, commands: Any, results: Any, barrier: Any) -> None:
    import os

    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    while (command := commands.get()) is not None:
        candidate, url, duration = command
        try:
            outcome = asyncio.run(work(worker, candidate, url, duration, barrier))
        except BaseException as exc:
            barrier.abort()
            outcome = {"failed": f"{type(exc).__name__}: {exc}"}
        results.put((worker, outcome))


def multiprocess(ctx: PgContext) -> Section:
    sizes = ctx.sizes["multiprocess"]
    processes, duration = sizes["processes"], sizes["duration_s"]
    rounds = min(ctx.rounds, sizes["max_rounds"])
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    barrier = spawn.Barrier(processes + 1)
    queues = [spawn.Queue() for _ in range(processes)]
    workers = [
        spawn.Process(target=worker_main, args=(n, queues[n], results, barrier), daemon=True)
        for n in range(processes)
    ]
    for process in workers:
        process.start()
    raw: list[dict[str, Any]] = []
    try:
        for round_index in range(rounds):
            per_candidate: dict[str, Any] = {}
            for name in rotated(PAIR, round_index):
                server.reset(ctx.url)
                for queue in queues:
                    queue.put((name, ctx.url, duration))
                # Wait until all workers have opened and preloaded; if the barrier breaks, a
                # worker failed and its outcome says why.
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(BARRIER_TIMEOUT_S)
                outcomes = dict(results.get(timeout=duration + BARRIER_TIMEOUT_S) for _ in workers)
                failed = [o["failed"] for o in outcomes.values() if "failed" in o]
                if failed:
                    raise RuntimeError(f"multiprocess worker failed ({name}): {failed[0]}")
                latencies = [ns for o in outcomes.values() for ns in o.pop("latencies_ns")]
                per_candidate[name] = {
                    "rate": sum(o["turns"] / o["seconds"] for o in outcomes.values()),
                    "turns": sum(o["turns"] for o in outcomes.values()),
                    "errors": sum(o["errors"] for o in outcomes.values()),
                    **stats.latency_summary(latencies),
                    "workers": outcomes,
                    "latencies_us": latencies_us(latencies),
                }
            raw.append({name: per_candidate[name] for name in PAIR})
            progress(
                f"multiprocess round {round_index + 1}/{rounds}: "
                + ", ".join(f"{n} {per_candidate[n]['rate']:,.0f}/s" for n in PAIR)
            )
    finally:
        for queue in queues:
            queue.put(None)
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    summary: dict[str, Any] = {}
    for name in PAIR:
        summary[name] = {
            "rate": stats.median([r[name]["rate"] for r in raw]),
            "p50_ms": stats.median([r[name]["p50_ms"] for r in raw]),
            "p99_ms": stats.median([r[name]["p99_ms"] for r in raw]),
            "max_ms": stats.median([r[name]["max_ms"] for r in raw]),
            "errors": sum(r[name]["errors"] for r in raw),
            "rate_vs_sdk": stats.median(
                [stats.ratio(r[name]["rate"], r[SDK]["rate"]) for r in raw]
            ),
        }
    headers = ["candidate", "turns/s (all processes)", "p50 ms", "p99 ms", "max ms", "errors"]
    headers += [f"x {SDK}"]
    rows = [
        [
            name,
            fmt(summary[name]["rate"], 0),
            fmt(summary[name]["p50_ms"], 3),
            fmt(summary[name]["p99_ms"], 3),
            fmt(summary[name]["max_ms"], 2),
            str(summary[name]["errors"]),
            fmt(summary[name]["rate_vs_sdk"]),
        ]
        for name in PAIR
    ]
    samples = [
        sample
        for r in raw
        for name in PAIR
        for outcome in r[name]["workers"].values()
        for sample in outcome["error_samples"]
    ]
    notes = [
        f"{SESSIONS_PER_PROCESS} sessions per process, each preloaded with "
        f"{items.PRELOAD_ITEMS} items; errors summed over {rounds} round(s)",
        *[f"error sample: {sample}" for sample in dict.fromkeys(samples)][:5],
    ]
    title = (
        f"multiprocess: {processes} processes (spawn) writing turns for {duration} s each "
        f"to their own sessions on one server, {rounds} round(s)"
    )
    return Section("multiprocess", title, headers, rows, notes, summary, raw)
