"""Cleanup of idle sessions, timed by an injected clock, on every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from agent_sessions import InvalidArgumentError, SessionManager, SessionNotFoundError
from tests.conftest import FakeClock
from tests.items import assistant, user

from .helpers import insert_corrupt_rows, stored_rows, write


def manager_for(
    target: str, clock: FakeClock, *, retention_days: int = 7, batch: int = 100
) -> SessionManager:
    return SessionManager(
        target,
        max_messages=1000,
        retention_days=retention_days,
        clock=clock,
        cleanup_batch_size=batch,
    )


async def test_exact_at_the_retention_boundary(target: str, clock: FakeClock) -> None:
    written = clock.now
    sid = await write(target, "u", "c", [user("x"), assistant("y")], clock=clock)
    async with manager_for(target, clock) as manager:
        clock.now = written + timedelta(days=7)  # idle exactly retention_days: kept
        assert await manager.list_inactive_sessions() == []
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 0
        assert await manager.cleanup_inactive_sessions() == 0
        assert await manager.get_active_session_count() == 1
        clock.advance(microseconds=1)  # one microsecond more: idle
        (listed,) = await manager.list_inactive_sessions()
        assert (listed.session_id, listed.last_activity, listed.message_count) == (sid, written, 2)
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 1
        assert stored_rows(target) == {sid: 2}, "a dry run deleted something"
        assert await manager.cleanup_inactive_sessions() == 1
        assert await manager.list_inactive_sessions() == []
        with pytest.raises(SessionNotFoundError):
            await manager.get_session_stats(sid)
    assert stored_rows(target) == {}


async def test_idle_sessions_go_whole_in_batches_and_active_ones_stay(
    target: str, clock: FakeClock
) -> None:
    start = clock.now
    idle = []
    for n in range(12):
        idle.append(
            await write(target, "u", f"idle{n:02}", [user("q"), assistant(f"{n}")], clock=clock)
        )
        clock.advance(minutes=1)
    insert_corrupt_rows(target, idle[3], ["{bad"])  # a corrupt row is a row too
    clock.now = start + timedelta(days=8)
    keep = [await write(target, "u", f"keep{n}", [user("x")], clock=clock) for n in range(2)]
    # A clock that jumps back writes no earlier activity: the session stays active.
    await write(target, "u", "keep0", [user("late")], clock=FakeClock(start))
    async with manager_for(target, clock, batch=3) as manager:
        assert await manager.cleanup_inactive_sessions() == 12
        assert await manager.cleanup_inactive_sessions() == 0, "a second run found more"
        assert await manager.get_session_count() == 2
        clock.now = start - timedelta(days=365)  # the manager's clock jumps back a year
        assert await manager.cleanup_inactive_sessions() == 0
    assert stored_rows(target) == {keep[0]: 2, keep[1]: 1}


async def test_list_inactive_sessions_shows_what_cleanup_deletes(
    target: str, clock: FakeClock
) -> None:
    start = clock.now
    idle = []
    for n in range(4):  # idle for 13, 12, 11 and 10 days at the end
        idle.append(await write(target, "u", f"idle{n}", [user("x")] * (n + 1), clock=clock))
        clock.advance(days=1)
    clock.now = start + timedelta(days=13)
    active = await write(target, "u", "active", [user("x")], clock=clock)
    before = stored_rows(target)
    async with manager_for(target, clock, retention_days=30) as manager:
        assert await manager.list_inactive_sessions() == []
        listed = await manager.list_inactive_sessions(retention_days=7)
        assert [s.session_id for s in listed] == idle, "oldest activity first"
        assert [s.message_count for s in listed] == [1, 2, 3, 4]
        assert [s.last_activity for s in listed] == [start + timedelta(days=n) for n in range(4)]
        two = await manager.list_inactive_sessions(retention_days=7, limit=2)
        assert [s.session_id for s in two] == idle[:2]
        eleven = await manager.list_inactive_sessions(retention_days=11)
        assert [s.session_id for s in eleven] == idle[:2]
        bad_calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: manager.list_inactive_sessions(limit=0),
            lambda: manager.list_inactive_sessions(limit=True),  # type: ignore[arg-type]
            lambda: manager.list_inactive_sessions(retention_days=0),
            lambda: manager.cleanup_inactive_sessions(retention_days=0),
            lambda: manager.cleanup_inactive_sessions(retention_days=-3, dry_run=True),
        ]
        for bad in bad_calls:
            with pytest.raises(InvalidArgumentError):
                await bad()
        assert stored_rows(target) == before, "listing or refusing changed the database"
        assert await manager.cleanup_inactive_sessions(dry_run=True, retention_days=11) == 2
        assert await manager.cleanup_inactive_sessions(retention_days=11) == 2
        assert manager.retention_days == 30, "the override must not stick"
        assert await manager.cleanup_inactive_sessions() == 0
        assert await manager.cleanup_inactive_sessions(retention_days=7) == 2
    assert set(stored_rows(target)) == {active}


class RacingBackend:
    """Delegates to a manager's backend, running ``hook`` before the first cleanup batch."""

    def __init__(self, backend: Any, hook: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._hook: Callable[[], Awaitable[None]] | None = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def delete_idle_batch(self, cutoff: float, batch_size: int) -> int:
        if self._hook is not None:
            hook, self._hook = self._hook, None
            await hook()
        return int(await self._backend.delete_idle_batch(cutoff, batch_size))


async def test_a_session_written_while_cleanup_runs_is_kept_whole(
    target: str, clock: FakeClock
) -> None:
    # Cleanup has fixed its cutoff and is about to delete its first batch, which holds the
    # oldest session, when a reply is written to that session: the batch must see it active.
    ids = []
    for n in range(5):
        ids.append(await write(target, "u", f"s{n}", [user("q"), assistant("a")], clock=clock))
        clock.advance(minutes=1)
    clock.advance(days=10)

    async def reply_to_the_oldest() -> None:
        # A retention longer than the idle time: the write adds to the idle session rather
        # than start it afresh, so a row lost could only be cleanup's.
        await write(target, "u", "s0", [user("late reply")], clock=clock, retention="3650d")

    manager = manager_for(target, clock, batch=2)
    manager._backend = RacingBackend(manager._backend, reply_to_the_oldest)  # type: ignore[assignment]
    async with manager:
        assert await manager.cleanup_inactive_sessions() == 4
        stats = await manager.get_session_stats(ids[0])
    assert (stats.message_count, stats.last_activity) == (3, clock.now)
    assert stored_rows(target) == {ids[0]: 3}, "the written session lost rows, or others stayed"
