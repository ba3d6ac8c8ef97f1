"""Batches with an id in every item, and what the PostgreSQL batteries check of stored ones.

A batch ``b`` is one ``add_items`` call: a user message ``b:u``, ``pairs`` function calls
``b:c1..`` each followed by its output ``b:o1..``, then an assistant message ``b:a`` (the
shapes of ``tagged``). Reading a session back, the batch of every row is known, so a test
can tell a whole batch from part of one, and an acknowledged batch from a missing one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from tests.reliability.tagged import Item, tag_of, tool_batch, user

ITEMS_TABLE = "agent_sessions_item"


def batch(batch_id: str, pairs: int) -> list[Item]:
    """The items of batch ``batch_id``: a user message, ``pairs`` tool calls, a reply."""
    return [user(batch_id), *tool_batch(batch_id, pairs)]


def batch_of(item: Item) -> str:
    """The id of the batch ``item`` was written in."""
    return tag_of(item).rsplit(":", 1)[0]


def batch_ids(items: Sequence[Item]) -> list[str]:
    """The batches in ``items``, in order, each once."""
    return list(dict.fromkeys(batch_of(item) for item in items))


def stored_sessions(url: str) -> dict[str, list[Item]]:
    """Every session's rows, decoded, in order, read on a connection of its own (none: {})."""
    with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
        exists = conn.execute(f"SELECT to_regclass('{ITEMS_TABLE}') IS NOT NULL").fetchone()
        if not (exists and exists[0]):  # a writer killed before it made the tables
            return {}
        rows = conn.execute(
            f"SELECT session_id, message_data FROM {ITEMS_TABLE} ORDER BY session_id, seq"
        ).fetchall()
    sessions: dict[str, list[Item]] = {}
    for session_id, data in rows:
        sessions.setdefault(session_id, []).append(json.loads(data))
    return sessions


def half_batches(items: Sequence[Item]) -> list[str]:
    """Batches not stored whole, in their own order and together (empty list: none).

    Pruning cuts only at a user message, the first item of a batch, so a stored batch is
    complete or absent, its items consecutive.
    """
    runs: list[tuple[str, list[str]]] = []
    for item in items:
        bid = batch_of(item)
        if not runs or runs[-1][0] != bid:
            runs.append((bid, []))
        runs[-1][1].append(tag_of(item))
    problems = []
    for bid, tags in runs:
        pairs = max(0, (len(tags) - 2) // 2)
        if tags != [tag_of(item) for item in batch(bid, pairs)]:
            problems.append(f"batch {bid} holds {tags[:8]}")
    split = sorted(bid for bid, count in Counter(bid for bid, _ in runs).items() if count > 1)
    if split:
        problems.append(f"batches stored in several places: {split[:5]}")
    return problems


def history_problems(items: Sequence[Item]) -> list[str]:
    """What makes ``items`` an invalid history for the model (an empty list: valid).

    It must start at a user message; every tool output must follow its own call, each call
    is answered once, and no item appears twice.
    """
    if not items:
        return ["empty history"]
    problems = []
    if items[0].get("role") != "user":
        problems.append(f"starts at {tag_of(items[0])}, not a user message")
    tags = [tag_of(item) for item in items]
    if len(set(tags)) != len(tags):
        problems.append("an item is stored twice")
    calls: set[str] = set()
    answered: set[str] = set()
    for position, item in enumerate(items):
        call_id = item.get("call_id")
        if item.get("type") == "function_call":
            calls.add(call_id)
        elif item.get("type") == "function_call_output":
            if call_id not in calls:
                problems.append(f"output {call_id} at {position} without its call before it")
            if call_id in answered:
                problems.append(f"output {call_id} twice")
            answered.add(call_id)
    if calls - answered:
        problems.append(f"calls without output: {sorted(calls - answered)[:5]}")
    return problems


def is_subsequence(part: Iterable[str], whole: Iterable[str]) -> bool:
    """Whether ``part`` is ``whole`` with some entries left out, in the same order."""
    rest = iter(whole)
    return all(entry in rest for entry in part)


def describe(items: Sequence[Any], limit: int = 6) -> str:
    """A short view of stored items by tag, for failure messages."""
    tags = [tag_of(item) for item in items]
    return f"{len(tags)} items: {tags[:limit]}{' ...' if len(tags) > limit else ''}"
