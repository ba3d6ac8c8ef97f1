"""Per-request workloads on PostgreSQL: turns at 1 and 16 tasks, reads, opening per request.

A turn is what the Runner does to a session (``benchmarks.turns.timed_turn``): ``get_items()``,
``add_items([user message])``, ``add_items([function_call, function_call_output, assistant
message])``, yielding to the loop where the model would be awaited. Sessions start with 190
items, so ``agent`` reaches its 200-item cap within three turns; ``sdk_sqlalchemy`` never
deletes, so its sessions grow by 4 items a turn and its reads get longer ("items at end").

``round_trips`` counts client-to-server round trips per call through a relaying proxy
(``benchmarks.pg_drivers.RoundTripProxy``), in a pass of its own, not in any timing.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from .. import items, stats
from ..core import Figures, Section, fmt, latencies_us, progress
from ..pg_drivers import RoundTripProxy, via
from ..turns import preload, timed_turn
from . import server
from .candidates import ALL, PAIR, SDK, SDK_FROM_URL, Store
from .rounds import PgContext, rate_table, run_rounds, summarize


async def one_task(candidate: str, url: str, sizes: dict[str, Any]) -> Figures:
    turns = [items.turn(n) for n in range(sizes["warmup"] + sizes["turns"])]
    store = Store(candidate, url)
    await store.start()
    session = store.open("user-1", "conv-1")
    try:
        await preload(session)
        for turn in turns[: sizes["warmup"]]:
            await timed_turn(session, turn)
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for turn in turns[sizes["warmup"] :]:
            latencies.append(await timed_turn(session, turn))
        elapsed = stats.now_ns() - start
        items_end = len(await session.get_items())
        pool = store.pool_description()
    finally:
        await store.close_session(session)
        await store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "items_end": items_end,
        "pool": pool,
        "latencies_us": latencies_us(latencies),
    }


async def many_tasks(candidate: str, url: str, sizes: dict[str, Any]) -> Figures:
    tasks, count = sizes["tasks"], sizes["sessions"]
    per_task = sizes["turns"] // tasks
    warmup = sizes["warmup_per_task"]
    turns = [items.turn(n) for n in range((warmup + per_task) * tasks)]
    store = Store(candidate, url)
    await store.start()
    sessions = [store.open(f"user-{n}", "conv-1") for n in range(count)]
    try:
        for session in sessions:
            await preload(session)

        async def worker(task: int, first: int, number: int, latencies: list[int]) -> None:
            own = sessions[task::tasks]  # no two tasks ever share a session
            for k in range(first, first + number):
                turn = turns[k * tasks + task]
                latencies.append(await timed_turn(own[k % len(own)], turn))

        await asyncio.gather(*(worker(task, 0, warmup, []) for task in range(tasks)))
        stats.settle()
        latencies: list[int] = []
        start = stats.now_ns()
        await asyncio.gather(*(worker(task, warmup, per_task, latencies) for task in range(tasks)))
        elapsed = stats.now_ns() - start
        items_end = max([len(await session.get_items()) for session in sessions])
    finally:
        for session in sessions:
            await store.close_session(session)
        await store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "items_end": items_end,
        "latencies_us": latencies_us(latencies),
    }


async def get_items_block(candidate: str, url: str, sizes: dict[str, Any]) -> Figures:
    store = Store(candidate, url)
    await store.start()
    session = store.open("user-1", "conv-1")
    try:
        await session.add_items(items.history(sizes["items"]))
        for _ in range(sizes["warmup"]):
            got = await session.get_items()
        if len(got) != sizes["items"]:
            raise AssertionError(f"{candidate}: get_items() returned {len(got)} items")
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for _ in range(sizes["ops"]):
            before = stats.now_ns()
            await session.get_items()
            latencies.append(stats.now_ns() - before)
        elapsed = stats.now_ns() - start
    finally:
        await store.close_session(session)
        await store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "latencies_us": latencies_us(latencies),
    }


async def open_block(candidate: str, url: str, sizes: dict[str, Any]) -> Figures:
    # The sessions are written through the shared-engine store for both SDK variants.
    writer = Store(SDK if candidate == SDK_FROM_URL else candidate, url)
    await writer.start()
    count = sizes["sessions"]
    try:
        for n in range(count):
            session = writer.open(f"user-{n}", "conv-1")
            await session.add_items(items.history(sizes["items"]))
            await writer.close_session(session)
    finally:
        await writer.close()
    store = Store(candidate, url)
    await store.start()
    try:

        async def request(n: int) -> int:
            before = stats.now_ns()
            session = store.open(f"user-{n % count}", "conv-1")
            got = await session.get_items()
            await store.close_session(session)
            elapsed = stats.now_ns() - before
            if len(got) != sizes["items"]:
                raise AssertionError(f"{candidate}: get_items() returned {len(got)} items")
            return elapsed

        for n in range(sizes["warmup"]):
            await request(n)
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for n in range(sizes["ops"]):
            latencies.append(await request(n))
        elapsed = stats.now_ns() - start
    finally:
        await store.close()
    return {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "latencies_us": latencies_us(latencies),
    }


def _section(
    name: str,
    title: str,
    results: list[dict[str, Figures]],
    notes: list[str],
    unit: str,
    extra: list[tuple[str, str]] | None = None,
    names: tuple[str, ...] = PAIR,
) -> Section:
    summary = summarize(results, names)
    headers, rows = rate_table(summary, names, unit, extra or [])
    return Section(name, title, headers, rows, notes, summary, results)


def turn_1task(ctx: PgContext) -> Section:
    sizes = ctx.sizes["turn_1task"]
    results = run_rounds(ctx, "turn_1task", PAIR, lambda c, u: one_task(c, u, sizes))
    title = (
        f"turn_1task: one task, one session preloaded with {items.PRELOAD_ITEMS} items, "
        f"{sizes['turns']} measured turns after {sizes['warmup']} warm-up turns"
    )
    pools = ", ".join(f"{name}: {results[0][name]['pool']}" for name in PAIR)
    notes = [f"pools: {pools}"]
    return _section("turn_1task", title, results, notes, "turns/s", [("items_end", "items at end")])


def turn_16tasks(ctx: PgContext) -> Section:
    sizes = ctx.sizes["turn_16tasks"]
    results = run_rounds(ctx, "turn_16tasks", PAIR, lambda c, u: many_tasks(c, u, sizes))
    title = (
        f"turn_16tasks: {sizes['tasks']} concurrent tasks over {sizes['sessions']} sessions "
        f"(each preloaded with {items.PRELOAD_ITEMS} items, each task owning every "
        f"{sizes['tasks']}th session, round-robin), {sizes['turns']} measured turns"
    )
    notes = [
        "latency of a turn includes waiting for a pooled connection and for the other tasks' "
        "work in the event loop; agent's pool holds at most 10 connections, SQLAlchemy's 15"
    ]
    return _section(
        "turn_16tasks", title, results, notes, "turns/s", [("items_end", "items at end")]
    )


def get_items_200(ctx: PgContext) -> Section:
    sizes = ctx.sizes["get_items_200"]
    results = run_rounds(ctx, "get_items_200", PAIR, lambda c, u: get_items_block(c, u, sizes))
    title = (
        f"get_items_200: get_items() on a session holding {sizes['items']} items, "
        f"{sizes['ops']} measured calls after {sizes['warmup']} warm-up calls"
    )
    return _section("get_items_200", title, results, [], "ops/s")


def open_per_request(ctx: PgContext) -> Section:
    sizes = ctx.sizes["open_per_request"]
    results = run_rounds(ctx, "open_per_request", ALL, lambda c, u: open_block(c, u, sizes))
    summary = summarize(results, ALL)
    for name in ALL:
        summary[name]["rate_vs_from_url"] = stats.median(
            [stats.ratio(r[name]["rate"], r[SDK_FROM_URL]["rate"]) for r in results]
        )
    headers, rows = rate_table(summary, ALL, "ops/s", [("rate_vs_from_url", f"x {SDK_FROM_URL}")])
    title = (
        f"open_per_request: create the session object + get_items() + close, round-robin over "
        f"{sizes['sessions']} existing sessions of {sizes['items']} items, "
        f"{sizes['ops']} measured requests"
    )
    notes = [
        f"{SDK} shares one AsyncEngine across requests (its fairest showing); {SDK_FROM_URL} "
        "is SQLAlchemySession.from_url as documented, an engine and a new server connection "
        "per request, disposed at close; the target is taken against the shared engine",
    ]
    return Section("open_per_request", title, headers, rows, notes, summary, results)


# --- round trips ----------------------------------------------------------------------------

RT_REPEATS = 5


async def _count(candidate: str, url: str) -> dict[str, float]:
    parts = urlsplit(url)
    proxy = RoundTripProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    proxied = via(url, proxy.port)
    store = Store(SDK if candidate == SDK_FROM_URL else candidate, proxied)
    await store.start()
    counts: dict[str, float] = {}
    try:
        session = store.open("rt-user", "conv-1")
        await preload(session)
        for n in range(8):  # to the cap, and past psycopg's prepare threshold (5)
            await timed_turn(session, items.turn(n))
        get_rt = user_rt = run_rt = 0
        for n in range(8, 8 + RT_REPEATS):
            user, run = items.turn(n)
            before = proxy.round_trips
            await session.get_items()
            middle = proxy.round_trips
            await session.add_items(user)
            after_user = proxy.round_trips
            await session.add_items(run)
            get_rt += middle - before
            user_rt += after_user - middle
            run_rt += proxy.round_trips - after_user
        counts = {
            "get_items": get_rt / RT_REPEATS,
            "add_items_1": user_rt / RT_REPEATS,
            "add_items_3": run_rt / RT_REPEATS,
        }
        await store.close_session(session)
        opener = Store(candidate, proxied)
        await opener.start()
        try:
            before = proxy.round_trips
            for _ in range(RT_REPEATS):
                request = opener.open("rt-user", "conv-1")
                await request.get_items()
                await opener.close_session(request)
            counts["open_request"] = (proxy.round_trips - before) / RT_REPEATS
        finally:
            await opener.close()
    finally:
        await store.close()
        await proxy.stop()
    return counts


def round_trips(ctx: PgContext) -> Section:
    raw: dict[str, Any] = {}
    for name in ALL:
        server.reset(ctx.url)
        raw[name] = asyncio.run(_count(name, ctx.url))
        progress(f"round_trips {name}: {raw[name]}")
    headers = [
        "candidate",
        "get_items()",
        "add_items([user])",
        "add_items([call, output, reply])",
        "open + get_items + close",
    ]
    rows = [
        [
            name,
            *(
                "-" if name == SDK_FROM_URL and key != "open_request" else fmt(raw[name][key], 1)
                for key in ("get_items", "add_items_1", "add_items_3", "open_request")
            ),
        ]
        for name in ALL
    ]
    notes = [
        "client-to-server round trips per call, pool checkout and return included, counted by "
        f"a relaying proxy over {RT_REPEATS} calls on a session at agent's 200-item cap (a "
        "pass of its own, not in the timings); opening a connection counts its handshake",
    ]
    title = "round_trips: round trips to the server per call"
    return Section("round_trips", title, headers, rows, notes, raw, raw)
