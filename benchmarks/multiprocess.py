"""Several processes (think uvicorn workers) writing turns to their own sessions on one file.

The worker processes are started once (``spawn``, importing the SDK takes seconds) and then
run every candidate of every round on command; a barrier starts all of them at the same
moment, and each writes turns for a fixed duration. Exceptions are caught per turn and
counted as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from pathlib import Path
from typing import Any

from . import candidates, items, stats
from .core import (
    Context,
    Section,
    fmt,
    latencies_us,
    progress,
    release_idle_connections,
    rotated,
)
from .turns import preload, timed_turn

NAMES = ("agent", "sdk", "baseline_prune")
SESSIONS_PER_PROCESS = 10
BARRIER_TIMEOUT_S = 300


async def work(
    worker: int, candidate: str, path: str, duration: float, barrier: Any
) -> dict[str, Any]:
    store = candidates.Store(candidate, Path(path))
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
            await candidates.close_session(session)
        store.close()
        release_idle_connections()
    return {
        "turns": len(latencies),
        "seconds": elapsed / 1e9,
        "errors": error_count,
        "error_samples": errors,
        "latencies_ns": latencies,
    }


def worker_main(worker: int, commands: Any, results: Any, barrier: Any) -> None:
    while (command := commands.get()) is not None:
        candidate, path, duration = command
        try:
            outcome = asyncio.run(work(worker, candidate, path, duration, barrier))
        except BaseException as exc:
            barrier.abort()
            outcome = {"failed": f"{type(exc).__name__}: {exc}"}
        results.put((worker, outcome))


def multiprocess(ctx: Context) -> Section:
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
            for name in rotated(NAMES, round_index):
                path = ctx.tmp / f"multiprocess-r{round_index}-{name}.db"
                candidates.create_file(name, path)
                for queue in queues:
                    queue.put((name, str(path), duration))
                # Wait until all workers have opened and preloaded; if the barrier breaks, a
                # worker failed and its outcome says why.
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(BARRIER_TIMEOUT_S)
                outcomes = dict(results.get(timeout=duration + BARRIER_TIMEOUT_S) for _ in workers)
                candidates.remove_file(path)
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
            raw.append({name: per_candidate[name] for name in NAMES})
            progress(
                f"multiprocess round {round_index + 1}/{rounds}: "
                + ", ".join(f"{n} {per_candidate[n]['rate']:,.0f}/s" for n in NAMES)
            )
    finally:
        for queue in queues:
            queue.put(None)
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    summary: dict[str, Any] = {}
    for name in NAMES:
        summary[name] = {
            "rate": stats.median([r[name]["rate"] for r in raw]),
            "p50_ms": stats.median([r[name]["p50_ms"] for r in raw]),
            "p99_ms": stats.median([r[name]["p99_ms"] for r in raw]),
            "errors": sum(r[name]["errors"] for r in raw),
            "rate_vs_sdk": stats.median(
                [stats.ratio(r[name]["rate"], r["sdk"]["rate"]) for r in raw]
            ),
            "rate_vs_baseline_prune": stats.median(
                [stats.ratio(r[name]["rate"], r["baseline_prune"]["rate"]) for r in raw]
            ),
        }
    headers = ["candidate", "turns/s (all processes)", "p50 ms", "p99 ms", "errors"]
    headers += ["x sdk", "x baseline_prune"]
    rows = [
        [
            name,
            fmt(summary[name]["rate"], 0),
            fmt(summary[name]["p50_ms"], 3),
            fmt(summary[name]["p99_ms"], 3),
            str(summary[name]["errors"]),
            fmt(summary[name]["rate_vs_sdk"]),
            fmt(summary[name]["rate_vs_baseline_prune"]),
        ]
        for name in NAMES
    ]
    samples = [
        sample
        for r in raw
        for name in NAMES
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
        f"to their own sessions on one file, {rounds} round(s)"
    )
    return Section("multiprocess", title, headers, rows, notes, summary, raw)
