"""The PostgreSQL backend prunes exactly where ``pruning.cut_index`` says, batch by batch.

The rule itself is checked against a reference written from its specification in
``tests/test_pruning.py``; here the question is whether the SQL fast path, the late-call
bookkeeping and the full path together always keep ``history[cut_index(history, n):]``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sessions.backends.postgres import PostgresBackend
from agent_sessions.backends.postgres.batch import Batch
from agent_sessions.pruning import (
    Item,
    cut_index,
    is_user_message,
    late_call_index,
    outputs_needing_stored_calls,
    pairing,
)

from .helpers import append, query

Entry = Item | None
_ids = itertools.count()
DB_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def call(key: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": key, "name": "f", "arguments": "{}"}


def output(key: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": key, "output": "r"}


def item_from(token: object, position: int) -> dict[str, Any]:
    if isinstance(token, tuple):
        half, number = token
        key = f"k{number}"
        return {
            "call": call(key),
            "out": output(key),
            "req": {"type": "mcp_approval_request", "id": key, "name": "x", "arguments": "{}"},
            "resp": {"type": "mcp_approval_response", "approval_request_id": key, "approve": True},
            # An output that is also a user message (the full rule must then be used).
            "user_out": {"role": "user", **output(key)},
        }[half]
    return {
        "user": {"role": "user", "content": f"u{position}"},
        "assistant": {"type": "message", "role": "assistant", "content": f"a{position}"},
        "reasoning": {"type": "reasoning", "id": f"rs{position}", "summary": []},
        "hosted": {"type": "web_search_call", "id": f"ws{position}", "status": "completed"},
    }[str(token)]


TOKENS = st.one_of(
    st.tuples(st.sampled_from(["call", "out", "req", "resp", "user_out"]), st.integers(0, 3)),
    st.sampled_from(["user", "user", "assistant", "reasoning", "hosted"]),
)


def call_key(item: Entry) -> str | None:
    half = pairing(item)
    return half[1] if half is not None and half[0] else None


def expected_after(stored: list[Entry], batch: list[dict[str, Any]], n: int) -> list[Entry]:
    """The batch less outputs whose call is neither earlier in it nor stored, then the cut."""
    stored_calls = {half[1] for e in stored if (half := pairing(e)) is not None and half[0]}
    dropped = {
        position
        for key, positions in outputs_needing_stored_calls(batch).items()
        if key not in stored_calls
        for position in positions
    }
    history = stored + [item for position, item in enumerate(batch) if position not in dropped]
    return history[cut_index(history, n) :]


@DB_SETTINGS
@given(
    batches=st.lists(st.lists(TOKENS, min_size=1, max_size=4), min_size=1, max_size=12),
    n=st.integers(1, 6),
)
async def test_append_keeps_what_cut_index_keeps_batch_by_batch(
    backend: PostgresBackend, batches: list[list[object]], n: int
) -> None:
    session_id = f"s{next(_ids)}"
    position = itertools.count()
    expected: list[Entry] = []
    for tokens in batches:
        batch = [item_from(token, next(position)) for token in tokens]
        expected = expected_after(expected, batch, n)
        await append(backend, session_id, batch, max_items=n)
        stored = await backend.read_items(session_id, None)
        assert stored.items == expected, f"max_items={n}, after batch {batch}"


def test_a_batch_answering_a_call_after_a_user_message_says_so() -> None:
    late = [{"role": "user", "content": "u0"}, call("c1"), {"role": "user", "content": "u1"}]
    late.append(output("c1"))
    assert Batch.of(late, [json.dumps(i) for i in late]).answers_late


async def test_late_answers_in_one_or_two_batches_are_kept_whole(backend: PostgresBackend) -> None:
    late = [{"role": "user", "content": "u0"}, call("c1"), {"role": "user", "content": "u1"}]
    late.append(output("c1"))
    await append(backend, "one", late, max_items=2)
    await append(backend, "two", late[:2], max_items=2)
    await append(backend, "two", late[2:], max_items=2)
    assert (await backend.read_items("one", None)).items == late
    assert (await backend.read_items("two", None)).items == late


# --- prune_session over stored rows, corrupt ones included ----------------------------------

CORRUPT_TEXTS = ("{not json", "42", "[1, 2]", "null", '"just text"', "")


@DB_SETTINGS
@given(data=st.data())
async def test_prune_session_keeps_exactly_the_cut_index_suffix(
    backend: PostgresBackend, raw: psycopg.AsyncConnection[Any], data: st.DataObject
) -> None:
    tokens = data.draw(st.lists(TOKENS | st.just("corrupt"), max_size=16), label="tokens")
    items: list[Entry] = [
        None if token == "corrupt" else item_from(token, at) for at, token in enumerate(tokens)
    ]
    n = data.draw(st.integers(1, len(items) + 2), label="max_items")
    payloads = [
        json.dumps(item) if item is not None else data.draw(st.sampled_from(CORRUPT_TEXTS))
        for item in items
    ]
    session_id, neighbour = f"p{next(_ids)}", f"p{next(_ids)}-neighbour"
    await append(backend, neighbour, [{"role": "user", "content": "hi"}])
    await append(backend, session_id, [])
    # Rows as append_items writes them (seqs 1.., is_user, call_key), corrupt ones as another
    # program might; and the late-call state add_items keeps: none (0), or not known (NULL).
    late = late_call_index(items)
    rows = [
        (session_id, seq, payload, is_user_message(item), call_key(item))
        for seq, (payload, item) in enumerate(zip(payloads, items, strict=True), start=1)
    ]
    async with raw.transaction(), raw.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO agent_sessions_item "
            "(session_id, seq, message_data, is_user, call_key) VALUES (%s, %s, %s, %s, %s)",
            rows,
        )
        await cursor.execute(
            "UPDATE agent_sessions_session SET late_call_seq = %s, next_seq = %s "
            "WHERE session_id = %s",
            (0 if late is None else None, len(items) + 1, session_id),
        )

    deleted = await backend.prune_session(session_id, n)

    cut = cut_index(items, n)
    rows = await query(
        raw,
        "SELECT message_data FROM agent_sessions_item WHERE session_id = %s ORDER BY seq",
        (session_id,),
    )
    assert [row[0] for row in rows] == payloads[cut:], f"max_items={n}, items={items}"
    assert deleted == cut
    assert (await backend.read_items(neighbour, None)).items == [{"role": "user", "content": "hi"}]
    # What the next write relies on: 0, or the seq of the oldest kept call answered late;
    # a session left as it was keeps its state.
    state = await query(
        raw,
        "SELECT late_call_seq FROM agent_sessions_session WHERE session_id = %s",
        (session_id,),
    )
    kept_late = late_call_index(items[cut:])
    if len(items) <= n:
        assert state == [(0 if late is None else None,)]
    else:
        assert state == [(0 if kept_late is None else cut + kept_late + 1,)]
