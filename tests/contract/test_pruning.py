"""Pruning on every write keeps the history valid model input, on every backend.

The property: whatever batches arrive, after each ``add_items`` the stored history is exactly
what ``agent_sessions.pruning.cut_index`` keeps of everything written so far (less outputs
whose call is neither earlier in their batch nor stored), and it is valid on its own terms:
no tool output or approval response without its call before it, no start right after a
reasoning item unless at a user message, never empty.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sessions import get_agent_session
from agent_sessions.pruning import cut_index, is_user_message, outputs_needing_stored_calls, pairing
from tests.items import assistant, call, output, user

Item = dict[str, Any]
_conversations = itertools.count()


def item_from(token: object, position: int) -> Item:
    if isinstance(token, tuple):
        half, number = token
        key = f"k{number}"
        return {
            "call": call(key),
            "out": output(key),
            "req": {"type": "mcp_approval_request", "id": key, "name": "x", "arguments": "{}"},
            "resp": {"type": "mcp_approval_response", "approval_request_id": key, "approve": True},
            # An output that is also a user message: only the full rule handles it.
            "user_out": {"role": "user", **output(key)},
        }[half]
    return {
        "user": user(f"u{position}"),
        "assistant": assistant(f"a{position}"),
        "reasoning": {"type": "reasoning", "id": f"rs{position}", "summary": []},
        "hosted": {"type": "web_search_call", "id": f"ws{position}", "status": "completed"},
    }[str(token)]


TOKENS = st.one_of(
    st.tuples(st.sampled_from(["call", "out", "req", "resp", "user_out"]), st.integers(0, 3)),
    st.sampled_from(["user", "user", "assistant", "reasoning", "hosted"]),
)


def written(stored: list[Item], batch: list[Item]) -> list[Item]:
    """The history once ``batch`` is added: outputs that would be orphans are left out."""
    stored_calls = {half[1] for item in stored if (half := pairing(item)) and half[0]}
    dropped = {
        position
        for key, positions in outputs_needing_stored_calls(batch).items()
        if key not in stored_calls
        for position in positions
    }
    return stored + [item for position, item in enumerate(batch) if position not in dropped]


def orphaned(items: list[Item]) -> str | None:
    """The key of the first tool output or approval response without its call before it."""
    called: set[str] = set()
    for item in items:
        half = pairing(item)
        if half is not None:
            is_call, key = half
            if is_call:
                called.add(key)
            elif key not in called:
                return key
    return None


def assert_valid(history: list[Item], start: int, n: int) -> None:
    """``history[start:]`` is valid model input, and bounded wherever the rule could bound it."""
    kept = history[start:]
    assert kept or not history, "pruning emptied the session"
    assert orphaned(kept) is None, f"an output kept without its call: {kept}"
    if start > 0 and not is_user_message(kept[0]):
        assert history[start - 1].get("type") != "reasoning", "cut right after a reasoning item"
    if len(kept) > n and start > 0:
        # Longer than max_messages: only when no later turn could start a valid history.
        assert is_user_message(kept[0]), kept
        later = [p for p in range(start + 1, len(history)) if is_user_message(history[p])]
        for turn in later:
            assert orphaned(history[turn:]) is not None, f"could have cut at {turn}: {history}"


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(st.lists(TOKENS, min_size=1, max_size=4), min_size=1, max_size=8),
    n=st.integers(1, 6),
)
async def test_every_write_keeps_what_cut_index_keeps_and_stays_valid(
    target: str, batches: list[list[object]], n: int
) -> None:
    position = itertools.count()
    expected: list[Item] = []
    with get_agent_session(
        "u", f"c{next(_conversations)}", db_path=target, max_messages=n
    ) as session:
        for tokens in batches:
            batch = [item_from(token, next(position)) for token in tokens]
            history = written(expected, batch)
            start = cut_index(history, n)
            expected = history[start:]
            await session.add_items(batch)  # type: ignore[arg-type]
            stored = await session.get_items()
            assert stored == expected, f"max_messages={n}, after batch {batch}"
            assert_valid(history, start, n)


# --- the documented examples (README, "The pruning rule") -----------------------------------


def tool_turn(n: int) -> list[Item]:
    return [user(f"q{n}"), call(f"c{n}"), output(f"c{n}"), assistant(f"a{n}")]


REASONING = {"type": "reasoning", "id": "rs", "summary": []}
NO_USER = [
    *[assistant(f"a{n}") for n in range(4)],
    call("k"),  # index 4
    output("k"),  # index 5
    *[assistant(f"b{n}") for n in range(5)],
]
EXAMPLES: list[tuple[str, list[Item], int, list[Item]]] = [
    # 1. the longest run of newest whole turns that fits
    ("whole turns", [i for n in range(10) for i in tool_turn(n)], 6, tool_turn(9)),
    ("two turns fit", [i for n in range(3) for i in tool_turn(n)], 8, tool_turn(1) + tool_turn(2)),
    # 2. the newest turn longer than max_messages is kept whole
    (
        "long turn",
        [user("old"), assistant("x"), user("q"), *[assistant(f"a{n}") for n in range(10)]],
        6,
        [user("q"), *[assistant(f"a{n}") for n in range(10)]],
    ),
    # 3. no user message: the longest run from a safe point (index 5 would orphan k's output)
    ("no user", NO_USER, 6, NO_USER[6:]),
    ("reasoning stays with its call", [assistant("a"), REASONING, *tool_turn(1)[1:]], 4, None),
    ("reasoning not split", [assistant("a"), REASONING, *tool_turn(1)[1:]], 3, [assistant("a1")]),
    # 4. no safe point: nothing is cut (a pending call would lose its output)
    ("pending call", [assistant("checking"), call("p"), assistant("approve?")], 1, None),
]


async def test_the_documented_examples(target: str) -> None:
    for number, (name, items, n, kept) in enumerate(EXAMPLES):
        with get_agent_session("u", f"example{number}", db_path=target, max_messages=n) as s:
            await s.add_items(items)  # type: ignore[arg-type]
            stored = await s.get_items()
        wanted = items[1:] if name.startswith("reasoning stays") else (kept or items)
        assert stored == wanted, name
