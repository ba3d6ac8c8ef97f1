"""The pruning rule, checked against a brute-force reference written from its specification.

The reference below is written from this text, not from ``agent_sessions.pruning``:

    If the session holds more than N items, keep the longest suffix of length <= N that starts
    at a user message (``role == "user"``); if there is none, keep the suffix from the newest
    user message (the current turn stays whole, even past N); if the session has no user
    message at all, keep the longest suffix of length <= N that is safe to start at: it leaves
    no tool output (``*_output`` types, matched to calls by ``call_id``) without its call and no
    ``mcp_approval_response`` without its ``mcp_approval_request`` (match by
    ``approval_request_id`` == request ``id``, so parallel calls count), it drops no call whose
    output has not arrived yet (or the output would arrive orphaned), and it does not start
    right after a ``reasoning`` item; if no such suffix exists, keep everything. Corrupt
    entries (None) count toward length but are never a cut point.

Where the text leaves a reading open, the reference takes this one: a call and an output form
a pair when their keys match and the call comes first ("its call" is any earlier matching call
kept with it; "its output has arrived" means a matching output somewhere after the call). That
reading also settles duplicated keys (an output stored twice, a call id reused), which the
unstructured sequences below generate on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sessions import AgentSession, pruning
from agent_sessions.backends.sqlite import connection, schema, sql

Item = dict[str, Any]
Entry = Item | None

# --- item builders ----------------------------------------------------------------------------

TOOL_KINDS = ("function", "computer", "custom_tool", "shell", "apply_patch")


def user_msg(text: str, *, easy: bool = True) -> Item:
    if easy:
        return {"role": "user", "content": text}
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text: str) -> Item:
    return {
        "type": "message",
        "role": "assistant",
        "id": f"msg_{text}",
        "content": [{"type": "output_text", "text": text}],
    }


def system(text: str) -> Item:
    return {"role": "system", "content": text}


def reasoning(tag: str = "r") -> Item:
    return {"type": "reasoning", "id": f"rs_{tag}", "summary": []}


def call(call_id: str, kind: str = "function") -> Item:
    return {
        "type": f"{kind}_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": "lookup",
        "arguments": "{}",
    }


def output(call_id: str, kind: str = "function") -> Item:
    return {"type": f"{kind}_call_output", "call_id": call_id, "output": f"result {call_id}"}


def approval_request(request_id: str) -> Item:
    return {
        "type": "mcp_approval_request",
        "id": request_id,
        "server_label": "files",
        "name": "delete",
        "arguments": "{}",
    }


def approval_response(request_id: str, approve: bool = True) -> Item:
    return {
        "type": "mcp_approval_response",
        "approval_request_id": request_id,
        "approve": approve,
    }


def hosted(tag: str) -> Item:
    # Hosted tools run server-side: an id, no call_id, no separate output item.
    return {"type": "web_search_call", "id": f"ws_{tag}", "status": "completed"}


# --- the reference ----------------------------------------------------------------------------


def _is_user(entry: Entry) -> bool:
    return entry is not None and entry.get("role") == "user"


def _call_key(entry: Entry) -> tuple[str, str] | None:
    """The key of a tool call or approval request, else None."""
    if entry is None:
        return None
    kind = entry.get("type")
    if kind == "mcp_approval_request":
        return ("approval", entry["id"])
    if isinstance(kind, str) and not kind.endswith("_output") and "call_id" in entry:
        return ("call", entry["call_id"])
    return None


def _output_key(entry: Entry) -> tuple[str, str] | None:
    """The key of a tool output or approval response, else None."""
    if entry is None:
        return None
    kind = entry.get("type")
    if kind == "mcp_approval_response":
        return ("approval", entry["approval_request_id"])
    if isinstance(kind, str) and kind.endswith("_output"):
        ref = entry.get("call_id")
        if ref is None and kind == "local_shell_call_output":
            ref = entry.get("id")
        return None if ref is None else ("call", ref)  # no reference: pairs with nothing
    return None


def _pair(items: Sequence[Entry], call_at: int, output_at: int) -> bool:
    key = _call_key(items[call_at])
    return call_at < output_at and key is not None and key == _output_key(items[output_at])


def reference_safe_start(items: Sequence[Entry], start: int) -> bool:
    """Each condition of the spec checked directly on the kept and dropped parts."""
    total = len(items)
    if items[start] is None:
        return False
    before = items[start - 1] if start > 0 else None
    if before is not None and before.get("type") == "reasoning":
        return False
    for kept in range(start, total):
        if _output_key(items[kept]) is not None and not any(
            _pair(items, c, kept) for c in range(start, kept)
        ):
            return False  # an output or approval response kept without its call or request
    for dropped in range(start):
        if _call_key(items[dropped]) is not None and not any(
            _pair(items, dropped, o) for o in range(dropped + 1, total)
        ):
            return False  # a call dropped before its output arrived
    return True


def reference_safe_starts(items: Sequence[Entry]) -> set[int]:
    return {start for start in range(len(items)) if reference_safe_start(items, start)}


def reference_cuts_a_kept_outputs_call(items: Sequence[Entry], start: int) -> bool:
    """Whether some kept output has its call before ``start`` and none kept before it."""
    for output_at in range(start, len(items)):
        if _output_key(items[output_at]) is None:
            continue
        called_before = any(_pair(items, c, output_at) for c in range(start))
        called_in_kept = any(_pair(items, c, output_at) for c in range(start, output_at))
        if called_before and not called_in_kept:
            return True
    return False


def reference_cut(items: Sequence[Entry], n: int, safe: set[int] | None = None) -> int:
    total = len(items)
    if total <= n:
        return 0
    # A user message is a cut point unless starting there keeps an output whose call would
    # be cut away (an approval answered after the user moved on).
    users = [
        index
        for index, entry in enumerate(items)
        if _is_user(entry) and not reference_cuts_a_kept_outputs_call(items, index)
    ]
    fitting = [index for index in users if total - index <= n]
    if fitting:
        return min(fitting)
    if users:
        return max(users)
    if safe is None:
        safe = reference_safe_starts(items)
    candidates = [start for start in safe if total - start <= n]
    return min(candidates) if candidates else 0


def answered_after_user(items: Sequence[Entry]) -> bool:
    """Whether some output follows its call with a user message after the call (the output
    itself included: one with role "user" is a cut point that would orphan it)."""
    return any(
        _pair(items, c, o) and any(_is_user(items[u]) for u in range(c + 1, o + 1))
        for o in range(len(items))
        for c in range(o)
    )


def orphaned_outputs(items: Sequence[Entry]) -> list[int]:
    """Positions of outputs/responses with no matching call/request before them."""
    return [
        index
        for index, entry in enumerate(items)
        if _output_key(entry) is not None and not any(_pair(items, c, index) for c in range(index))
    ]


# --- strategies -------------------------------------------------------------------------------

few = st.sampled_from([0, 0, 1, 1, 2, 3])
often = st.sampled_from([True, True, True, False])
rarely = st.sampled_from([True, False, False, False, False])


@st.composite
def histories(draw: st.DrawFn, *, max_turns: int = 6) -> list[Entry]:
    """Realistic histories: turns of a user message, then model steps and tool round trips.

    Calls may be parallel (distinct call_ids), their outputs may come in any order or not at
    all (pending); approval requests may be answered or pending; a quarter of the histories
    have no user message at all; a few entries are corrupt (None), and now and then one item
    is stored twice. Call ids and approval ids are numbered separately, so ``call_id == "k1"``
    and ``id == "k1"`` often coexist and must not be matched with each other.
    """
    call_ids = (f"k{n}" for n in itertools.count())
    request_ids = (f"k{n}" for n in itertools.count())
    tags = (str(n) for n in itertools.count())
    no_user = draw(st.integers(0, 3)) == 0
    items: list[Entry] = []
    if draw(rarely):
        items.append(system("be brief"))
    for turn in range(draw(st.integers(0 if no_user else 1, max_turns))):
        if not no_user:
            items.append(user_msg(f"question {turn}", easy=draw(often)))
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                items.append(reasoning(next(tags)))
            step = draw(st.sampled_from(["tools", "tools", "message", "approval", "hosted"]))
            if step == "message":
                items.append(assistant(next(tags)))
            elif step == "hosted":
                items.append(hosted(next(tags)))
            elif step == "approval":
                request = next(request_ids)
                items.append(approval_request(request))
                if draw(rarely):
                    items.append(assistant(next(tags)))
                if draw(often):
                    items.append(approval_response(request, approve=draw(st.booleans())))
            else:
                calls = [
                    (next(call_ids), draw(st.sampled_from(TOOL_KINDS)))
                    for _ in range(draw(st.integers(1, 3)))
                ]
                items.extend(call(call_id, kind) for call_id, kind in calls)
                if draw(rarely):
                    items.append(hosted(next(tags)))
                answered = [pair for pair in calls if draw(often)]
                for call_id, kind in draw(st.permutations(answered)):
                    items.append(output(call_id, kind))
        if draw(often):
            items.append(assistant(next(tags)))
    if items and draw(rarely):
        # A row stored twice (an app retrying a write that had in fact committed).
        position = draw(st.integers(0, len(items) - 1))
        items.insert(draw(st.integers(position, len(items))), items[position])
    for position in draw(st.lists(st.integers(0, len(items)), max_size=2)):
        if draw(rarely):
            items.insert(position, None)
    return items


@st.composite
def soups(draw: st.DrawFn) -> list[Entry]:
    """Unstructured sequences: halves of pairs in any order (outputs before calls, orphans,
    pending calls), reasoning anywhere, corrupt entries; in half of them a key may repeat."""
    tokens = draw(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(["call", "out", "req", "resp"]), st.integers(0, 4)),
                st.sampled_from(["user", "assistant", "reasoning", "hosted", "corrupt"]),
            ),
            max_size=18,
        )
    )
    if draw(st.integers(0, 2)) > 0:
        tokens = [token for token in tokens if token != "user"]  # mostly the no-user case
    unique_keys = draw(st.booleans())
    seen: set[object] = set()
    items: list[Entry] = []
    for position, token in enumerate(tokens):
        if isinstance(token, tuple):
            if unique_keys and token in seen:
                continue
            seen.add(token)
            half, number = token
            key = f"k{number}"
            items.append(
                {
                    "call": call(key),
                    "out": output(key),
                    "req": approval_request(key),
                    "resp": approval_response(key),
                }[half]
            )
        else:
            items.append(
                {
                    "user": user_msg(str(position)),
                    "assistant": assistant(str(position)),
                    "reasoning": reasoning(str(position)),
                    "hosted": hosted(str(position)),
                    "corrupt": None,
                }[token]
            )
    return items


# --- properties of cut_index ------------------------------------------------------------------


def check_against_reference(items: list[Entry]) -> None:
    safe = reference_safe_starts(items)
    for n in range(1, len(items) + 3):
        expected = reference_cut(items, n, safe)
        actual = pruning.cut_index(items, n)
        assert actual == expected, (
            f"max_items={n}, len={len(items)}: cut_index={actual}, reference={expected}, "
            f"safe starts={sorted(safe)}, items={items}"
        )


@settings(max_examples=200, deadline=None)
@given(histories())
def test_cut_index_matches_the_reference_on_realistic_histories(items: list[Entry]) -> None:
    check_against_reference(items)


@settings(max_examples=200, deadline=None)
@given(soups())
def test_cut_index_matches_the_reference_on_unstructured_sequences(items: list[Entry]) -> None:
    check_against_reference(items)


@settings(max_examples=200, deadline=None)
@given(st.one_of(histories(), soups()))
def test_is_safe_start_matches_the_reference(items: list[Entry]) -> None:
    # In the library's sense a start is also only safe if it is an index into items.
    for start in range(-1, len(items) + 1):
        expected = 0 <= start < len(items) and reference_safe_start(items, start)
        # Private: the safety predicate behind rule 3 of cut_index.
        safe = 0 <= start < len(items) and not pruning._unsafe_starts(items)[start]
        assert safe == expected, (
            f"start={start}: safe={not expected}, reference={expected}, items={items}"
        )


@settings(max_examples=200, deadline=None)
@given(histories())
def test_invariants_checked_without_the_reference(items: list[Entry]) -> None:
    total = len(items)
    clean = not orphaned_outputs(items)
    for n in range(1, total + 3):
        cut = pruning.cut_index(items, n)
        kept = items[cut:]
        assert 0 <= cut <= max(total - 1, 0), f"n={n}: cut {cut} outside a history of {total}"
        if total:
            assert kept, f"n={n}: a history of {total} items was pruned to nothing"
        if total <= n:
            assert cut == 0, f"n={n}: {total} items fit, yet the cut is at {cut}"
            continue
        if cut > 0:
            assert items[cut] is not None, f"n={n}: cut at corrupt entry {cut}"
        user_starts = [
            i
            for i, entry in enumerate(items)
            if _is_user(entry) and not reference_cuts_a_kept_outputs_call(items, i)
        ]
        if any(total - i <= n for i in user_starts):
            assert len(kept) <= n, f"n={n}: kept {len(kept)} although a user start fits"
            assert _is_user(items[cut]), f"n={n}: cut at {cut}, not at a user message"
        elif user_starts:
            assert cut == user_starts[-1], (
                f"n={n}: the current turn starts at {user_starts[-1]}, cut at {cut}"
            )
        if clean:  # even when a call and its output straddle a user message
            assert not orphaned_outputs(kept), (
                f"n={n}: cut at {cut} orphans outputs at {orphaned_outputs(kept)} of the kept "
                f"part; items={items}"
            )
        # Pruning what pruning kept changes nothing more.
        assert pruning.cut_index(kept, n) == 0, f"n={n}: a second prune cut the kept part again"


# --- sql.prune against cut_index on a real file ---------------------------------------

CORRUPT_TEXTS = ("{not json", "42", "[1, 2]", "null", '"just text"', "")
_session_numbers = itertools.count()


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    connection = schema.connect(tmp_path_factory.mktemp("prune") / "sessions.db")
    yield connection
    connection.close()


def stored_texts(connection: sqlite3.Connection, session_id: str) -> list[str]:
    rows = connection.execute(sql.SELECT_ALL_ROWS, (session_id,))
    return [row[1].decode() if isinstance(row[1], bytes) else row[1] for row in rows]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_storage_prune_keeps_exactly_the_cut_index_suffix(
    conn: sqlite3.Connection, data: st.DataObject
) -> None:
    items = data.draw(st.one_of(histories(), soups()), label="items")
    n = data.draw(st.integers(1, len(items) + 2), label="max_items")
    payloads = [
        json.dumps(entry) if entry is not None else data.draw(st.sampled_from(CORRUPT_TEXTS))
        for entry in items
    ]
    neighbour_every = data.draw(st.integers(0, 3), label="neighbour row every")
    session_id = f"user_prop_conv_{next(_session_numbers)}"
    neighbour = f"{session_id}-neighbour"
    with connection.write_transaction(conn):
        for sid in (session_id, neighbour):
            conn.execute(sql.UPSERT_SESSION, (sid, None, None, 1.0, 1.0, None))
        for position, payload in enumerate(payloads):
            conn.execute(sql.INSERT_ROW, (session_id, payload))
            if neighbour_every and position % neighbour_every == 0:
                conn.execute(sql.INSERT_ROW, (neighbour, json.dumps(assistant(str(position)))))
        # The state add_items keeps: known to hold no late answer (prune may take its fast
        # path), or not known.
        known_none = sql.LATE_CALL_NONE if not answered_after_user(items) else None
        conn.execute(sql.SET_LATE_CALL_ROW, (known_none, session_id))
    neighbour_before = stored_texts(conn, neighbour)

    with connection.write_transaction(conn):
        deleted = sql.prune(conn, session_id, n)

    cut = pruning.cut_index(items, n)
    survivors = stored_texts(conn, session_id)
    assert survivors == payloads[cut:], (
        f"max_items={n}: kept {len(survivors)} rows, cut_index keeps {len(payloads) - cut} "
        f"(cut at {cut} of {len(payloads)}); items={items}"
    )
    assert deleted == cut, f"prune reported {deleted} rows deleted, cut_index drops {cut}"
    assert stored_texts(conn, neighbour) == neighbour_before, "another session's rows changed"


# --- AgentSession.add_items, batch by batch, against the reference -------------------------

BATCH_TOKENS = st.one_of(
    # "user_out": an output that also has role "user", so it is both kinds at once.
    st.tuples(st.sampled_from(["call", "out", "req", "resp", "user_out"]), st.integers(0, 3)),
    st.sampled_from(["user", "user", "assistant", "reasoning", "hosted"]),
)


def _from_token(token: object, position: int) -> Item:
    if isinstance(token, tuple):
        half, number = token
        if half == "user_out":
            return {"role": "user", **output(f"k{number}")}
        builders = {"call": call, "out": output, "req": approval_request, "resp": approval_response}
        return builders[half](f"k{number}")
    return {
        "user": user_msg(f"u{position}"),
        "assistant": assistant(str(position)),
        "reasoning": reasoning(str(position)),
        "hosted": hosted(str(position)),
    }[str(token)]


def reference_append(stored: list[Entry], batch: list[Item], n: int) -> list[Entry]:
    """What ``add_items`` must leave: the batch without outputs whose call is neither earlier in
    the batch nor stored (they would be orphans), then the reference cut."""
    stored_calls = {_call_key(entry) for entry in stored} - {None}
    kept_batch: list[Entry] = []
    for position, item in enumerate(batch):
        key = _output_key(item)
        called = key in stored_calls or any(_call_key(e) == key for e in batch[:position])
        if key is None or called:
            kept_batch.append(item)
    history = stored + kept_batch
    return history[reference_cut(history, n) :]


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(BATCH_TOKENS, min_size=1, max_size=4), min_size=1, max_size=12),
    n=st.integers(1, 6),
)
def test_add_items_keeps_what_the_reference_keeps_batch_by_batch(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[object]], n: int
) -> None:
    # The fast path of sql.prune (cut at the first user message in the window) is only
    # valid while no call is answered after a later user message; batches here put user
    # messages between calls and outputs, within one batch and across batches.
    db_path = tmp_path_factory.getbasetemp() / "batches.db"
    expected: list[Entry] = []
    position = itertools.count()

    async def replay() -> list[Entry]:
        with AgentSession("u", f"c{next(_session_numbers)}", db_path=db_path, max_messages=n) as s:
            for tokens in batches:
                batch = [_from_token(token, next(position)) for token in tokens]
                nonlocal expected
                expected = reference_append(expected, batch, n)
                await s.add_items(batch)
                stored: list[Entry] = list(await s.get_items())
                assert stored == expected, f"max_messages={n}, after batch {batch}"
            return stored

    asyncio.run(replay())


def test_a_late_answer_within_one_batch_is_not_cut_from_its_call(tmp_path: Path) -> None:
    # Regression: the user message between the call and its output arrived in the same batch
    # as the output, so nothing told prune() to look past the first user message.
    async def write(batches: list[list[Item]]) -> list[Any]:
        with AgentSession("u", "c", db_path=tmp_path / f"{len(batches)}.db", max_messages=2) as s:
            for batch in batches:
                await s.add_items(batch)
            return await s.get_items()

    late = [user_msg("u0"), call("c1"), user_msg("u1"), output("c1")]
    assert asyncio.run(write([late])) == late
    assert asyncio.run(write([late[:2], late[2:]])) == late


def test_a_late_answer_written_by_a_plain_sqlite_session_is_not_cut(tmp_path: Path) -> None:
    from agents import SQLiteSession

    db_path = tmp_path / "mixed.db"

    async def scenario() -> list[Any]:
        with AgentSession("u", "c", db_path=db_path, max_messages=3) as ours:
            for batch in ([user_msg("u0")], [assistant("a0")], [user_msg("u1")], [call("c1")]):
                await ours.add_items(batch)  # the 4th write prunes: the session is checked
            assert await ours.get_items() == [user_msg("u1"), call("c1")]
            sdk = SQLiteSession(ours.session_id, db_path)
            try:
                await sdk.add_items([user_msg("u2"), output("c1")])  # bypasses our bookkeeping
            finally:
                sdk.close()
            await ours.add_items([assistant("a2")])
            return await ours.get_items()

    stored = asyncio.run(scenario())
    assert stored == [user_msg("u1"), call("c1"), user_msg("u2"), output("c1"), assistant("a2")]


# --- the rule in examples -------------------------------------------------------------------


def kept(items: list[Entry], n: int) -> list[Entry]:
    return items[pruning.cut_index(items, n) :]


def test_cuts_at_the_oldest_user_message_that_fits() -> None:
    items: list[Entry] = [
        user_msg("q1"),
        assistant("a1"),
        user_msg("q2"),
        assistant("a2"),
        user_msg("q3"),
        assistant("a3"),
    ]
    assert kept(items, 5) == items[2:]  # index 1 is an assistant reply: not a place to cut
    assert kept(items, 4) == items[2:]
    assert kept(items, 6) == items


def test_current_turn_stays_whole_even_past_the_limit() -> None:
    items: list[Entry] = [
        user_msg("q1"),
        assistant("a1"),
        user_msg("q2"),
        call("c1"),
        output("c1"),
        call("c2"),
        output("c2"),
        assistant("a2"),
    ]
    assert kept(items, 3) == items[2:], "the newest turn (6 items) is kept whole with max 3"


def test_tool_call_pair_is_never_split_without_user_messages() -> None:
    items: list[Entry] = [assistant("a"), call("c1"), output("c1"), assistant("b")]
    assert kept(items, 3) == items[1:]  # call and output together
    assert kept(items, 2) == [assistant("b")]  # starting at the output would orphan it


def test_parallel_calls_answered_out_of_order_stay_together() -> None:
    items: list[Entry] = [
        assistant("a"),
        call("c1"),
        call("c2"),
        output("c2"),
        output("c1"),
        assistant("b"),
    ]
    for n in (4, 3, 2):
        assert kept(items, n) == [assistant("b")], f"max_items={n}"
    assert kept(items, 5) == items[1:]


def test_parallel_approvals_are_matched_by_request_id() -> None:
    items: list[Entry] = [
        approval_request("r1"),
        approval_request("r2"),
        approval_response("r2"),
        approval_response("r1", approve=False),
        assistant("done"),
    ]
    # Starting at the second request keeps r2's pair but r1's response without its request.
    assert kept(items, 4) == [assistant("done")]
    assert kept(items, 5) == items


def test_reasoning_is_kept_with_the_item_it_precedes() -> None:
    items: list[Entry] = [assistant("a"), reasoning(), call("c1"), output("c1"), assistant("b")]
    assert kept(items, 4) == items[1:], "reasoning, call, output, answer"
    assert kept(items, 3) == [assistant("b")], "never the call without its reasoning"


def test_session_without_user_messages_is_cut_at_a_safe_start() -> None:
    items: list[Entry] = [system("s"), assistant("a"), hosted("w"), assistant("b")]
    assert kept(items, 2) == items[2:]
    assert kept(items, 1) == [assistant("b")]


def test_pending_call_or_approval_keeps_everything() -> None:
    pending_call: list[Entry] = [assistant("checking"), call("c1"), assistant("need approval")]
    assert kept(pending_call, 1) == pending_call, "dropping c1 would orphan its later output"
    pending_approval: list[Entry] = [approval_request("r1"), assistant("approve?")]
    assert kept(pending_approval, 1) == pending_approval
    answered = [*pending_approval, approval_response("r1"), assistant("deleted")]
    assert kept(answered, 2) == [assistant("deleted")]


def test_user_message_is_a_cut_point_even_after_a_pending_call() -> None:
    # Rule 1 does not look at pairs: a call left pending before the user moved on is dropped.
    items: list[Entry] = [user_msg("q1"), call("c1"), user_msg("q2"), assistant("a2")]
    assert kept(items, 2) == items[2:]


def test_corrupt_entries_count_but_are_never_a_cut_point() -> None:
    items: list[Entry] = [None, assistant("a"), None, assistant("b")]
    assert kept(items, 2) == [assistant("b")]
    assert kept(items, 3) == items[1:]
    with_user: list[Entry] = [user_msg("q1"), None, user_msg("q2"), None, assistant("a")]
    assert kept(with_user, 3) == with_user[2:]
    assert kept([None, None, None], 1) == [None, None, None], "no safe start: keep everything"


def test_max_items_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        pruning.cut_index([user_msg("q")], 0)


def test_duplicated_tool_output_is_never_kept_without_its_call() -> None:
    # Regression: the call used to pair with its first output only, so a cut between the
    # two outputs kept the second one alone.
    items: list[Entry] = [assistant("a"), call("c1"), output("c1"), output("c1"), assistant("b")]
    result = kept(items, 2)
    assert not orphaned_outputs(result), f"kept {result}"
    assert result == [assistant("b")]
    reused: list[Entry] = [assistant("a"), call("c1"), output("c1"), call("c1"), output("c1")]
    assert kept(reused, 2) == reused[3:], "the reused id pairs with the nearer call"


def test_storage_prune_on_a_fresh_file_matches_the_examples(tmp_path: Path) -> None:
    items: list[Entry] = [assistant("a"), reasoning(), call("c1"), output("c1"), assistant("b")]
    conn = schema.connect(tmp_path / "one.db")
    try:
        with connection.write_transaction(conn):
            conn.executemany(sql.INSERT_ROW, [("s", json.dumps(item)) for item in items])
        with connection.write_transaction(conn):
            assert sql.prune(conn, "s", 3) == 4
        assert stored_texts(conn, "s") == [json.dumps(assistant("b"))]
    finally:
        conn.close()
