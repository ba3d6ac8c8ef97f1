"""``AgentSession.turn_lock``: one run at a time per session, across tasks and processes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_sessions import (
    AgentSession,
    AgentSessionsError,
    InvalidArgumentError,
    SessionClosedError,
    TurnLockTimeoutError,
)
from agent_sessions.backends.sqlite import connection, schema, sql
from tests.conftest import FakeClock
from tests.items import assistant, user

LOCKS = schema.TURN_LOCKS_TABLE


def lock_rows(db_path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(f"SELECT session_id, owner, expires_ts FROM {LOCKS}").fetchall()


async def run_turns(
    session_for: Callable[[int], AgentSession], lock: bool, turns: int = 6
) -> list[dict[str, Any]]:
    """``turns`` concurrent tasks each writing a turn as the Runner does: input, then output."""

    async def turn(index: int) -> None:
        session = session_for(index)
        guard = session.turn_lock(timeout=10) if lock else contextlib.nullcontext()
        async with guard:
            await session.add_items([user(f"q{index}")])
            await asyncio.sleep(0)  # the model call: other tasks run meanwhile
            await session.add_items([assistant(f"a{index}")])

    await asyncio.gather(*(turn(index) for index in range(turns)))
    return await session_for(0).get_items()


def turns_are_contiguous(items: list[dict[str, Any]]) -> bool:
    """Whether every user message is followed by its own reply (``q3`` then ``a3``)."""
    pairs = list(zip(items[::2], items[1::2], strict=True))
    return all(
        question == user(f"q{question['content'][1:]}")
        and answer == assistant(f"a{question['content'][1:]}")
        for question, answer in pairs
    )


# --- mutual exclusion ---------------------------------------------------------------------


async def test_tasks_on_one_file_take_turns(db_path: Path) -> None:
    # A session object per task, as a web app opens one per request.
    opened: list[AgentSession] = []

    def session_for(index: int) -> AgentSession:
        opened.append(AgentSession("ada", "c1", db_path=db_path, max_messages=100))
        return opened[-1]

    try:
        unlocked = await run_turns(session_for, lock=False)
        assert not turns_are_contiguous(unlocked), "without the lock the turns should interleave"
        await opened[0].clear_session()
        locked = await run_turns(session_for, lock=True)
    finally:
        for session in opened:
            session.close()
    assert len(locked) == 12
    assert turns_are_contiguous(locked), locked
    assert lock_rows(db_path) == [], "every lock released"


async def test_tasks_on_one_in_memory_session_take_turns() -> None:
    with AgentSession("ada", "c1", db_path=":memory:", max_messages=100) as session:
        unlocked = await run_turns(lambda _: session, lock=False)
        assert not turns_are_contiguous(unlocked)
        await session.clear_session()
        locked = await run_turns(lambda _: session, lock=True)
    assert len(locked) == 12
    assert turns_are_contiguous(locked), locked


async def test_sessions_of_other_conversations_do_not_wait(db_path: Path) -> None:
    with (
        AgentSession("ada", "c1", db_path=db_path) as first,
        AgentSession("ada", "c2", db_path=db_path) as second,
    ):
        async with first.turn_lock(timeout=0), second.turn_lock(timeout=0):
            assert len(lock_rows(db_path)) == 2


# --- waiting, timeouts and leases ---------------------------------------------------------


async def test_timeout_raises_a_typed_error_naming_the_session(db_path: Path) -> None:
    with (
        AgentSession("ada", "c1", db_path=db_path) as holder,
        AgentSession("ada", "c1", db_path=db_path) as other,
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
        async with other.turn_lock(timeout=0):  # free again once released
            pass
    error = tried_once.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, AgentSessionsError)
    assert error.session_id == "user_ada_conv_c1"
    assert error.timeout == 0
    assert error.path == str(db_path)
    assert "'user_ada_conv_c1'" in str(error)
    assert str(db_path) in str(error)


async def test_a_waiter_gets_the_lock_when_the_holder_leaves(db_path: Path) -> None:
    entered: list[str] = []
    holder_inside = asyncio.Event()
    leave = asyncio.Event()

    async def hold(name: str, session: AgentSession, wait_for: asyncio.Event | None) -> None:
        async with session.turn_lock(timeout=10):
            entered.append(name)
            holder_inside.set()
            if wait_for is not None:
                await wait_for.wait()
            entered.append(f"{name} leaves")

    with (
        AgentSession("ada", "c1", db_path=db_path) as first,
        AgentSession("ada", "c1", db_path=db_path) as second,
    ):
        holder = asyncio.create_task(hold("first", first, leave))
        await holder_inside.wait()
        waiter = asyncio.create_task(hold("second", second, None))
        await asyncio.sleep(0)  # let it try once
        assert entered == ["first"]
        leave.set()
        await asyncio.gather(holder, waiter)
    assert entered == ["first", "first leaves", "second", "second leaves"]


async def test_the_lease_of_a_dead_holder_expires(db_path: Path, clock: FakeClock) -> None:
    with AgentSession("ada", "c1", db_path=db_path, clock=clock) as session:
        now = clock.now.timestamp()
        with closing(schema.connect(db_path)) as conn, connection.write_transaction(conn):
            # A holder killed while it held the lock: its row stays until the lease ends.
            assert sql.take_turn_lock(conn, session.session_id, "dead", now, now + 30)
        clock.advance(seconds=29.9)
        with pytest.raises(TurnLockTimeoutError):
            async with session.turn_lock(timeout=0):
                pass
        clock.advance(seconds=0.1)
        async with session.turn_lock(timeout=0, lease=30):
            [(_, owner, expires)] = lock_rows(db_path)
            assert owner != "dead"
            assert expires == clock.now.timestamp() + 30
            with closing(schema.connect(db_path)) as conn, connection.write_transaction(conn):
                # The dead holder coming back cannot release what is no longer its lock.
                assert not sql.release_turn_lock(conn, session.session_id, "dead")
                assert not sql.renew_turn_lock(conn, session.session_id, "dead", now + 99)
            with pytest.raises(TurnLockTimeoutError):
                async with session.turn_lock(timeout=0):
                    pass
    assert lock_rows(db_path) == []


async def test_the_holder_renews_its_lease_while_it_runs(db_path: Path) -> None:
    # Real time here: a lease of 0.3 s, renewed every 0.1 s. A contender waiting 1 s would
    # take over an unrenewed lease after 0.3 s; it must time out instead.
    with (
        AgentSession("ada", "c1", db_path=db_path) as holder,
        AgentSession("ada", "c1", db_path=db_path) as contender,
    ):
        async with holder.turn_lock(lease=0.3):
            [(_, _, first_expiry)] = lock_rows(db_path)
            with pytest.raises(TurnLockTimeoutError):
                async with contender.turn_lock(timeout=1.0):
                    pytest.fail("took over a lease its holder was renewing")
            [(_, _, expiry)] = lock_rows(db_path)
            assert expiry > first_expiry + 0.5, "the lease was not renewed"
    assert lock_rows(db_path) == []


def test_a_killed_process_releases_the_lock_when_its_lease_ends(db_path: Path) -> None:
    code = (
        "import asyncio, os, sys\n"
        "from agent_sessions import AgentSession\n"
        "async def main():\n"
        f"    session = AgentSession('ada', 'c1', db_path={str(db_path)!r})\n"
        "    async with session.turn_lock(lease=60):\n"
        "        os._exit(0)  # killed while it holds the lock: nothing runs after this\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    [(session_id, _, expires)] = lock_rows(db_path)

    async def try_at(moment: float) -> bool:
        clock = FakeClock(datetime.fromtimestamp(moment, UTC))
        with AgentSession("ada", "c1", db_path=db_path, clock=clock) as session:
            try:
                async with session.turn_lock(timeout=0):
                    return True
            except TurnLockTimeoutError:
                return False

    assert session_id == "user_ada_conv_c1"
    assert not asyncio.run(try_at(expires - 1)), "taken before the dead holder's lease ended"
    assert asyncio.run(try_at(expires)), "still locked after the dead holder's lease ended"
    assert lock_rows(db_path) == []


# --- release on every exit ----------------------------------------------------------------


async def test_an_exception_in_the_block_releases_the_lock(db_path: Path) -> None:
    with AgentSession("ada", "c1", db_path=db_path) as session:
        with pytest.raises(ZeroDivisionError):
            async with session.turn_lock(timeout=0):
                _ = 1 / 0
        assert lock_rows(db_path) == []
        async with session.turn_lock(timeout=0):
            pass


async def test_cancelling_the_holder_releases_the_lock(db_path: Path) -> None:
    inside = asyncio.Event()

    async def hold(session: AgentSession) -> None:
        async with session.turn_lock(timeout=0):
            inside.set()
            await asyncio.Event().wait()  # a run that never ends by itself

    with AgentSession("ada", "c1", db_path=db_path) as session:
        task = asyncio.create_task(hold(session))
        await inside.wait()
        assert len(lock_rows(db_path)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lock_rows(db_path) == []
        with pytest.raises(TimeoutError):  # asyncio.timeout around the block works the same
            async with asyncio.timeout(0.01), session.turn_lock(timeout=0):
                await asyncio.Event().wait()
        assert lock_rows(db_path) == []


async def test_cancelling_the_holder_again_while_it_releases_still_releases(
    db_path: Path,
) -> None:
    inside = asyncio.Event()

    async def hold(session: AgentSession) -> None:
        async with session.turn_lock(timeout=0):
            inside.set()
            await asyncio.Event().wait()

    with AgentSession("ada", "c1", db_path=db_path) as session:
        task = asyncio.create_task(hold(session))
        await inside.wait()
        task.cancel()
        await asyncio.sleep(0)  # one step: the holder leaves its block and starts releasing
        task.cancel()  # e.g. a server shutting down cancels its requests twice
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lock_rows(db_path) == []


async def test_cancelling_a_waiter_leaves_nothing_behind(db_path: Path) -> None:
    with (
        AgentSession("ada", "c1", db_path=db_path) as holder,
        AgentSession("ada", "c1", db_path=db_path) as waiter,
    ):
        async with holder.turn_lock(timeout=0):
            [row] = lock_rows(db_path)

            async def wait_forever() -> None:
                async with waiter.turn_lock():
                    pytest.fail("entered a held lock")

            task = asyncio.create_task(wait_forever())
            await asyncio.sleep(0)  # let it try once
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert lock_rows(db_path) == [row], "the holder's lock was touched"
        assert lock_rows(db_path) == []
        async with waiter.turn_lock(timeout=0):
            pass


async def test_closing_the_session_inside_the_block_still_releases(db_path: Path) -> None:
    session = AgentSession("ada", "c1", db_path=db_path)
    async with session.turn_lock(timeout=0):
        session.close()
    assert lock_rows(db_path) == []
    with pytest.raises(SessionClosedError, match="user_ada_conv_c1"):
        async with session.turn_lock(timeout=0):
            pytest.fail("locked a closed session")

    memory = AgentSession("ada", "c1", db_path=":memory:")
    async with memory.turn_lock(timeout=0):
        memory.close()  # the database goes with it; leaving the block must not fail


async def test_the_lock_is_not_reentrant(db_path: Path) -> None:
    with AgentSession("ada", "c1", db_path=db_path) as session:
        async with session.turn_lock(timeout=0):
            with pytest.raises(TurnLockTimeoutError):
                async with session.turn_lock(timeout=0):
                    pass
            assert len(lock_rows(db_path)) == 1, "the failed attempt released the held lock"


# --- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "lease"),
    [
        (-1, 30),
        (math.nan, 30),
        ("1", 30),
        (True, 30),
        (None, 0),
        (None, 0.05),  # below MIN_TURN_LOCK_LEASE: renewals would spin
        (None, -1),
        (None, math.inf),
        (None, math.nan),
        (None, None),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_written(
    db_path: Path, timeout: Any, lease: Any
) -> None:
    with (
        AgentSession("ada", "c1", db_path=db_path) as session,
        pytest.raises(InvalidArgumentError, match="timeout" if lease == 30 else "lease"),
    ):
        session.turn_lock(timeout, lease=lease)
    assert lock_rows(db_path) == []


async def test_unbounded_waits_are_accepted(db_path: Path) -> None:
    with AgentSession("ada", "c1", db_path=db_path) as session:
        for timeout in (None, math.inf, 10**400, 0, 0.5):
            async with session.turn_lock(timeout):
                pass
