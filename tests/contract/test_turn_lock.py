"""``session.turn_lock()``: one run at a time per session, across tasks, on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from agent_sessions import AgentSessionsError, TurnLockTimeoutError, get_agent_session
from tests.conftest import FakeClock
from tests.items import assistant, user

from .helpers import is_postgres


async def run_turns(target: str, *, lock: bool, turns: int = 6) -> list[dict[str, Any]]:
    """Concurrent tasks, a session object each, each writing a turn as the Runner does."""

    async def turn(index: int) -> None:
        with get_agent_session("ada", "c1", db_path=target, max_messages=100) as session:
            guard = session.turn_lock(timeout=10) if lock else contextlib.nullcontext()
            async with guard:
                await session.add_items([user(f"q{index}")])  # type: ignore[list-item]
                await asyncio.sleep(0)  # the model call: other tasks run meanwhile
                await session.add_items([assistant(f"a{index}")])  # type: ignore[list-item]

    await asyncio.gather(*(turn(index) for index in range(turns)))
    with get_agent_session("ada", "c1", db_path=target) as session:
        items = await session.get_items()
        await session.clear_session()
    return items


def contiguous(items: list[dict[str, Any]]) -> bool:
    """Whether every user message is followed by its own reply (``q3`` then ``a3``)."""
    pairs = zip(items[::2], items[1::2], strict=True)
    return all(
        answer == assistant(f"a{question['content'][1:]}") for question, answer in pairs
    ) and all(item["role"] == "user" for item in items[::2])


async def lock_is_free(target: str, conversation: str = "c1", clock: Any = None) -> bool:
    with get_agent_session("ada", conversation, db_path=target, clock=clock) as probe:
        try:
            async with probe.turn_lock(timeout=0):
                return True
        except TurnLockTimeoutError:
            return False


async def test_tasks_take_turns(target: str) -> None:
    unlocked = await run_turns(target, lock=False)
    assert len(unlocked) == 12
    assert not contiguous(unlocked), "control: without the lock the turns interleave"
    locked = await run_turns(target, lock=True)
    assert len(locked) == 12
    assert contiguous(locked), locked
    assert await lock_is_free(target), "every lock released"


async def test_contention_times_out_with_a_typed_error_and_every_exit_releases(
    target: str,
) -> None:
    with (
        get_agent_session("ada", "c1", db_path=target) as holder,
        get_agent_session("ada", "c1", db_path=target) as other,
    ):
        async with holder.turn_lock():
            with pytest.raises(TurnLockTimeoutError) as tried_once:
                async with other.turn_lock(timeout=0):
                    pytest.fail("entered a held lock")
            started = time.monotonic()
            with pytest.raises(TurnLockTimeoutError):
                async with other.turn_lock(timeout=0.05):
                    pytest.fail("entered a held lock")
            assert time.monotonic() - started >= 0.05, "gave up before its timeout"
            with pytest.raises(TurnLockTimeoutError):
                async with holder.turn_lock(timeout=0):
                    pytest.fail("the lock is not reentrant")
            assert await lock_is_free(target, "c2"), "another conversation does not wait"
        async with other.turn_lock(timeout=0):  # free again once released
            pass

        with pytest.raises(ZeroDivisionError):
            async with holder.turn_lock(timeout=0):
                _ = 1 / 0
        assert await lock_is_free(target), "an exception in the block releases"

        inside = asyncio.Event()

        async def hold_forever() -> None:
            async with holder.turn_lock(timeout=0):
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(hold_forever())
        try:
            await inside.wait()
            assert not await lock_is_free(target)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await lock_is_free(target), "a cancellation releases"

    error = tried_once.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, AgentSessionsError)
    assert (error.session_id, error.timeout) == ("user_ada_conv_c1", 0)
    assert "'user_ada_conv_c1'" in str(error)
    assert error.path == (holder.database_url if is_postgres(target) else holder.db_path)
    if is_postgres(target):
        password = urlsplit(target).password
        assert not password or password not in str(error)
    else:
        assert target in str(error)


async def test_an_expired_lease_is_taken_over_when_the_clock_moves(
    target: str, clock: FakeClock
) -> None:
    # The holder renews every lease / 3 seconds of real time, which this test never lasts:
    # to the contender it looks like a holder that died. Its lease ends 30 s after it took
    # the lock, by the sessions' shared clock.
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def stalled_holder() -> None:
        with get_agent_session("ada", "c1", db_path=target, clock=clock) as session:
            async with session.turn_lock(timeout=0, lease=30):
                inside.set()
                await leave.wait()

    holder = asyncio.create_task(stalled_holder())
    try:
        await inside.wait()
        with get_agent_session("ada", "c1", db_path=target, clock=clock) as contender:
            clock.advance(seconds=29.9)
            with pytest.raises(TurnLockTimeoutError):
                async with contender.turn_lock(timeout=0):
                    pytest.fail("taken before the lease ran out")
            clock.advance(seconds=0.1)
            async with contender.turn_lock(timeout=0, lease=30):
                leave.set()
                await holder  # the old holder leaves: it must not release the new one's lock
                assert not await lock_is_free(target, clock=clock), "the stale holder released it"
                clock.advance(seconds=29.9)
                assert not await lock_is_free(target, clock=clock)
        assert await lock_is_free(target, clock=clock)
    finally:
        leave.set()
        await holder
