"""How many round trips each operation takes, counted at a TCP proxy in front of the server.

The common write (``add_items`` of a turn, no full prune needed) is one round trip: BEGIN,
the statement timeout, the upsert, the insert, the pruning statement and COMMIT are sent
together, each statement reading what it needs from the locked session row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from agent_sessions.backends.postgres import PostgresBackend
from tests.items import assistant, call, output, user

from .helpers import T0, append
from .proxy import RoundTripProxy


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[RoundTripProxy]:
    parts = urlsplit(pg_url)
    counting = RoundTripProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await counting.start()
    yield counting
    await counting.close()


@pytest.fixture
async def counted(pg_url: str, proxy: RoundTripProxy) -> PostgresBackend:
    """A backend whose one pooled connection goes through the proxy, already opened."""
    backend = PostgresBackend(proxy.url(pg_url), pool_min_size=1, pool_max_size=1)
    await append(backend, "warm-up", [user("q")])
    return backend


async def round_trips(proxy: RoundTripProxy, operation: object) -> int:
    proxy.flights = 0
    await operation  # type: ignore[misc]
    return proxy.flights


async def test_a_turn_is_written_in_one_round_trip_each(
    counted: PostgresBackend, proxy: RoundTripProxy
) -> None:
    trips = []
    for turn in range(6):  # max_items 4: from the second turn on, every write also prunes
        t = str(turn)
        trips.append(await round_trips(proxy, append(counted, "s", [user(t)], max_items=4)))
        batch = [call(t), output(t), assistant(t)]
        trips.append(await round_trips(proxy, append(counted, "s", batch, max_items=4)))
    assert trips == [1] * 12
    assert (await counted.read_items("s", None)).items == [
        user("5"),
        call("5"),
        output("5"),
        assistant("5"),
    ]


async def test_an_output_answering_a_stored_call_is_still_one_round_trip(
    counted: PostgresBackend, proxy: RoundTripProxy
) -> None:
    await append(counted, "s", [user("q"), call("c1")])
    batch = [output("c1"), output("gone"), assistant("a")]
    assert await round_trips(proxy, append(counted, "s", batch)) == 1


async def test_a_session_needing_the_full_rule_takes_more(
    counted: PostgresBackend, proxy: RoundTripProxy
) -> None:
    # No user message among the newest 2: the fast path cannot cut (the turn stays whole).
    # The first attempt is refused by the server (1), rolled back (1), then redone reading
    # the whole session (3).
    history = [user("q"), assistant("a"), call("c1"), output("c1")]
    await append(counted, "s", history[:2])
    assert await round_trips(proxy, append(counted, "s", history[2:], max_items=2)) == 5
    assert (await counted.read_items("s", None)).items == history


async def test_reads_take_one_round_trip(counted: PostgresBackend, proxy: RoundTripProxy) -> None:
    await append(counted, "s", [user("q"), assistant("a")])
    assert await round_trips(proxy, counted.read_items("s", None)) == 1
    assert await round_trips(proxy, counted.read_items("s", 1)) == 1
    assert await round_trips(proxy, counted.stored_items("s")) == 1
    assert await round_trips(proxy, counted.session_stats("s")) == 1
    assert await round_trips(proxy, counted.list_sessions(None, 10, 0)) == 1
    assert await round_trips(proxy, counted.totals(T0)) == 1
    assert await round_trips(proxy, counted.health(T0)) == 1
    assert await round_trips(proxy, counted.delete_session("s")) == 1


async def test_a_sweep_record_takes_one_round_trip_at_each_end(
    counted: PostgresBackend, proxy: RoundTripProxy
) -> None:
    sweep = await counted.start_sweep(T0)
    assert await round_trips(proxy, counted.start_sweep(T0)) == 1
    assert await round_trips(proxy, counted.finish_sweep(sweep, T0, "ok", 0, None)) == 1


async def test_writes_that_decide_on_what_they_read_take_two(
    counted: PostgresBackend, proxy: RoundTripProxy
) -> None:
    # Read (the newest rows, or the idle batch) under the lock, then write and COMMIT.
    await append(counted, "s", [user("q"), assistant("a")], now=T0)
    assert await round_trips(proxy, counted.pop_item("s", T0)) == 2
    assert await round_trips(proxy, counted.prune_session("s", 10)) == 2
    assert await round_trips(proxy, counted.delete_idle_batch(T0 + 1, 10)) == 2
