"""``SessionManager.health()``: size, counts, oldest activity, sweeps, latency, thresholds."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from agent_sessions import HealthReport, SessionManager, StorageBusyError, SweepRecord
from agent_sessions.backends.base import SWEEP_HISTORY
from tests.conftest import FakeClock
from tests.items import assistant, user

from .helpers import is_postgres, pg_query, sqlite_query, write


def manager_for(target: str, clock: FakeClock, **kwargs: Any) -> SessionManager:
    options: dict[str, Any] = {"max_messages": 1000, "retention_days": 7, "clock": clock}
    return SessionManager(target, **{**options, **kwargs})


def sweep_rows(target: str) -> int:
    if is_postgres(target):
        return int(pg_query(target, "SELECT count(*) FROM agent_sessions_sweep")[0][0])
    return int(sqlite_query(target, "SELECT COUNT(*) FROM agent_sessions_sweeps")[0][0])


async def test_an_empty_database(target: str, clock: FakeClock) -> None:
    async with manager_for(target, clock) as manager:
        report = await manager.health()
    assert isinstance(report, HealthReport)
    assert report.database == manager.db_path
    assert (report.sessions, report.items, report.active_sessions) == (0, 0, 0)
    assert report.average_items == 0.0
    assert report.oldest_activity is None
    assert report.last_sweep is None
    assert (report.write_latency_p50, report.write_latency_p95, report.write_samples) == (
        None,
        None,
        0,
    ), "no write in this process yet"
    assert report.thresholds_crossed == ()
    assert report.database_bytes is not None
    assert report.database_bytes > 0, "the schema takes room"


async def test_counts_size_and_oldest_activity(target: str, clock: FakeClock) -> None:
    async with manager_for(target, clock) as manager:
        empty = await manager.health()
    oldest = clock.now
    await write(target, "alice", "c1", [user("q"), assistant("a")], clock=clock)
    clock.advance(days=3, microseconds=7)
    await write(target, "bob", "c1", [user("x" * 200_000)], clock=clock)
    clock.advance(days=5)  # alice's session is now idle for 8 days, bob's for 5
    async with manager_for(target, clock) as manager:
        report = await manager.health()
    assert (report.sessions, report.items, report.active_sessions) == (2, 3, 1)
    assert report.average_items == 1.5
    assert report.oldest_activity == oldest
    assert report.oldest_activity is not None
    assert report.oldest_activity.utcoffset() == timedelta(0)
    assert empty.database_bytes is not None
    assert report.database_bytes is not None
    assert report.database_bytes > empty.database_bytes, "200 kB written and not counted"


async def test_write_latency_is_this_process_s_add_items(target: str, clock: FakeClock) -> None:
    async with manager_for(target, clock) as manager:
        before = await manager.health()
        for n in range(5):
            await write(target, "alice", f"c{n}", [user("q"), assistant("a")], clock=clock)
        after = await manager.health()
    assert (before.write_latency_p50, before.write_latency_p95, before.write_samples) == (
        None,
        None,
        0,
    )
    assert after.write_samples == 5
    assert after.write_latency_p50 is not None
    assert after.write_latency_p95 is not None
    assert 0 < after.write_latency_p50 <= after.write_latency_p95 < 60


async def test_a_sweep_is_recorded_for_every_process_to_see(target: str, clock: FakeClock) -> None:
    await write(target, "alice", "c1", [user("q")], clock=clock)
    await write(target, "bob", "c1", [user("q")], clock=clock)
    clock.advance(days=8)
    await write(target, "carol", "c1", [user("q")], clock=clock)
    async with manager_for(target, clock) as sweeper, manager_for(target, clock) as other:
        assert await sweeper.cleanup_inactive_sessions(dry_run=True) == 2
        assert (await other.health()).last_sweep is None, "a dry run is no sweep"
        started = clock.now
        assert await sweeper.cleanup_inactive_sessions() == 2
        seen = (await other.health()).last_sweep
    assert seen == SweepRecord(
        started_at=started, finished_at=started, outcome="ok", sessions_deleted=2, error=None
    )


class FailingBackend:
    """Delegates to a manager's backend; the sweep's second batch fails as a busy server would."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def delete_idle_batch(self, cutoff: float, batch_size: int) -> int:
        self.batches += 1
        if self.batches == 2:
            raise StorageBusyError(
                "the database is busy: lock timeout\nDETAIL: a second line with values"
            )
        return int(await self._backend.delete_idle_batch(cutoff, batch_size))


async def test_a_failed_sweep_is_recorded_and_raised(target: str, clock: FakeClock) -> None:
    for n in range(5):
        await write(target, "alice", f"c{n}", [user("q")], clock=clock)
    clock.advance(days=8)
    manager = manager_for(target, clock, cleanup_batch_size=2)
    manager._backend = FailingBackend(manager._backend)  # type: ignore[assignment]  # private seam
    async with manager:
        started = clock.now
        with pytest.raises(StorageBusyError, match="lock timeout"):
            await manager.cleanup_inactive_sessions()
    async with manager_for(target, clock) as other:
        report = await other.health()
    assert report.sessions == 3, "the first batch of 2 was committed"
    assert report.last_sweep == SweepRecord(
        started_at=started,
        finished_at=started,
        outcome="failed",
        sessions_deleted=2,
        error="StorageBusyError: the database is busy: lock timeout",
    )


async def test_only_the_latest_sweeps_are_kept(target: str, clock: FakeClock) -> None:
    async with manager_for(target, clock) as manager:
        for _ in range(SWEEP_HISTORY + 3):
            clock.advance(minutes=5)
            assert await manager.cleanup_inactive_sessions() == 0
        last = (await manager.health()).last_sweep
    assert sweep_rows(target) == SWEEP_HISTORY
    assert last is not None
    assert last.started_at == clock.now


async def test_thresholds_are_reported_and_warned_about_once(
    target: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(3):
        await write(target, "alice", f"c{n}", [user("q"), assistant("a")], clock=clock)
    caplog.set_level(logging.WARNING, logger="agent_sessions")
    quiet = {"warn_average_items": 2.0, "warn_active_sessions": 3}  # at, not above: no warning
    async with manager_for(target, clock, **quiet) as manager:
        assert (await manager.health()).thresholds_crossed == ()
    assert caplog.records == []
    loud = {"warn_average_items": 1.5, "warn_active_sessions": 2}
    async with manager_for(target, clock, **loud) as manager:
        reports = [await manager.health() for _ in range(3)]
    async with manager_for(target, clock, **loud) as another:  # same process: warned already
        reports.append(await another.health())
    for report in reports:
        assert report.thresholds_crossed == ("average_items", "active_sessions")
    messages = [r.getMessage() for r in caplog.records if r.name == "agent_sessions"]
    assert len(messages) == 2, messages
    assert "2.0 items per session on average" in messages[0]
    assert "warn_average_items (1.5)" in messages[0]
    assert "3 active sessions" in messages[1]
    assert "warn_active_sessions (2)" in messages[1]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
