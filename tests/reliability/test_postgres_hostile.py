"""Hostile ids and item payloads on PostgreSQL, property-based, directly and through PgBouncer.

The inputs are the SQLite battery's (``test_hostile_input``), so both backends face the same
ids and items, plus fragments that mean something to PostgreSQL or psycopg (dollar quotes,
``E''`` strings, casts, ``%s`` placeholders). Every input either works exactly (its own
session; its items back unchanged, stored as the codec's text byte for byte) or is refused
with the library's own error before anything is written; no input is ever run as SQL.

Each test runs its examples in one event loop (``asyncio.Runner``), so one connection pool
serves them all, and checks at the end what every accepted input left in the database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_sessions import (
    AgentSessionsError,
    InvalidIdentifierError,
    InvalidItemError,
    SessionManager,
    SessionNotFoundError,
    get_session_id,
)
from agent_sessions.backends.postgres import close_pools
from agent_sessions.codec import MAX_ITEM_DEPTH, encode_items
from agent_sessions.ids import MAX_ID_LENGTH
from agent_sessions.pruning import pairing
from agent_sessions.session import PostgresSession
from tests.conftest import FakeClock
from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database
from tests.reliability import test_hostile_input as hostile

ROUTES = {"direct": PG_URL, "pgbouncer": PGBOUNCER_URL}
PROPERTY = settings(hostile.PROPERTY, max_examples=60)
SLOW_PROPERTY = settings(hostile.PROPERTY, max_examples=600)
NO_LIMIT = 1_000_000

PG_FRAGMENTS = [
    "$$",
    "$q$",
    "E'\\\\'",
    "\\",
    "\\'",
    "''",
    "::text",
    "%s",
    "%(sid)s",
    "%%",
    "{}",
    "\\x00",
    "\\u0000",
    "U&'\\0041'",
    "'; SELECT pg_sleep(10); --",
    "'); DROP TABLE agent_sessions_item; --",
    "'; TRUNCATE agent_sessions_session; --",
    "/*",
    "*/",
    ";",
]
PG_ID = st.one_of(
    hostile.IDENTIFIER,
    st.lists(
        st.one_of(st.sampled_from(PG_FRAGMENTS), st.sampled_from(hostile.FRAGMENTS)),
        min_size=1,
        max_size=8,
    ).map("".join),
    st.sampled_from(PG_FRAGMENTS),
    st.builds(
        lambda text: (text * MAX_ID_LENGTH)[:MAX_ID_LENGTH],
        st.sampled_from(["'", "\\", "%", "é", "$$", "\U0001f600"]),
    ),
)


@pytest.fixture(params=sorted(ROUTES))
def route(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pg_url(route: str) -> Iterator[str]:
    """A new, empty database of the test's own, reached by ``route``."""
    with fresh_database(require_postgres(PG_URL)) as name:
        url = with_database(require_postgres(ROUTES[route]), name)
        try:
            yield url
        finally:
            if url in _raw:
                _raw.pop(url).close()


@pytest.fixture
def runner(pg_url: str) -> Iterator[asyncio.Runner]:
    """One event loop for all of a test's examples; its pools closed before the drop."""
    with asyncio.Runner() as loop:
        yield loop
        loop.run(close_pools())


_raw: dict[str, psycopg.Connection[Any]] = {}
"""A connection of the test's own per URL, for the checks (``pg_url`` closes it)."""


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    # One connection for all of a test's checks: connecting directly forks a server process
    # each time, which would take most of the test's time.
    if url not in _raw:
        _raw[url] = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    cursor = _raw[url].execute(statement, params)
    return cursor.fetchall() if cursor.description is not None else []


def schema(url: str) -> list[tuple[Any, ...]]:
    """Every table, column, index and function of ours: an injected statement would show."""
    return query(
        url,
        "SELECT c.relkind::text, c.relname, a.attname, a.atttypid::regtype::text "
        "FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 "
        "WHERE n.nspname = 'public' "
        "UNION ALL SELECT 'function', p.proname, pg_get_function_identity_arguments(p.oid), '' "
        "FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' ORDER BY 1, 2, 3",
    )


def session_count(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM agent_sessions_session")[0][0])


def raw_state(url: str, session_id: str) -> tuple[list[Any], list[Any]]:
    """A session's row (activity times included) and its items' rows, as stored."""
    return (
        query(url, "SELECT * FROM agent_sessions_session WHERE session_id = %s", (session_id,)),
        query(
            url,
            "SELECT seq, message_data FROM agent_sessions_item WHERE session_id = %s ORDER BY seq",
            (session_id,),
        ),
    )


def payloads(url: str, session_id: str) -> list[str]:
    return [data for _, data in raw_state(url, session_id)[1]]


def seed(runner: asyncio.Runner, url: str) -> list[tuple[Any, ...]]:
    """Create the schema with one session in it; return the schema to compare with later."""
    session = PostgresSession("seed", "seed", database_url=url, max_messages=NO_LIMIT)
    runner.run(session.add_items([{"role": "user", "content": "seed"}]))
    return schema(url)


# --- ids ------------------------------------------------------------------------------------


def _id_isolation(runner: asyncio.Runner, url: str, prop: Any) -> None:
    expected_schema = seed(runner, url)
    written: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("seed", "seed"): [{"role": "user", "content": "seed"}]
    }
    owner_of: dict[str, tuple[str, str]] = {get_session_id("seed", "seed"): ("seed", "seed")}
    figures: Counter[str] = Counter()

    async def check(pairs: list[tuple[Any, Any]]) -> None:
        touched: dict[tuple[str, str], tuple[Any, Any]] = {}
        for user, conversation in pairs:
            figures["pairs"] += 1
            valid = hostile.documented_valid_id(user) and hostile.documented_valid_id(conversation)
            before = session_count(url)
            try:
                session = PostgresSession(
                    user, conversation, database_url=url, max_messages=NO_LIMIT
                )
            except InvalidIdentifierError:
                figures["rejected"] += 1
                assert not valid, f"valid pair {user!r}/{conversation!r} rejected ({figures})"
                assert session_count(url) == before, "a rejected pair created a session"
                continue
            assert valid, f"pair {user!r}/{conversation!r} accepted against the rule"
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
            again = PostgresSession(user, conversation, database_url=url, max_messages=NO_LIMIT)
            got = await again.get_items()
            assert hostile.same(got, written[key]), f"{key!r} read {got!r}, wrote {written[key]!r}"
        async with SessionManager(database_url=url, max_messages=NO_LIMIT) as manager:
            for key, (user, conversation) in touched.items():
                sid = get_session_id(user, conversation)
                listed = {s.session_id: s for s in await manager.list_sessions(user, limit=10**4)}
                assert sid in listed, f"list_sessions({user!r}) misses {sid!r}"
                stats = listed[sid]
                assert (stats.user_id, stats.conversation_id) == key, stats
                assert stats.message_count == len(written[key]), stats
                assert all(s.user_id == key[0] for s in listed.values()), "another user listed"
        assert schema(url) == expected_schema, "the schema changed: SQL ran from an input"

    @prop
    @given(pairs=st.lists(st.tuples(PG_ID, PG_ID), min_size=1, max_size=6))
    @example(pairs=[("a_conv_b", "c"), ("a", "b_conv_c"), ("a", "b"), ("a_conv_b", "c")])
    @example(pairs=[("'; DROP TABLE agent_sessions_item; --", "x"), ("$$", "E'\\\\'")])
    @example(pairs=[("%s", "%(sid)s"), ("%", "%25"), ("\\", "\\\\"), ("e\u0301", "é")])
    @example(pairs=[("x" * MAX_ID_LENGTH, "'" * MAX_ID_LENGTH), ("x" * (MAX_ID_LENGTH + 1), "y")])
    @example(pairs=[("a\x00b", "c"), ("c", "\x00"), ("\ud800", "z"), ("ok", "a\udfffb")])
    def property_(pairs: list[tuple[Any, Any]]) -> None:
        runner.run(check(pairs))

    property_()
    # Every accepted pair, over all examples, still holds exactly its own items.
    stored = {sid for (sid,) in query(url, "SELECT session_id FROM agent_sessions_session")}
    assert stored == set(owner_of), f"sessions {len(stored)} != accepted pairs {len(owner_of)}"
    for sid, key in owner_of.items():
        assert payloads(url, sid) == encode_items(written[key]), f"{key!r}: rows differ"
        owner = query(
            url,
            "SELECT user_id, conversation_id FROM agent_sessions_session WHERE session_id = %s",
            (sid,),
        )
        assert owner == [key], f"{sid!r} is owned by {owner}, written for {key!r}"
    assert figures["accepted"] > 0, f"one-sided input: {figures}"
    assert figures["rejected"] > 0, f"one-sided input: {figures}"
    print(f"postgres id isolation: {dict(figures)}, distinct sessions {len(owner_of)}")


def test_hostile_ids_map_to_their_own_session_or_are_refused(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _id_isolation(runner, pg_url, PROPERTY)


@pytest.mark.slow
def test_hostile_ids_map_to_their_own_session_or_are_refused_long(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _id_isolation(runner, pg_url, SLOW_PROPERTY)


NUL_PAIRS = [("a\x00b", "c"), ("u", "\x00"), ("\x00" * MAX_ID_LENGTH, "c")]


def test_ids_with_nul_are_refused_and_create_nothing(runner: asyncio.Runner, pg_url: str) -> None:
    before = seed(runner, url=pg_url)
    rows = query(pg_url, "SELECT * FROM agent_sessions_session ORDER BY session_id")

    async def through_the_manager(user: str, conversation: str) -> None:
        async with SessionManager(database_url=pg_url, max_messages=10) as manager:
            with pytest.raises(InvalidIdentifierError):  # whichever id holds the NUL, as a user
                await manager.list_sessions(user if "\x00" in user else conversation)
            # A session id holding a NUL reaches the backend: PostgreSQL text cannot hold one.
            for method in (
                manager.get_session_stats,
                manager.get_items,
                manager.clear_session,
                manager.prune_session_messages,
            ):
                with pytest.raises(InvalidIdentifierError, match="NUL"):
                    await method(f"user_{user}_conv_{conversation}")

    for user, conversation in NUL_PAIRS:
        with pytest.raises(InvalidIdentifierError):
            PostgresSession(user, conversation, database_url=pg_url, max_messages=10)
        runner.run(through_the_manager(user, conversation))
    assert query(pg_url, "SELECT * FROM agent_sessions_session ORDER BY session_id") == rows
    assert schema(pg_url) == before


def test_manager_refuses_hostile_session_ids_and_changes_nothing(
    runner: asyncio.Runner, pg_url: str
) -> None:
    expected_schema = seed(runner, pg_url)
    existing = {get_session_id("seed", "seed")}
    session = PostgresSession("'; DROP TABLE x; --", "%_", database_url=pg_url, max_messages=10)
    runner.run(session.add_items([{"role": "user", "content": "q"}]))
    existing.add(session.session_id)
    snapshot = (
        "SELECT s.*, i.* FROM agent_sessions_session AS s NATURAL JOIN agent_sessions_item AS i"
    )
    before = sorted(map(repr, query(pg_url, snapshot)))
    figures: Counter[str] = Counter()

    async def check(values: list[Any]) -> None:
        async with SessionManager(database_url=pg_url, max_messages=1) as manager:
            for value in values:
                if isinstance(value, str) and value in existing:
                    continue
                for method in (
                    manager.get_session_stats,
                    manager.clear_session,
                    manager.prune_session_messages,
                ):
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
    @given(values=st.lists(st.one_of(hostile.SESSION_ID_VALUE, PG_ID), min_size=1, max_size=6))
    @example(values=["'; DROP TABLE agent_sessions_item; --", "x' OR '1'='1", "%", "_", "$$"])
    @example(values=["\x00", "user_a\x00_conv_b", "\ud800", "", None, "%(sid)s"])
    def property_(values: list[Any]) -> None:
        runner.run(check(values))
        assert sorted(map(repr, query(pg_url, snapshot))) == before, "the database changed"
        assert schema(pg_url) == expected_schema

    property_()
    assert figures["SessionNotFoundError"] > 0, figures
    assert figures["InvalidIdentifierError"] > 0, figures
    print(f"postgres manager hostile session ids: {dict(figures)}")


# --- item payloads --------------------------------------------------------------------------

PREFIX = {"role": "user", "content": "before"}


async def add_and_check(
    url: str, clock: FakeClock, conversation: str, batch: list[Any], with_prefix: bool
) -> str:
    """Add ``batch`` and check it was stored exactly or refused untouched; return the outcome."""
    session = PostgresSession(
        "items", conversation, database_url=url, max_messages=NO_LIMIT, clock=clock
    )
    history: list[Any] = []
    if with_prefix:
        await session.add_items([PREFIX])  # type: ignore[list-item]
        history.append(PREFIX)
    clock.advance(seconds=1)  # a refused write that touched the session would show
    before = raw_state(url, session.session_id)
    texts = [hostile.as_json(item) for item in batch]
    bad = next((n for n, text in enumerate(texts) if text is None), None)
    if bad is None:
        await session.add_items(batch)
        got = await session.get_items()
        expected = history + [json.loads(text) for text in texts if text is not None]
        assert hostile.same(got, expected), f"batch of {len(batch)} read back differently"
        stored = payloads(url, session.session_id)
        assert stored == encode_items(history) + texts, "not stored as the codec's text"
        coerced = not all(
            hostile.same(json.loads(text), item)
            for text, item in zip(texts, batch, strict=True)
            if text is not None
        )
        return "stored, json-coerced" if coerced else "stored exactly"
    with pytest.raises(InvalidItemError) as refused:
        await session.add_items(batch)
    assert isinstance(refused.value, AgentSessionsError)
    assert f"item {bad}" in str(refused.value), (bad, str(refused.value)[:300])
    assert raw_state(url, session.session_id) == before, f"refused batch (item {bad}) wrote"
    assert hostile.same(await session.get_items(), history)
    return f"refused at {'last' if bad == len(batch) - 1 else 'inner'} item"


def _payloads(runner: asyncio.Runner, url: str, prop: Any) -> None:
    expected_schema = seed(runner, url)
    clock = FakeClock()
    figures: Counter[str] = Counter()

    @prop
    @given(
        batch=st.one_of(
            st.lists(hostile.GOOD_ITEM, min_size=1, max_size=5),
            st.lists(hostile.ITEM, min_size=1, max_size=5),
        ),
        with_prefix=st.booleans(),
    )
    @example(
        batch=[{"a": "\u0000\ud800\udfff", "\u0000": "\udc80", "n": 2**200, "z": -0.0}],
        with_prefix=False,
    )
    @example(
        batch=[{"role": "user", "content": "a\x00b", "e": "\\u0000 is not a NUL"}], with_prefix=True
    )
    @example(batch=[{"a": 1}, {"b": 2}, {"c": {1, 2}}], with_prefix=True)
    @example(batch=[{"a": 1}, {"b": float("nan")}], with_prefix=False)
    @example(batch=[{"a": 1}, hostile.nested(MAX_ITEM_DEPTH + 1)], with_prefix=True)
    @example(batch=[hostile.nested(MAX_ITEM_DEPTH, "list")], with_prefix=False)
    @example(
        batch=[{"sql": "'); DROP TABLE agent_sessions_item; --", "$$": "%(sid)s"}], with_prefix=True
    )
    def property_(batch: list[Any], with_prefix: bool) -> None:
        # An output whose call is not stored is dropped on purpose (pruning policy, not
        # payload handling), so such items are not generated.
        for item in batch:
            half = pairing(item) if isinstance(item, dict) else None
            if half is not None and not half[0]:
                figures["skipped: tool output without its call"] += 1
                return
        figures["batches"] += 1
        conversation = f"c{figures['batches']}"
        figures[runner.run(add_and_check(url, clock, conversation, batch, with_prefix))] += 1

    property_()
    assert figures["stored exactly"] > 0, figures
    assert figures["refused at last item"] + figures["refused at inner item"] > 0, figures
    assert schema(url) == expected_schema
    print(f"postgres item payloads: {dict(figures)}")


def test_hostile_payloads_are_stored_exactly_or_refused_before_writing(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _payloads(runner, pg_url, PROPERTY)


@pytest.mark.slow
def test_hostile_payloads_are_stored_exactly_or_refused_before_writing_long(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _payloads(runner, pg_url, SLOW_PROPERTY)


MB = 1024 * 1024
HUGE: dict[str, Callable[[int], str]] = {  # the SQLite battery's shapes, at a given size
    "ascii": lambda size: "a" * size,
    # The stored JSON escapes each non-ASCII character (and NUL, the lone surrogate) as \uXXXX.
    "unicode": lambda size: "é\u0000\U0001f600\ud800\u0301€" * (size // 16),
    "quotes": lambda size: '"\\\n' * (size // 3),
}


def _huge(runner: asyncio.Runner, url: str, size: int) -> None:
    async def check(kind: str) -> None:
        text = HUGE[kind](size)
        item = {"role": "user", "content": text, "nested": [{"text": text[:1000]}]}
        session = PostgresSession("u", kind, database_url=url, max_messages=10)
        with pytest.raises(InvalidItemError, match="item 1"):
            await session.add_items([item, {"bad": {1, 2}}])  # type: ignore[list-item]
        assert raw_state(url, session.session_id) == ([], []), "a refused batch wrote"
        await session.add_items([item])  # type: ignore[list-item]
        got = await session.get_items()
        assert len(got) == 1, len(got)
        assert hostile.same(got[0], item), f"{kind}: {len(text):,} chars not returned exactly"
        assert payloads(url, session.session_id) == encode_items([item])
        async with SessionManager(database_url=url, max_messages=10) as manager:
            via_manager = await manager.get_items(session.session_id)
        assert hostile.same(via_manager[0], item)

    expected_schema = seed(runner, url)
    for kind in sorted(HUGE):
        runner.run(check(kind))
    assert schema(url) == expected_schema


def test_huge_strings_round_trip_and_a_bad_neighbour_refuses_the_batch(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _huge(runner, pg_url, MB)


@pytest.mark.slow
def test_huge_strings_round_trip_and_a_bad_neighbour_refuses_the_batch_10mb(
    runner: asyncio.Runner, pg_url: str
) -> None:
    _huge(runner, pg_url, 10 * MB)


def test_nesting_up_to_the_limit_round_trips_and_beyond_is_refused(
    runner: asyncio.Runner, pg_url: str
) -> None:
    async def check(kind: str, levels: int) -> str:
        item = hostile.nested(levels, kind)
        batch: list[Any] = [{"role": "user", "content": "a"}, item]
        session = PostgresSession(
            "u", f"deep-{kind}-{levels}", database_url=pg_url, max_messages=10
        )
        if levels <= MAX_ITEM_DEPTH:
            await session.add_items(batch)
            assert hostile.same(await session.get_items(), batch), f"{levels} levels of {kind}"
            return "stored"
        with pytest.raises(InvalidItemError, match="item 1"):
            await session.add_items(batch)
        assert raw_state(pg_url, session.session_id) == ([], []), f"{levels}: a refusal wrote"
        return "refused"

    seed(runner, pg_url)
    outcomes = Counter(
        runner.run(check(kind, levels))
        for kind in ("dict", "list")
        for levels in (1, 2, MAX_ITEM_DEPTH - 1, MAX_ITEM_DEPTH, MAX_ITEM_DEPTH + 1, 5_000)
    )
    assert outcomes == {"stored": 8, "refused": 4}, outcomes


# --- regressions: bugs this battery found ------------------------------------------------


async def loop_stall(operation: Awaitable[Any]) -> float:
    """The longest the event loop went without running another task while ``operation`` ran."""
    worst = 0.0
    running = True

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while running:
            await asyncio.sleep(0)
            now = time.monotonic()
            worst, last = max(worst, now - last), now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker is running before the operation starts
    try:
        await operation
    finally:
        running = False
        await ticker
    return worst


@pytest.mark.parametrize("route", ["direct"])  # the same through PgBouncer: it is client-side
def test_a_huge_item_full_of_quotes_does_not_freeze_the_event_loop(
    runner: asyncio.Runner, pg_url: str
) -> None:
    seed(runner, pg_url)
    session = PostgresSession("u", "quotes", database_url=pg_url, max_messages=10)
    # A JSON-heavy tool output is mostly quotes and backslashes once stored as JSON text.
    item = {"role": "user", "content": '"\\' * (MB // 2)}
    stall = runner.run(loop_stall(session.add_items([item])))  # type: ignore[list-item]
    assert hostile.same(runner.run(session.get_items()), [item])
    assert stall < 0.25, f"the event loop was frozen for {stall:.2f} s writing a 1 MB item"
