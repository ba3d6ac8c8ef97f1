"""Search workloads (agent only): ``SessionManager.search_sessions`` and the index's cost per turn.

``search``: one user's conversations (full: 1,000 of 200 items) are bulk-loaded through the
library's own insert path (``sql.insert_rows``, then ``sql.index_pending``), with messages of about
20 words drawn from a 5,000-word vocabulary with a Zipf distribution, so some words occur in
most conversations and some in a few. Then ``search_sessions`` (limit 20) runs queries of
five kinds in turn, through a ``SessionManager`` (its worker thread included):

* ``common``: one of the ten most frequent words (it matches nearly every conversation);
* ``medium``: a word of rank 200; ``rare``: a word of rank 3,000;
* ``two words``: ranks 50 and 300, both required;
* ``prefix``: the first four letters of the word of rank 100 (the last word is a prefix).

Then ``after a turn``: each search follows a turn written by an ``AgentSession`` of the same
user (a user message and a reply of the same vocabulary, another conversation), so it first
indexes those pending rows (SQLite indexes in batches, before a search): a search's cost in an
app where turns and searches interleave.

``turn_search_index``: the turn of ``turns.py`` (read, user message, tool call + output +
reply; pruning at 200) on ``AgentSession`` with ``search_index`` on and off, fresh files, in
an order rotated each round; the ratio is taken within each round.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from agent_sessions import AgentSession, SessionManager
from agent_sessions.backends.sqlite import schema, sql
from agent_sessions.codec import encode_items
from agent_sessions.encryption import clear_columns
from agent_sessions.ids import get_session_id

from . import items, stats
from .core import Context, Figures, Section, fmt, latencies_us, progress, release_idle_connections
from .turns import preload, timed_turn

USER = "bench-user"
VOCABULARY = 5000
WORDS_PER_MESSAGE = 20
QUERY_KINDS = ("common", "medium", "rare", "two words", "prefix")


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """``size`` distinct pronounceable words, most frequent first."""
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def queries(words: list[str]) -> dict[str, str]:
    return {
        "common": words[4],
        "medium": words[200],
        "rare": words[3000],
        "two words": f"{words[50]} {words[300]}",
        "prefix": words[100][:4],
    }


def build(path: Path, conversations: int, per_conversation: int, seed: int = 7) -> list[str]:
    """One user's conversations, loaded and indexed in one transaction; returns the words."""
    rng = random.Random(seed)
    words = vocabulary(VOCABULARY, rng)
    weights = [1 / (rank + 1) ** 1.07 for rank in range(len(words))]
    now = time.time()

    def message(n: int) -> items.Item:
        text = " ".join(rng.choices(words, weights, k=WORDS_PER_MESSAGE))
        if n % 2 == 0:
            return {"role": "user", "content": text}
        return {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }

    with closing(schema.connect(path)) as conn:
        conn.execute("BEGIN")
        for c in range(conversations):
            conversation = f"conv-{c:05d}"
            session_id = get_session_id(USER, conversation)
            upsert = (session_id, USER, conversation, now - c, now - c, None)
            conn.execute(sql.UPSERT_SESSION, upsert)
            batch = [message(n) for n in range(per_conversation)]
            payloads = encode_items(batch)
            rows = [(i, p, clear_columns(i)) for i, p in zip(batch, payloads, strict=True)]
            sql.insert_rows(conn, session_id, rows)
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        while sql.index_pending(conn, None, 10_000):
            pass
        conn.execute("COMMIT")
    return words


def _kinds_cycle(ops: int) -> Iterator[str]:
    for n in range(ops):
        yield QUERY_KINDS[n % len(QUERY_KINDS)]


async def _search_block(path: Path, words: list[str], sizes: dict[str, Any]) -> Figures:
    texts = queries(words)
    per_kind: dict[str, list[int]] = {kind: [] for kind in QUERY_KINDS}
    hits: dict[str, int] = {}
    async with SessionManager(path, retention_days=7) as manager:
        for kind in _kinds_cycle(sizes["warmup"]):
            await manager.search_sessions(USER, texts[kind])
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for kind in _kinds_cycle(sizes["ops"]):
            began = stats.now_ns()
            found = await manager.search_sessions(USER, texts[kind])
            latency = stats.now_ns() - began
            latencies.append(latency)
            per_kind[kind].append(latency)
            hits[kind] = len(found)
        elapsed = stats.now_ns() - start
        after_turn = await _after_turns(manager, path, words, texts, sizes)
    figures: Figures = {
        "rate": len(latencies) / elapsed * 1e9,
        **stats.latency_summary(latencies),
        "latencies_us": latencies_us(latencies),
    }
    for kind, values in per_kind.items():
        summary = stats.latency_summary(values)
        figures[f"{kind} p50_ms"] = summary["p50_ms"]
        figures[f"{kind} p99_ms"] = summary["p99_ms"]
        figures[f"{kind} hits"] = hits.get(kind, 0)
    summary = stats.latency_summary(after_turn)
    figures["after a turn p50_ms"] = summary["p50_ms"]
    figures["after a turn p99_ms"] = summary["p99_ms"]
    return figures


async def _after_turns(
    manager: SessionManager, path: Path, words: list[str], texts: dict[str, str], sizes: Any
) -> list[int]:
    """Latencies of searches each right after a turn (two pending rows) of the same user."""
    rng = random.Random(11)
    latencies = []
    with AgentSession(USER, "live-conversation", db_path=path) as session:
        for n, kind in enumerate(_kinds_cycle(sizes["ops"] // 2)):
            text = " ".join(rng.choices(words[:1000], k=WORDS_PER_MESSAGE))
            batch: list[Any] = [
                {"role": "user", "content": text},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": f"{text} {n}"}],
                },
            ]
            await session.add_items(batch)
            began = stats.now_ns()
            await manager.search_sessions(USER, texts[kind])
            latencies.append(stats.now_ns() - began)
    return latencies


def search(ctx: Context) -> Section:
    sizes = ctx.sizes["search"]
    path = ctx.tmp / "search.db"
    progress(f"search: loading {sizes['conversations']:,} conversations of {sizes['items']} items")
    began = time.perf_counter()
    words = build(path, sizes["conversations"], sizes["items"])
    load_s = time.perf_counter() - began
    size_mb = path.stat().st_size / 1e6
    try:
        figures = asyncio.run(_search_block(path, words, sizes))
    finally:
        release_idle_connections()
        path.unlink(missing_ok=True)
    rows = [
        [
            kind,
            repr(queries(words)[kind]),
            str(figures[f"{kind} hits"]),
            fmt(figures[f"{kind} p50_ms"], 3),
            fmt(figures[f"{kind} p99_ms"], 3),
        ]
        for kind in QUERY_KINDS
    ]
    rows.append(["all", "-", "-", fmt(figures["p50_ms"], 3), fmt(figures["p99_ms"], 3)])
    rows.append(
        [
            "after a turn",
            "(all kinds)",
            "-",
            fmt(figures["after a turn p50_ms"], 3),
            fmt(figures["after a turn p99_ms"], 3),
        ]
    )
    summary = {key: value for key, value in figures.items() if key != "latencies_us"}
    return Section(
        name="search",
        title=(
            f"search_sessions over one user's {sizes['conversations']:,} conversations of "
            f"{sizes['items']} items (SQLite FTS5, limit 20)"
        ),
        headers=["query", "text", "sessions found", "p50 ms", "p99 ms"],
        rows=rows,
        notes=[
            f"{sizes['ops']} searches after {sizes['warmup']} warm-up; loading and indexing "
            f"took {load_s:.1f} s; file {size_mb:.0f} MB"
        ],
        summary={"agent": summary},
        raw=figures,
    )


async def _turn_block(path: Path, index: bool, sizes: dict[str, Any]) -> Figures:
    turns = [items.turn(n) for n in range(sizes["warmup"] + sizes["turns"])]
    with AgentSession("user-1", "conv-1", db_path=path, search_index=index) as session:
        await preload(session)
        for turn in turns[: sizes["warmup"]]:
            await timed_turn(session, turn)
        stats.settle()
        latencies = []
        start = stats.now_ns()
        for turn in turns[sizes["warmup"] :]:
            latencies.append(await timed_turn(session, turn))
        elapsed = stats.now_ns() - start
    return {"rate": len(latencies) / elapsed * 1e9, **stats.latency_summary(latencies)}


def turn_search_index(ctx: Context) -> Section:
    sizes = ctx.sizes["turn_search_index"]
    names = {"index on": True, "index off": False}
    results: list[dict[str, Figures]] = []
    for round_index in range(ctx.rounds):
        figures: dict[str, Figures] = {}
        order = list(names) if round_index % 2 == 0 else list(names)[::-1]
        for name in order:
            path = ctx.tmp / f"turn-search-r{round_index}-{name.replace(' ', '-')}.db"
            try:
                figures[name] = asyncio.run(_turn_block(path, names[name], sizes))
            finally:
                release_idle_connections()
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        results.append(figures)
        progress(
            f"turn_search_index round {round_index + 1}/{ctx.rounds}: "
            + ", ".join(f"{name} {figures[name]['rate']:,.0f}/s" for name in names)
        )
    summary: dict[str, Figures] = {}
    for name in names:
        summary[name] = {
            key: stats.median([r[name][key] for r in results])
            for key in ("rate", "p50_ms", "p99_ms")
        }
    ratio = stats.median(
        [stats.ratio(r["index on"]["rate"], r["index off"]["rate"]) for r in results]
    )
    summary["agent"] = {"rate_vs_index_off": ratio}
    return Section(
        name="turn_search_index",
        title="turn_1task on AgentSession with search_index on vs off",
        headers=["candidate", "turns/s", "p50 ms", "p99 ms", "x index off"],
        rows=[
            [
                name,
                fmt(summary[name]["rate"], 0),
                fmt(summary[name]["p50_ms"], 3),
                fmt(summary[name]["p99_ms"], 3),
                fmt(ratio) if name == "index on" else "1.00",
            ]
            for name in names
        ],
        notes=[
            "SQLite indexes in batches before each search (migration 9): a turn with search on "
            "stores nothing for search; with it off its rows carry a mark to stay unindexed"
        ],
        summary=summary,
        raw=results,
    )
