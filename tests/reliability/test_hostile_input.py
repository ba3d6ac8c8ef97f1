"""Hostile input (issue 5, item 5): ids, item payloads and CLI arguments, property-based.

Every input either works exactly (its own session, its items back unchanged) or is refused
with the library's own error before anything is written; SQL is never executed from data.
The ``test_bug_*`` tests further down pin the bugs this battery found (all fixed since).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import closing, redirect_stderr, redirect_stdout
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent_sessions import (
    AgentSessionsError,
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidItemError,
    SessionManager,
    SessionNotFoundError,
    StorageError,
    get_session_id,
)
from agent_sessions import cli as cli_module
from agent_sessions.codec import MAX_ITEM_DEPTH
from agent_sessions.ids import MAX_ID_LENGTH
from agent_sessions.pruning import pairing
from agent_sessions.session import AgentSession
from tests.conftest import FakeClock

CONSOLE_SCRIPT = Path(sys.executable).with_name("agent-sessions")

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,  # the working directory is tmp_path: a database there would be lost anyway
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_PROPERTY = settings(PROPERTY, max_examples=1500)

SESSION_COLUMNS = {
    "session_id",
    "created_at",
    "updated_at",
    "user_id",
    "conversation_id",
    "created_ts",
    "last_activity_ts",
}
MESSAGE_COLUMNS = {"id", "session_id", "message_data", "created_at"}


# --- helpers --------------------------------------------------------------------------------


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def schema(db: Path) -> list[tuple[Any, ...]]:
    """Every table, index and trigger, with its SQL: an injected statement would show here."""
    return query(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def columns(db: Path, table: str) -> set[str]:
    return {row[1] for row in query(db, f'PRAGMA table_info("{table}")')}


def snapshot(db: Path) -> tuple[list[Any], list[Any]]:
    return (
        query(db, "SELECT * FROM agent_sessions ORDER BY session_id"),
        query(db, "SELECT * FROM agent_messages ORDER BY id"),
    )


def session_count(db: Path) -> int:
    return int(query(db, "SELECT COUNT(*) FROM agent_sessions")[0][0])


def check_schema_intact(db: Path, expected: list[tuple[Any, ...]]) -> None:
    assert schema(db) == expected, "sqlite_master changed: SQL ran from an input"
    assert columns(db, "agent_sessions") >= SESSION_COLUMNS, columns(db, "agent_sessions")
    assert columns(db, "agent_messages") >= MESSAGE_COLUMNS, columns(db, "agent_messages")
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def documented_valid_id(value: object) -> bool:
    """README: a uuid.UUID, or a printable, non-blank string of at most 128 characters."""
    if isinstance(value, uuid.UUID):
        return True
    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= MAX_ID_LENGTH
        and value.isprintable()
    )


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def same(a: object, b: object) -> bool:
    """Strict equality: types, key order, and the sign of zero all count (True != 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def depth(value: object) -> int:
    """Nesting levels of dicts and lists; a flat dict is 1 (how MAX_ITEM_DEPTH counts)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def as_json(item: object) -> str | None:
    """The JSON the item should be stored as, or ``None`` if it must be refused."""
    if not isinstance(item, dict):
        return None
    try:
        text = json.dumps(item, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if depth(item) <= MAX_ITEM_DEPTH else None


def nested(levels: int, kind: str = "dict") -> dict[str, Any]:
    """A dict whose nesting is exactly ``levels`` deep (inner levels dicts or lists)."""
    inner: Any = {"leaf": 1} if kind == "dict" else [1]
    for _ in range(levels - 2):
        inner = {"k": inner} if kind == "dict" else [inner]
    return {"top": inner} if levels > 1 else {"leaf": 1}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- strategies -----------------------------------------------------------------------------

SURROGATE = st.characters(categories=["Cs"])
ANY_CHAR = st.one_of(st.characters(exclude_categories=()), SURROGATE)
FRAGMENTS = [
    "_conv_",
    "_",
    "%",
    "%5F",
    "%25",
    "%%",
    "user_",
    "_conv_user_",
    "'; DROP TABLE agent_sessions; --",
    '" OR 1=1 --',
    "'",
    '"',
    "\\",
    "\\'",
    "?",
    ":name",
    "$1",
    "NULL",
    "*",
    "/",
    "..",
    "\x00",
    "\n",
    "\r",
    "\t",
    "\x1b",
    "\x7f",
    "\x85",
    "é",
    "e\u0301",
    "\u0301",
    "\u0301\u0302\u0303",
    "\U0001f600",
    "\U0001f469\u200d\U0001f4bb",
    "\U00010000",
    "\U0010fffd",
    "\u200b",
    "\u202e",
    "\ufeff",
    "\u00a0",
    "\u3000",
    " ",
    "a",
    "A",
    "0",
    "-",
    ".",
    "@",
    "+",
    "\ud800",
    "\udfff",
    "\udcff",
]
SPECIAL_IDS = [
    "a_conv_b",
    "b_conv_c",
    "a",
    "b",
    "c",
    "user_a_conv_b",
    "_conv_",
    "_",
    "%",
    "%5F",
    "%5Fconv%5F",
    "'; DROP TABLE agent_sessions; --",
    "'); DELETE FROM agent_messages; --",
    "Robert'); DROP TABLE agent_messages;--",
    "x" * MAX_ID_LENGTH,
    "x" * (MAX_ID_LENGTH + 1),
    "\U0001f600" * MAX_ID_LENGTH,
    "\U0001f600" * (MAX_ID_LENGTH + 1),
    "e\u0301" * (MAX_ID_LENGTH // 2),
    "é",
    "e\u0301",
    " ",
    "",
    "\t",
    "\x00",
    "\ud800",
    "a\udfffb",
]
ID_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=12),
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3), SURROGATE),
        min_size=1,
        max_size=8,
    ).map("".join),
    st.builds(
        lambda ch, n: ch * n,
        st.sampled_from(["a", "é", "\U0001f600", "_", "%", "'"]),
        st.sampled_from([1, 64, 127, 128, 129, 500]),
    ),
    st.text(min_size=100, max_size=200),
    st.sampled_from(SPECIAL_IDS),
)
# Mostly-valid ids too, so that most examples write to several sessions.
PRINTABLE_ID = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from([f for f in FRAGMENTS if f.isprintable() and f.strip()]),
            st.text(st.characters(categories=["L", "M", "N", "P", "S"]), max_size=3),
        ),
        min_size=1,
        max_size=8,
    ).map("".join),
    st.text(st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), min_size=1, max_size=140),
)
IDENTIFIER = st.one_of(ID_TEXT, PRINTABLE_ID, PRINTABLE_ID, st.uuids())

FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 0.0, 1e308, -1e308, 5e-324, 1.7976931348623157e308, math.pi]),
)
INTEGERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**200), max_value=2**200),
)
JSON_TEXT = st.text(ANY_CHAR, max_size=20)
JSON_LEAF = st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, JSON_TEXT)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(JSON_TEXT, children, max_size=4),
    ),
    max_leaves=25,
)


class Opaque:
    """A custom object json cannot serialise."""

    def __repr__(self) -> str:
        return "Opaque()"


def circular_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {"role": "user"}
    loop["self"] = loop
    return loop


def circular_list() -> dict[str, Any]:
    items: list[Any] = [1]
    items.append(items)
    return {"content": items}


UNSERIALISABLE = st.one_of(
    st.sampled_from(
        [
            {1, 2},
            frozenset({"a"}),
            b"bytes",
            bytearray(b"x"),
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            dt.date(2026, 1, 1),
            Decimal("1.1"),
            complex(1, 2),
            Opaque(),
            object,
            float("nan"),
            float("inf"),
            float("-inf"),
            10**5000,
        ]
    ),
    st.builds(Opaque),
)
GOOD_ITEM = st.one_of(
    st.dictionaries(JSON_TEXT, JSON_VALUE, max_size=5),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": JSON_VALUE}),
    # Non-str keys: json turns them into strings (tuples would be refused).
    st.dictionaries(
        st.one_of(st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False)),
        JSON_LEAF,
        max_size=3,
    ),
)
BAD_ITEM = st.one_of(
    st.builds(lambda base, bad: {**base, "bad": bad}, GOOD_ITEM, UNSERIALISABLE),
    st.builds(lambda bad: {"content": [{"type": "text", "value": [bad]}]}, UNSERIALISABLE),
    st.builds(lambda value: {(1, "tuple key"): value}, JSON_LEAF),
    st.builds(circular_dict),
    st.builds(circular_list),
    st.one_of(st.lists(JSON_LEAF, max_size=3), JSON_TEXT, st.none(), INTEGERS, st.tuples()),
    st.builds(nested, st.integers(MAX_ITEM_DEPTH - 1, MAX_ITEM_DEPTH + 2), st.just("dict")),
    st.builds(nested, st.integers(MAX_ITEM_DEPTH - 1, MAX_ITEM_DEPTH + 2), st.just("list")),
)
ITEM = st.one_of(GOOD_ITEM, GOOD_ITEM, GOOD_ITEM, BAD_ITEM)


# --- ids ------------------------------------------------------------------------------------


def _id_isolation(tmp_path: Path, prop: settings) -> None:
    db = tmp_path / "ids.db"
    seed = "seed"
    with AgentSession(seed, seed, db_path=db, max_messages=10**6) as session:
        run(session.add_items([{"role": "user", "content": "seed"}]))
    expected_schema = schema(db)
    written: dict[tuple[str, str], list[dict[str, Any]]] = {(seed, seed): []}
    written[(seed, seed)].append({"role": "user", "content": "seed"})
    owner_of: dict[str, tuple[str, str]] = {get_session_id(seed, seed): (seed, seed)}
    figures: Counter[str] = Counter()

    async def check(pairs: list[tuple[Any, Any]]) -> None:
        touched: dict[tuple[str, str], tuple[Any, Any]] = {}
        for user, conversation in pairs:
            figures["pairs"] += 1
            valid = documented_valid_id(user) and documented_valid_id(conversation)
            before = session_count(db)
            try:
                session = AgentSession(user, conversation, db_path=db, max_messages=10**6)
            except InvalidIdentifierError:
                figures["rejected"] += 1
                assert not valid, f"valid pair {user!r}/{conversation!r} rejected ({figures})"
                assert session_count(db) == before, "a rejected pair created a session"
                with pytest.raises(InvalidIdentifierError):
                    get_session_id(user, conversation)
                continue
            assert valid, f"pair {user!r}/{conversation!r} accepted against the rule"
            with session:
                key = (str(user), str(conversation))
                sid = session.session_id
                assert sid == get_session_id(user, conversation)
                assert owner_of.setdefault(sid, key) == key, (
                    f"COLLISION: {key!r} and {owner_of[sid]!r} share session {sid!r} ({figures})"
                )
                marker = {"role": "user", "content": f"marker {figures['accepted']} {key!r}"}
                await session.add_items([marker])  # type: ignore[list-item]
                written.setdefault(key, []).append(marker)
                touched[key] = (user, conversation)
                figures["accepted"] += 1
        for key, (user, conversation) in touched.items():
            with AgentSession(user, conversation, db_path=db, max_messages=10**6) as again:
                got = await again.get_items()
                assert same(got, written[key]), f"{key!r} read {got!r}, wrote {written[key]!r}"
        async with SessionManager(db, max_messages=10**6, retention_days=7) as manager:
            for key, (user, conversation) in touched.items():
                sid = get_session_id(user, conversation)
                listed = {s.session_id: s for s in await manager.list_sessions(user, limit=10**4)}
                assert sid in listed, f"list_sessions({user!r}) misses {sid!r}"
                stats = listed[sid]
                assert (stats.user_id, stats.conversation_id) == key, stats
                assert stats.message_count == len(written[key]), stats
                assert all(s.user_id == key[0] for s in listed.values()), "another user listed"
        check_schema_intact(db, expected_schema)

    @prop
    @given(pairs=st.lists(st.tuples(IDENTIFIER, IDENTIFIER), min_size=1, max_size=8))
    @example(pairs=[("a_conv_b", "c"), ("a", "b_conv_c"), ("a", "b"), ("a_conv_b", "c")])
    @example(pairs=[("_", "_conv_"), ("_conv_", "_"), ("%5F", "_"), ("_", "%5F"), ("%", "%25")])
    @example(pairs=[("'; DROP TABLE agent_sessions; --", "x"), ("e\u0301", "é"), ("é", "é")])
    @example(pairs=[("x" * MAX_ID_LENGTH, "y"), ("x" * (MAX_ID_LENGTH + 1), "y"), ("\ud800", "z")])
    def property_(pairs: list[tuple[Any, Any]]) -> None:
        run(check(pairs))

    property_()
    # Every accepted pair, over all examples, still holds exactly its own items.
    stored = {sid for (sid,) in query(db, "SELECT session_id FROM agent_sessions")}
    assert stored == set(owner_of), f"sessions {len(stored)} != accepted pairs {len(owner_of)}"
    for sid, key in owner_of.items():
        rows = [json.loads(data) for (data,) in query(db, SELECT_DATA, (sid,))]
        assert same(rows, written[key]), f"{key!r}: rows differ ({figures})"
    assert figures["accepted"] > 0, f"one-sided input: {figures}"
    assert figures["rejected"] > 0, f"one-sided input: {figures}"
    print(f"id isolation: {dict(figures)}, distinct sessions {len(owner_of)}")


SELECT_DATA = "SELECT message_data FROM agent_messages WHERE session_id = ? ORDER BY id"


def test_hostile_ids_map_to_their_own_session_or_are_refused(tmp_path: Path) -> None:
    _id_isolation(tmp_path, PROPERTY)


@pytest.mark.slow
def test_hostile_ids_map_to_their_own_session_or_are_refused_long(tmp_path: Path) -> None:
    _id_isolation(tmp_path, SLOW_PROPERTY)


SESSION_ID_VALUE = st.one_of(
    ID_TEXT,
    st.sampled_from(["", " ", "\x00", "user_seed_conv_seed ", "USER_SEED_CONV_SEED", "%"]),
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
    st.builds(uuid.uuid4),
)


def test_manager_refuses_hostile_session_ids_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "manager.db"
    existing = set()
    for user, conversation in (("seed", "seed"), ("'; DROP TABLE agent_sessions; --", "%_")):
        with AgentSession(user, conversation, db_path=db, max_messages=10**6) as session:
            run(session.add_items([{"role": "user", "content": "q"}, {"role": "user", "x": 1}]))
            existing.add(session.session_id)
    expected_schema, before = schema(db), snapshot(db)
    figures: Counter[str] = Counter()

    async def check(values: list[Any]) -> None:
        async with SessionManager(db, max_messages=1, retention_days=7) as manager:
            methods: list[Callable[[Any], Any]] = [
                manager.get_session_stats,
                manager.clear_session,
                manager.prune_session_messages,
            ]
            for value in values:
                if isinstance(value, str) and value in existing:
                    continue
                for method in methods:
                    try:
                        await method(value)
                    except (SessionNotFoundError, InvalidIdentifierError) as exc:
                        figures[type(exc).__name__] += 1
                    except Exception as exc:
                        raise AssertionError(
                            f"{method.__name__}({value!r}) raised {exc!r} ({figures})"
                        ) from exc
                    else:
                        raise AssertionError(f"{method.__name__}({value!r}) succeeded")

    @PROPERTY
    @given(values=st.lists(SESSION_ID_VALUE, min_size=1, max_size=6))
    @example(values=["'; DROP TABLE agent_sessions; --", "x' OR '1'='1", "%", "_", "", None])
    def property_(values: list[Any]) -> None:
        run(check(values))
        assert snapshot(db) == before, f"the database changed ({figures})"
        check_schema_intact(db, expected_schema)

    property_()
    assert figures["SessionNotFoundError"] > 0, figures
    assert figures["InvalidIdentifierError"] > 0, figures
    print(f"manager hostile session ids: {dict(figures)}")


# --- item payloads --------------------------------------------------------------------------


def raw_state(db: Path, session_id: str) -> tuple[list[Any], list[Any]]:
    return (
        query(db, "SELECT * FROM agent_sessions WHERE session_id = ?", (session_id,)),
        query(
            db,
            "SELECT id, message_data FROM agent_messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        ),
    )


PREFIX = {"role": "user", "content": "before"}


async def add_and_check(
    db: Path, clock: FakeClock, conversation: str, batch: list[Any], with_prefix: bool
) -> str:
    """Add ``batch`` and check it was stored exactly or refused untouched; return the outcome."""
    with AgentSession("items", conversation, db_path=db, max_messages=10**6, clock=clock) as s:
        history: list[Any] = []
        if with_prefix:
            await s.add_items([PREFIX])  # type: ignore[list-item]
            history.append(PREFIX)
        clock.advance(seconds=1)  # a refused write that touched the session would show
        before = raw_state(db, s.session_id)
        payloads = [as_json(item) for item in batch]
        bad = next((n for n, text in enumerate(payloads) if text is None), None)
        if bad is None:
            await s.add_items(batch)
            got = await s.get_items()
            expected = history + [json.loads(text) for text in payloads if text is not None]
            assert same(got, expected), f"batch of {len(batch)} read back differently"
            coerced = not all(same(json.loads(t), i) for t, i in zip(payloads, batch, strict=True))
            return "stored, json-coerced" if coerced else "stored exactly"
        with pytest.raises(InvalidItemError) as refused:
            await s.add_items(batch)
        assert isinstance(refused.value, AgentSessionsError)
        assert isinstance(refused.value, ValueError)
        assert f"item {bad}" in str(refused.value), (bad, str(refused.value)[:300])
        assert raw_state(db, s.session_id) == before, f"refused batch (item {bad}) wrote"
        assert same(await s.get_items(), history)
        return f"refused at {'last' if bad == len(batch) - 1 else 'inner'} item"


def _payloads(tmp_path: Path, prop: settings) -> None:
    db = tmp_path / "items.db"
    clock = FakeClock()
    figures: Counter[str] = Counter()

    @prop
    @given(
        batch=st.one_of(
            st.lists(GOOD_ITEM, min_size=1, max_size=5), st.lists(ITEM, min_size=1, max_size=5)
        ),
        with_prefix=st.booleans(),
    )
    @example(
        batch=[{"a": "\u0000\ud800\udfff", "n": 2**200, "z": -0.0, "h": 1e308}], with_prefix=False
    )
    @example(batch=[{"a": 1}, {"b": 2}, {"c": {1, 2}}], with_prefix=True)
    @example(batch=[{"a": 1}, {"b": float("nan")}], with_prefix=False)
    @example(batch=[{1: "int key", None: "none key", 2.5: "float key"}], with_prefix=True)
    @example(batch=[{"a": 1}, nested(MAX_ITEM_DEPTH + 1)], with_prefix=True)
    @example(batch=[nested(MAX_ITEM_DEPTH, "list")], with_prefix=False)
    @example(batch=[{"a": (1, 2)}, ["not", "a", "dict"]], with_prefix=True)
    def property_(batch: list[Any], with_prefix: bool) -> None:
        # An output whose call is not stored is dropped on purpose (see sql.append_items);
        # that is pruning policy, not payload handling, so such items are not generated.
        for item in batch:
            half = pairing(item) if isinstance(item, dict) else None
            if half is not None and not half[0]:
                figures["skipped: tool output without its call"] += 1
                return
        figures["batches"] += 1
        figures["items"] += len(batch)
        conversation = f"c{figures['batches']}"
        figures[run(add_and_check(db, clock, conversation, batch, with_prefix))] += 1

    property_()
    assert figures["stored exactly"] > 0, figures
    assert figures["refused at last item"] + figures["refused at inner item"] > 0, figures
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    print(f"item payloads: {dict(figures)}")


def test_hostile_payloads_are_stored_exactly_or_refused_before_writing(tmp_path: Path) -> None:
    _payloads(tmp_path, PROPERTY)


@pytest.mark.slow
def test_hostile_payloads_are_stored_exactly_or_refused_before_writing_long(
    tmp_path: Path,
) -> None:
    _payloads(tmp_path, SLOW_PROPERTY)


TEN_MB = 10 * 1024 * 1024
HUGE: dict[str, Callable[[], str]] = {  # built per test, not at import
    "ascii": lambda: "a" * TEN_MB,
    # About 10 MB as UTF-8; the stored JSON escapes each non-ASCII character as \uXXXX.
    "unicode": lambda: "é\u0000\U0001f600\ud800\u0301€" * (TEN_MB // 16),
    "quotes": lambda: '"\\\n' * (TEN_MB // 3),
}


@pytest.mark.parametrize("kind", sorted(HUGE))
async def test_huge_strings_round_trip_and_a_bad_neighbour_refuses_the_batch(
    db_path: Path, clock: FakeClock, kind: str
) -> None:
    text = HUGE[kind]()
    item = {"role": "user", "content": text, "nested": [{"text": text[:1000]}]}
    with AgentSession("u", kind, db_path=db_path, max_messages=10, clock=clock) as session:
        with pytest.raises(InvalidItemError, match="item 1"):
            await session.add_items([item, {"bad": {1, 2}}])  # type: ignore[list-item]
        assert query(db_path, "SELECT COUNT(*) FROM agent_messages") == [(0,)]
        assert session_count(db_path) == 0, "refused batch created a session row"
        await session.add_items([item])  # type: ignore[list-item]
        got = await session.get_items()
    assert len(got) == 1, len(got)
    assert same(got[0], item), f"{kind}: {len(text):,} chars not returned exactly"
    async with SessionManager(db_path, max_messages=10, retention_days=7) as manager:
        via_manager = await manager.get_items(get_session_id("u", kind))
    assert same(via_manager[0], item)


@pytest.mark.parametrize("kind", ["dict", "list"])
@pytest.mark.parametrize(
    "levels",
    [
        1,
        2,
        MAX_ITEM_DEPTH - 1,
        MAX_ITEM_DEPTH,
        MAX_ITEM_DEPTH + 1,
        2 * MAX_ITEM_DEPTH,
        5_000,
        100_000,
    ],
)
async def test_nesting_up_to_the_limit_round_trips_and_beyond_is_refused(
    db_path: Path, clock: FakeClock, kind: str, levels: int
) -> None:
    item = nested(levels, kind)
    assert levels == 100_000 or depth(item) == levels
    batch: list[Any] = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, item]
    with AgentSession("u", "deep", db_path=db_path, max_messages=10, clock=clock) as session:
        if levels <= MAX_ITEM_DEPTH:
            await session.add_items(batch)
            got = await session.get_items()
            assert same(got, batch), f"{levels} levels of {kind} not returned exactly"
            return
        with pytest.raises(InvalidItemError, match="item 2") as refused:
            await session.add_items(batch)
        assert session_count(db_path) == 0, f"{levels} levels: refused batch wrote a session"
        assert await session.get_items() == []
    print(f"{levels} levels of {kind}: refused: {str(refused.value)[:120]}")


NOT_STORABLE: dict[str, Any] = {
    "set": {"v": {1, 2}},
    "frozenset": {"v": frozenset({1})},
    "bytes": {"v": b"\x00\xff"},
    "bytearray": {"v": bytearray(b"x")},
    "datetime": {"v": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
    "decimal": {"v": Decimal("0.1")},
    "complex": {"v": 1j},
    "custom object": {"v": Opaque()},
    "class": {"v": Opaque},
    "tuple key": {(1, 2): "v"},
    "frozenset key": {frozenset(): "v"},
    "circular dict": circular_dict(),
    "circular list": circular_list(),
    "nan": {"v": float("nan")},
    "inf": {"v": float("inf")},
    "-inf key": {float("-inf"): "v"},
    "int of 5000 digits": {"v": 10**5000},
    "list item": ["role", "user"],
    "str item": "hello",
    "None item": None,
    "int item": 7,
    "tuple item": ("role", "user"),
}


@pytest.mark.parametrize("where", ["only", "last of three"])
@pytest.mark.parametrize("name", sorted(NOT_STORABLE))
async def test_unstorable_items_are_refused_before_anything_is_written(
    db_path: Path, clock: FakeClock, name: str, where: str
) -> None:
    bad = NOT_STORABLE[name]
    with AgentSession("u", "c", db_path=db_path, max_messages=10, clock=clock) as session:
        await session.add_items([PREFIX])  # type: ignore[list-item]
        clock.advance(seconds=5)
        before = snapshot(db_path)
        batch = [bad] if where == "only" else [{"role": "user", "content": "a"}, {"a": 1}, bad]
        with pytest.raises(InvalidItemError) as refused:
            await session.add_items(batch)
        position = len(batch) - 1
        assert f"item {position}" in str(refused.value), str(refused.value)
        assert isinstance(refused.value, AgentSessionsError)
        assert isinstance(refused.value, ValueError)
        assert snapshot(db_path) == before, f"{name}: a refused batch changed the database"
        assert await session.get_items() == [PREFIX]


COERCED: dict[str, tuple[dict[Any, Any], dict[str, Any]]] = {
    # What the library does with what json turns into something else: it stores the JSON
    # form, as the SDK's own SQLiteSession does (json.dumps); the item read back is
    # json.loads(json.dumps(item)), not the original.
    "int keys": ({1: "a", 2: "b"}, {"1": "a", "2": "b"}),
    "float, bool and None keys": ({1.5: 1, True: 2, None: 3}, {"1.5": 1, "true": 2, "null": 3}),
    "tuple value": ({"v": (1, (2, 3))}, {"v": [1, [2, 3]]}),
    "OrderedDict": (OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}),
    "str subclass value": ({"v": type("S", (str,), {})("x")}, {"v": "x"}),
    "int subclass (IntEnum-like) value": ({"v": type("I", (int,), {})(3)}, {"v": 3}),
}


@pytest.mark.parametrize("name", sorted(COERCED))
async def test_json_coercions_are_stored_as_json_would(
    db_path: Path, clock: FakeClock, name: str
) -> None:
    item, as_read = COERCED[name]
    assert json.loads(json.dumps(item)) == as_read
    with AgentSession("u", "c", db_path=db_path, max_messages=10, clock=clock) as session:
        await session.add_items([item])  # type: ignore[list-item]
        got = await session.get_items()
    assert same(got, [as_read]), f"{name}: stored {got!r}, json gives {as_read!r}"


@pytest.mark.parametrize(
    "item",
    [
        {1: "a", "1": "b"},
        {True: "a", "true": "b"},
        {None: "a", "null": "b"},
        {1.5: "a", "1.5": "b"},
    ],
    ids=["int-str", "bool-str", "none-str", "float-str"],
)
async def test_keys_colliding_as_json_are_refused_not_merged(
    db_path: Path, clock: FakeClock, item: dict[Any, Any]
) -> None:
    with AgentSession("u", "c", db_path=db_path, max_messages=10, clock=clock) as session:
        try:
            await session.add_items([item])
        except InvalidItemError:
            assert await session.get_items() == []
            return
        got = await session.get_items()
    assert len(got[0]) == len(item), f"{item!r} came back as {got[0]!r}: a value was lost"


# --- CLI ------------------------------------------------------------------------------------

GARBAGE = b"this is not a database\x00\xff" * 100
ODD_PATHS = [
    "",
    ".",
    "data",
    "folder",
    "folder/",
    "notadb.txt",
    "file_as_parent/x.db",
    "a b.db",
    "nested/deeper/x.db",
    "\U0001f600.db",
    "'; DROP TABLE agent_sessions; --.db",
    ":memory:",
    "file:x.db?mode=ro",
    "data/agent_sessions.db",
    "data/agent_sessions.db-wal",
    "-dash.db",
    "x" * 200 + ".db",
    "é/\u0301.db",
    "a\x00b.db",
    "\ud800.db",
    "x" * 300,
]
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "1e3",
            "0x10",
            " 5",
            "5 ",
            "\u0663",
            "1_000",
            "9" * 5000,
            "nan",
            "inf",
            "",
            "--5",
            str(2**63 - 1),
            str(2**63),
            "999999999",
            "1000000000",
            "+3",
            "-0",
        ]
    ),
)
# Random text never contains "/" or "~", so a random --db stays inside the test's folder.
RANDOM_TEXT = st.text(st.one_of(st.characters(exclude_characters="/~"), SURROGATE), max_size=10)
TOKENS = [
    "stats",
    "list",
    "show",
    "export",
    "prune",
    "clear",
    "cleanup",
    "--db",
    "--json",
    "--user",
    "--limit",
    "--offset",
    "--format",
    "json",
    "markdown",
    "yaml",
    "--all",
    "--max-messages",
    "--dry-run",
    "--retention-days",
    "--help",
    "-h",
    "--",
    "-",
    "--bogus",
    "-x",
    "=",
    "--limit=5",
    "--db=",
    "--d",
    "--lim",
    "user_seed_conv_seed",
]
ARG = st.one_of(st.sampled_from(TOKENS), NUMBERS, st.sampled_from(ODD_PATHS), RANDOM_TEXT)
COMMAND_OPTIONS: dict[str, list[str]] = {
    "stats": ["--json"],
    "list": ["--json", "--user", "--limit", "--offset"],
    "show": ["--json"],
    "export": ["--format"],
    "prune": ["--all", "--max-messages"],
    "clear": [],
    "cleanup": ["--dry-run", "--retention-days"],
}


@st.composite
def structured_argv(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    if draw(st.booleans()):
        argv += ["--db", draw(st.one_of(st.sampled_from(ODD_PATHS), RANDOM_TEXT))]
    command = draw(st.sampled_from(sorted(COMMAND_OPTIONS)))
    argv.append(command)
    if command in ("show", "export", "clear", "prune") and draw(st.booleans()):
        argv.append(draw(st.one_of(ID_TEXT, st.sampled_from(["user_seed_conv_seed"]))))
    options = [*COMMAND_OPTIONS[command], "--bogus"]
    for option in draw(st.lists(st.sampled_from(options), max_size=3)):
        argv.append(option)
        if option in ("--limit", "--offset", "--max-messages", "--retention-days"):
            argv.append(draw(NUMBERS))
        elif option == "--user":
            argv.append(draw(ID_TEXT))
        elif option == "--format":
            argv.append(draw(st.sampled_from(["json", "markdown", "yaml", ""])))
    return argv


ARGV = st.one_of(st.lists(ARG, max_size=8), structured_argv(), structured_argv())


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, int | None]:
    """argparse's own verdict, without printing: (args, None) or (None, exit code)."""
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            return cli_module.build_parser().parse_args(argv), None
        except SystemExit as exc:
            return None, exc.code if isinstance(exc.code, int) else 2


def unsafe_target(args: argparse.Namespace) -> bool:
    """A --db that could reach outside the test's folder (never generated, but checked)."""
    if args.db is None:
        return False
    text = str(args.db)
    return text.startswith(("/", "~")) or ".." in Path(text).parts


def _cli(tmp_path: Path, prop: settings) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "notadb.txt").write_bytes(GARBAGE)
    (tmp_path / "file_as_parent").write_bytes(b"a file")
    default_db = tmp_path / "data" / "agent_sessions.db"
    seed_id = get_session_id("seed", "seed")

    def reseed() -> None:  # `clear user_seed_conv_seed` is a valid command: put it back
        if not default_db.exists() or not query(
            default_db, "SELECT 1 FROM agent_sessions WHERE session_id = ?", (seed_id,)
        ):
            with AgentSession("seed", "seed", db_path=default_db, max_messages=10) as session:
                run(session.add_items([{"role": "user", "content": "hi"}]))

    reseed()
    figures: Counter[str] = Counter()

    @prop
    @given(argv=ARGV)
    @example(argv=[])
    @example(argv=["list", "--limit", "-5"])
    @example(argv=["list", "--limit", "9" * 5000])
    @example(argv=["list", "--limit", str(2**63 - 1)])  # past the library's bound: exit 2
    @example(argv=["cleanup", "--retention-days", "99999999"])
    @example(argv=["--db", "folder", "stats"])
    @example(argv=["--db", "notadb.txt", "list"])
    @example(argv=["show", "'; DROP TABLE agent_sessions; --"])
    @example(argv=["export", "user_seed_conv_seed", "--format", "markdown"])
    @example(argv=["list", "--user", "\x00"])
    @example(argv=["--help"])
    def property_(argv: list[str]) -> None:
        reseed()
        args, parse_code = parse(argv)
        session_id = getattr(args, "session_id", None)
        exists = isinstance(session_id, str) and session_id == seed_id
        if args is not None and (args.command == "daemon" or unsafe_target(args)):
            figures["skipped: daemon or outside path"] += 1
            return
        # sys.stdout/stderr replaced by StringIO, not capsys: pytest's capture encodes
        # strictly, while a real stderr escapes the lone surrogates argv can carry.
        out, stdout, stderr = io.StringIO(), io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                code = cli_module.main(argv, out=out)
        except BaseException as exc:
            raise AssertionError(f"main({argv!r}) raised {exc!r} ({figures})") from exc
        err = stderr.getvalue()
        figures[f"exit {code}"] += 1
        assert code in (0, 1, 2), (argv, code)
        assert "Traceback" not in err, (argv, err[-2000:])
        if parse_code is not None:  # argparse refused it, or --help
            assert code == parse_code, (argv, code, parse_code)
            if code != 0:
                assert "error" in err, (argv, err)
            return
        assert args is not None
        if code != 0:
            assert err.startswith("agent-sessions:"), (argv, err)
        else:
            assert "agent-sessions: " not in err, (argv, err)
        if args.db is None:  # the default database is healthy: the outcome is known
            if args.command in ("stats", "cleanup") or getattr(args, "all", False):
                assert code == 0, (argv, err)
            elif args.command == "list":
                ok = args.user is None or documented_valid_id(args.user)
                assert code == (0 if ok else 2), (argv, err)
            else:  # show, export, clear, prune SESSION_ID
                # an id that is not text at all (a lone surrogate) is bad input, like ""
                unusable = args.session_id == "" or has_surrogate(args.session_id)
                expected = 2 if unusable else 0 if exists else 1
                assert code == expected, (argv, err)

    property_()
    assert (tmp_path / "notadb.txt").read_bytes() == GARBAGE, "a non-database file was written"
    for code in (0, 1, 2):
        assert figures[f"exit {code}"] > 0, f"exit {code} never seen: {figures}"
    print(f"cli argv: {dict(figures)}")


def test_cli_never_raises_on_hostile_arguments(
    tmp_path: Path,
) -> None:
    _cli(tmp_path, PROPERTY)


@pytest.mark.slow
def test_cli_never_raises_on_hostile_arguments_long(
    tmp_path: Path,
) -> None:
    _cli(tmp_path, SLOW_PROPERTY)


def console(tmp_path: Path, argv: list[str | bytes]) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_")}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--bogus", "stats"],
        ["list", "--limit", "-5"],
        ["show"],
        ["cleanup", "--retention-days", "0"],
    ],
    ids=["no-command", "unknown-flag", "negative-limit", "missing-value", "zero-retention"],
)
def test_console_script_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, argv: list[str | bytes]
) -> None:
    done = console(tmp_path, argv)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, (argv, done.returncode, err)
    assert re.search(r"^agent-sessions( \w+)?: error: ", err, re.MULTILINE), err
    assert "Traceback" not in err, err


@pytest.fixture
def default_db(tmp_path: Path) -> Path:
    """The CLI's default database (./data/agent_sessions.db in the test's folder), seeded."""
    path = tmp_path / "data" / "agent_sessions.db"
    with AgentSession("seed", "seed", db_path=path, max_messages=10) as session:
        run(session.add_items([{"role": "user", "content": "hi"}]))
    return path


# --- regressions: bugs this battery found ------------------------------------------------


@pytest.mark.parametrize("method", ["get_session_stats", "clear_session", "prune_session_messages"])
@pytest.mark.parametrize("session_id", ["\ud800", "user_a_conv_\udcff"])
async def test_bug_surrogate_session_id_in_manager(
    db_path: Path, method: str, session_id: str
) -> None:
    async with SessionManager(db_path, max_messages=10, retention_days=7) as manager:
        with pytest.raises((SessionNotFoundError, InvalidIdentifierError)):
            await getattr(manager, method)(session_id)


CLI_BUGS = {
    "limit-beyond-64-bits": (
        ["list", "--limit", str(10**30)],
        "OverflowError 'Python int too large to convert to SQLite INTEGER' from "
        "manager.list_sessions: positive_int has no upper bound",
    ),
    "offset-beyond-64-bits": (
        ["list", "--offset", str(2**63)],
        "OverflowError from binding OFFSET in manager.list_sessions",
    ),
    "retention-beyond-timedelta": (
        ["cleanup", "--retention-days", "1000000000"],
        "OverflowError 'days=1000000000; must have magnitude <= 999999999' from "
        "timedelta in manager._cutoff",
    ),
    "show-surrogate-id": (
        ["show", "\ud800"],
        "UnicodeEncodeError from sqlite3 binding in manager.get_session_stats",
    ),
}


@pytest.mark.parametrize(
    "argv",
    [pytest.param(argv, id=name) for name, (argv, cause) in sorted(CLI_BUGS.items())],
)
def test_bug_cli_crashes_instead_of_exit_code(
    default_db: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    try:
        code = cli_module.main(argv, out=io.StringIO())
    except Exception as exc:
        pytest.fail(f"main({argv[:3]!r}) raised {type(exc).__name__}: {exc}"[:300])
    assert code in (1, 2), code
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["list", "--limit", "1" * 25], ["show", b"\xff"]],
    ids=["huge-limit", "non-utf8-session-id"],
)
def test_bug_console_script_tracebacks(
    tmp_path: Path, default_db: Path, argv: list[str | bytes]
) -> None:
    done = console(tmp_path, argv)
    err = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-600:]
    assert done.returncode in (1, 2), done.returncode


@pytest.mark.parametrize("call", ["list_limit", "list_offset", "cleanup_retention", "manager"])
async def test_bug_manager_numbers_beyond_range(db_path: Path, call: str) -> None:
    if call == "manager":  # refused when the manager is built, before anything is opened
        with pytest.raises(InvalidArgumentError, match="retention_days"):
            SessionManager(db_path, max_messages=10, retention_days=10**9)
        assert not db_path.exists()
        return
    async with SessionManager(db_path, max_messages=10, retention_days=7) as manager:
        calls = {
            "list_limit": lambda: manager.list_sessions(limit=2**63),
            "list_offset": lambda: manager.list_sessions(offset=2**63),
            "cleanup_retention": lambda: manager.cleanup_inactive_sessions(retention_days=10**9),
        }
        with pytest.raises(InvalidArgumentError):
            await calls[call]()


@pytest.mark.parametrize("opener", ["session", "manager"])
@pytest.mark.parametrize(
    "path", ["a\x00b.db", "\ud800.db", "x" * 300], ids=["nul", "lone-surrogate", "name-too-long"]
)
async def test_bug_unusable_db_path_in_the_api(path: str, opener: str) -> None:
    async def open_it() -> None:
        if opener == "session":
            AgentSession("u", "c", db_path=path, max_messages=10).close()
        else:
            await SessionManager(path, max_messages=10, retention_days=7).open()

    with pytest.raises((StorageError, InvalidArgumentError)):
        await open_it()
