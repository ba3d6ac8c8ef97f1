"""What goes in comes back: payloads byte for byte, times to the microsecond."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from agent_sessions.backends.base import SessionKey
from agent_sessions.backends.postgres import PostgresBackend, close_pools
from agent_sessions.clock import from_timestamp, to_timestamp
from agent_sessions.codec import encode_items
from tests.items import user
from tests.pg_server import PG_URL, require_postgres, with_database

from .helpers import T0, append, query

_ids = itertools.count()
DB_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    # One database per test function serves every example; each example has its own session.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Every kind of character: NUL and other controls, lone surrogates, non-BMP (emoji).
any_text = st.text(st.characters(codec=None), max_size=40)
utf8_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def json_objects(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=20,
    )
    return st.dictionaries(text, values, max_size=5)


async def stored_payloads(url: str, session_id: str) -> list[str]:
    rows = await query(
        url,
        "SELECT message_data FROM agent_sessions_item WHERE session_id = %s ORDER BY seq",
        (session_id,),
    )
    return [row[0] for row in rows]


async def write_and_read(
    backend: PostgresBackend, url: str, items: list[dict[str, Any]], payloads: list[str]
) -> None:
    session_id = f"s{next(_ids)}"
    await backend.append_items(SessionKey(session_id, "u", "c"), items, payloads, T0, 10_000)
    assert await stored_payloads(url, session_id) == payloads
    assert (await backend.read_items(session_id, None)).items == [json.loads(p) for p in payloads]


@DB_SETTINGS
@given(items=st.lists(json_objects(any_text), min_size=1, max_size=4))
async def test_codec_payloads_come_back_byte_for_byte(
    backend: PostgresBackend, pg_url: str, items: list[dict[str, Any]]
) -> None:
    # The codec escapes NUL and lone surrogates ("\u0000", "\udc80"): text PostgreSQL stores.
    await write_and_read(backend, pg_url, items, encode_items(items))


@DB_SETTINGS
@given(items=st.lists(json_objects(utf8_text), min_size=1, max_size=4))
async def test_raw_non_ascii_payloads_come_back_byte_for_byte(
    backend: PostgresBackend, pg_url: str, items: list[dict[str, Any]]
) -> None:
    # Not what the codec writes today, but text a backend must keep as it is: emoji and other
    # non-ASCII characters unescaped, in a column that is text, not jsonb.
    payloads = [json.dumps(item, ensure_ascii=False) for item in items]
    await write_and_read(backend, pg_url, items, payloads)


async def test_exotic_characters_and_odd_spacing_are_kept(
    backend: PostgresBackend, pg_url: str
) -> None:
    items = [
        {"role": "user", "content": "a\u0000b \udc80 \ud83d\ude00 😀 é \u2028", "k": [1.5e300]},
        {"b": 1, "a": 2, "dup": "keys stay in their order"},
    ]
    payloads = [*encode_items(items[:1]), '{ "b" : 1,\t"a":2 , "dup":"keys stay in their order"}']
    await write_and_read(backend, pg_url, items, payloads)


async def test_a_big_payload_comes_back_whole(backend: PostgresBackend, pg_url: str) -> None:
    items = [user("x" * 8_000_000), {"role": "assistant", "content": ["y" * 1000] * 2000}]
    await write_and_read(backend, pg_url, items, encode_items(items))


# --- times ------------------------------------------------------------------------------------

BOUNDARIES = [
    datetime.min.replace(tzinfo=UTC),
    datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 0, 0, 500_000, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 7, 999_999, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    datetime(2200, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
]
# Where a float holds every microsecond (|t| < 2**53 µs, about 285 years around 1970), the
# clock's datetime itself comes back; elsewhere what SQLite's REAL column reads back does.
EXACT = (datetime(1700, 1, 1, tzinfo=UTC), datetime(2240, 1, 1, tzinfo=UTC))


async def check_time(backend: PostgresBackend, moment: datetime) -> None:
    session_id = f"t{next(_ids)}"
    seconds = to_timestamp(moment)
    await append(backend, session_id, [user("q")], now=seconds)
    stats = await backend.session_stats(session_id)
    assert stats is not None
    assert stats.created_at == stats.last_activity == from_timestamp(seconds)
    if EXACT[0] <= moment < EXACT[1]:
        assert stats.last_activity == moment
        # Idle means strictly before the cutoff, to the microsecond.
        later = to_timestamp(moment + timedelta(microseconds=1))
        idle = {s.session_id for s in await backend.list_idle_sessions(later, None)}
        assert session_id in idle
        idle = {s.session_id for s in await backend.list_idle_sessions(seconds, None)}
        assert session_id not in idle


async def test_times_at_the_boundaries_round_trip(backend: PostgresBackend) -> None:
    for moment in BOUNDARIES:
        await check_time(backend, moment)


@DB_SETTINGS
@given(moment=st.datetimes(timezones=st.just(UTC)))
async def test_any_clock_time_round_trips(backend: PostgresBackend, moment: datetime) -> None:
    await check_time(backend, moment)


async def test_the_server_time_zone_does_not_matter(pg_database: str) -> None:
    # Directly only: PgBouncer would reuse server connections opened before the change.
    url = with_database(require_postgres(PG_URL), pg_database)
    name = sql.Identifier(pg_database).as_string()
    await query(url, f"ALTER DATABASE {name} SET timezone = 'Pacific/Chatham'")
    assert (await query(url, "SHOW timezone")) == [("Pacific/Chatham",)]
    backend = PostgresBackend(url)
    try:
        await check_time(backend, datetime(2026, 7, 1, 12, 30, 15, 123_456, tzinfo=UTC))
        await check_time(backend, datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    finally:
        await close_pools()
