"""PostgresBackend keeps each promise of the Backend protocol, on a real server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from psycopg.conninfo import conninfo_to_dict

from agent_sessions.backends.base import Backend, SessionKey, Totals
from agent_sessions.backends.postgres import PostgresBackend
from agent_sessions.backends.postgres.errors import redact
from agent_sessions.clock import from_timestamp
from agent_sessions.codec import encode_items
from agent_sessions.errors import InvalidArgumentError, InvalidIdentifierError
from tests.items import assistant, call, output, user

from .helpers import T0, append, query


def test_it_is_a_backend() -> None:
    backend: Backend = PostgresBackend("postgresql://u@localhost/db")
    assert backend.location == "postgresql://u@localhost/db"


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app@db:5432/x"),
        ("postgres://app:p%40ss@h1,h2/x?sslmode=require", "postgres://app@h1,h2/x?sslmode=require"),
        ("postgresql://app@db/x?password=s3cret&sslmode=off", "postgresql://app@db/x?sslmode=off"),
        ("postgresql:///x", "postgresql:///x"),
    ],
)
def test_location_is_the_url_without_its_password(url: str, location: str) -> None:
    assert redact(url) == location
    assert PostgresBackend(url).location == location


def test_a_connection_string_loses_its_password_too() -> None:
    location = redact("host=db user=app password='s3 cret' dbname=x")
    assert conninfo_to_dict(location) == {"host": "db", "user": "app", "dbname": "x"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pool_min_size": -1},
        {"pool_max_size": 0},
        {"pool_min_size": 5, "pool_max_size": 4},
        {"connect_timeout": 0},
        {"connect_timeout": float("nan")},
        {"statement_timeout": -1},
        {"statement_timeout": True},
        {"statement_timeout": 3e6},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        PostgresBackend("postgresql://u@localhost/db", **kwargs)  # type: ignore[arg-type]


async def test_an_unknown_session_has_nothing(backend: PostgresBackend) -> None:
    assert (await backend.read_items("nobody", None)).items == []
    assert (await backend.read_items("nobody", 3)).items == []
    assert await backend.stored_items("nobody") is None
    assert await backend.session_owner("nobody") is None
    assert await backend.session_stats("nobody") is None
    assert await backend.pop_item("nobody", T0) is None
    assert await backend.delete_session("nobody") is None
    assert await backend.prune_session("nobody", 5) is None
    assert await backend.session_ids() == []
    assert await backend.totals(T0) == Totals(sessions=0, items=0, active_sessions=0)


async def test_items_come_back_in_order_with_the_sdk_limits(backend: PostgresBackend) -> None:
    items = [user("q1"), assistant("a1"), user("q2"), assistant("a2")]
    assert await append(backend, "s", items[:1]) == 0
    await append(backend, "s", items[1:])
    assert (await backend.read_items("s", None)).items == items
    assert (await backend.read_items("s", -1)).items == items
    assert (await backend.read_items("s", 0)).items == []
    assert (await backend.read_items("s", 3)).items == items[1:]
    assert (await backend.read_items("s", 99)).items == items
    stored = await backend.stored_items("s")
    assert stored is not None
    assert stored.items == items
    assert stored.corrupt_row_ids == []


async def test_corrupt_rows_are_set_aside_and_the_window_widens(
    backend: PostgresBackend, pg_url: str
) -> None:
    await append(backend, "s", [user("q1"), assistant("a1")])
    # Rows another program wrote: not JSON objects. Their seqs continue the session's.
    await query(
        pg_url,
        "INSERT INTO agent_sessions_item (session_id, seq, message_data, is_user) "
        "VALUES ('s', 10, '{broken', false), ('s', 11, '[1]', false)",
    )
    decoded = await backend.read_items("s", 1)
    assert decoded.items == [assistant("a1")]
    assert decoded.corrupt_row_ids == [10, 11]
    stats = await backend.session_stats("s")
    assert stats is not None
    assert (stats.message_count, stats.corrupt_items) == (2, 2)
    # pop_item skips corrupt rows and leaves them.
    assert await backend.pop_item("s", T0 + 1) == assistant("a1")
    assert (await backend.stored_items("s")).corrupt_row_ids == [10, 11]  # type: ignore[union-attr]


async def test_pop_item_removes_the_newest_and_records_activity(backend: PostgresBackend) -> None:
    await append(backend, "s", [user("q1"), assistant("a1")], now=T0)
    assert await backend.pop_item("s", T0 + 5) == assistant("a1")
    assert (await backend.read_items("s", None)).items == [user("q1")]
    stats = await backend.session_stats("s")
    assert stats is not None
    assert stats.last_activity == from_timestamp(T0 + 5)
    assert await backend.pop_item("s", T0 + 6) == user("q1")
    assert await backend.pop_item("s", T0 + 7) is None
    stats = await backend.session_stats("s")
    assert stats is not None
    assert stats.last_activity == from_timestamp(T0 + 6)  # nothing popped: not touched


async def test_the_owner_is_kept_from_the_first_write_that_names_it(
    backend: PostgresBackend,
) -> None:
    await append(backend, "s", [user("q")], user_id=None, conversation_id=None)
    assert await backend.session_owner("s") == (None, None)
    await append(backend, "s", [user("q")], user_id="alice", conversation_id="c1")
    await append(backend, "s", [user("q")], user_id="bob", conversation_id="c2")
    assert await backend.session_owner("s") == ("alice", "c1")


async def test_activity_never_goes_back(backend: PostgresBackend) -> None:
    await append(backend, "s", [user("q")], now=T0 + 10)
    await append(backend, "s", [user("q")], now=T0)
    stats = await backend.session_stats("s")
    assert stats is not None
    assert stats.created_at == from_timestamp(T0 + 10)
    assert stats.last_activity == from_timestamp(T0 + 10)


async def test_delete_session_removes_its_rows_and_no_others(backend: PostgresBackend) -> None:
    await append(backend, "a", [user("q"), assistant("r")])
    await append(backend, "b", [user("q")])
    assert await backend.delete_session("a") == 2
    assert await backend.delete_session("a") is None
    assert await backend.session_ids() == ["b"]
    assert await backend.totals(T0) == Totals(sessions=1, items=1, active_sessions=1)
    # A session written again after its deletion starts afresh.
    await append(backend, "a", [user("again")], now=T0 + 1)
    stats = await backend.session_stats("a")
    assert stats is not None
    assert stats.created_at == from_timestamp(T0 + 1)
    assert (await backend.read_items("a", None)).items == [user("again")]


async def test_listing_orders_by_activity_then_id(backend: PostgresBackend) -> None:
    await append(backend, "b", [user("q")], now=T0, user_id="alice")
    await append(backend, "a", [user("q")], now=T0, user_id="alice")
    await append(backend, "c", [user("q")], now=T0 + 1, user_id="bob")
    listed = [stats for stats, _ in await backend.list_sessions(None, 10, 0)]
    assert [s.session_id for s in listed] == ["c", "a", "b"]
    assert [s.session_id for s, _ in await backend.list_sessions(None, 1, 1)] == ["a"]
    assert [s.session_id for s, _ in await backend.list_sessions("alice", 10, 0)] == ["a", "b"]
    assert await backend.list_sessions("nobody", 10, 0) == []
    assert listed[0].created_at.tzinfo is UTC


async def test_session_ids_are_in_code_point_order(backend: PostgresBackend) -> None:
    # A database's default collation may sort these otherwise; Python and SQLite do not.
    ids = ["b", "B", "a", "_x", "é", "z", "Z", "😀", "a b", "ab"]
    for session_id in ids:
        await append(backend, session_id, [user("q")])
    assert await backend.session_ids() == sorted(ids)


async def test_idle_sessions_are_those_before_the_cutoff(backend: PostgresBackend) -> None:
    await append(backend, "old", [user("q")], now=T0)
    await append(backend, "older", [user("q"), assistant("r")], now=T0 - 10)
    await append(backend, "new", [user("q")], now=T0 + 10)
    idle = await backend.list_idle_sessions(T0 + 1, None)
    assert [s.session_id for s in idle] == ["older", "old"]
    assert [s.session_id for s in await backend.list_idle_sessions(T0 + 1, 1)] == ["older"]
    assert await backend.count_idle_sessions(T0) == 1  # strictly before: "old" is not
    assert await backend.totals(T0) == Totals(sessions=3, items=4, active_sessions=2)
    assert await backend.delete_idle_batch(T0 + 1, 1) == 1
    assert await backend.delete_idle_batch(T0 + 1, 10) == 1
    assert await backend.delete_idle_batch(T0 + 1, 10) == 0
    assert await backend.session_ids() == ["new"]
    assert await backend.totals(T0) == Totals(sessions=1, items=1, active_sessions=1)
    await backend.finish_cleanup()


async def test_an_output_whose_call_is_gone_is_left_out(
    backend: PostgresBackend, caplog: pytest.LogCaptureFixture
) -> None:
    await append(backend, "s", [user("q"), call("c1")])
    with caplog.at_level(logging.WARNING, logger="agent_sessions"):
        await append(backend, "s", [output("c1"), output("gone"), assistant("a")])
    assert (await backend.read_items("s", None)).items == [
        user("q"),
        call("c1"),
        output("c1"),
        assistant("a"),
    ]
    assert "not storing 1 output(s)" in caplog.text
    assert "call:gone" in caplog.text


async def test_an_empty_batch_records_activity(backend: PostgresBackend) -> None:
    assert await append(backend, "s", [], now=T0) == 0
    stats = await backend.session_stats("s")
    assert stats is not None
    assert stats.message_count == 0
    assert stats.last_activity == datetime.fromtimestamp(T0, UTC)


async def test_a_nul_in_a_session_id_is_refused_by_name(backend: PostgresBackend) -> None:
    # PostgreSQL text cannot hold NUL (SQLite can): refused before reaching the server.
    with pytest.raises(InvalidIdentifierError, match="NUL"):
        await append(backend, "a\x00b", [user("q")])
    with pytest.raises(InvalidIdentifierError, match="NUL"):
        await backend.read_items("a\x00b", None)
    owner = SessionKey("ok", None, None)
    assert await backend.append_items(owner, [], encode_items([]), T0, 5) == 0


async def test_close_is_idempotent_and_leaves_the_shared_pool(pg_url: str) -> None:
    first, second = PostgresBackend(pg_url), PostgresBackend(pg_url)
    await append(first, "s", [user("q")])
    await first.close()
    await first.close()
    assert not first.holds_resources
    assert (await second.read_items("s", None)).items == [user("q")]
