"""Cleanup of idle sessions (injected clock, batches, races) and its scheduler wiring."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent_sessions import (
    CLEANUP_JOB_ID,
    AgentSession,
    AgentSessionSettings,
    InvalidArgumentError,
    SchedulerError,
    SessionManager,
    SessionNotFoundError,
    get_settings,
    start_cleanup_scheduler,
)
from agent_sessions.backends.sqlite import sql
from agent_sessions.clock import utc_now
from agent_sessions.scheduler import MISFIRE_GRACE_SECONDS, run_cleanup, run_daemon
from tests.conftest import FakeClock
from tests.items import assistant, user

ORPHANS = (
    "SELECT COUNT(*) FROM agent_messages "
    "WHERE session_id NOT IN (SELECT session_id FROM agent_sessions)"
)


WRITER_RETENTION = "3650d"


async def write(
    db_path: Path, conversation: str, items: list[dict[str, Any]], clock: FakeClock
) -> str:
    # The writers' retention is longer than any idle time here: a late write then adds to
    # an idle session instead of starting it afresh, so rows lost could only be cleanup's.
    with AgentSession(
        "u",
        conversation,
        db_path=db_path,
        max_messages=1000,
        clock=clock,
        retention=WRITER_RETENTION,
    ) as s:
        await s.add_items(items)  # type: ignore[arg-type]
        return s.session_id


def query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql, params).fetchall()


def rows_per_session(db_path: Path) -> dict[str, int]:
    return dict(query(db_path, "SELECT session_id, COUNT(*) FROM agent_messages GROUP BY 1"))


def session_ids(db_path: Path) -> set[str]:
    return {row[0] for row in query(db_path, "SELECT session_id FROM agent_sessions")}


def orphans(db_path: Path) -> int:
    return int(query(db_path, ORPHANS)[0][0])


def snapshot(db_path: Path) -> tuple[list[Any], list[Any]]:
    return (
        query(db_path, "SELECT * FROM agent_sessions ORDER BY session_id"),
        query(db_path, "SELECT * FROM agent_messages ORDER BY id"),
    )


def manager_for(
    db_path: Path, clock: FakeClock, *, retention_days: int = 7, batch: int = 100
) -> SessionManager:
    return SessionManager(
        db_path,
        max_messages=1000,
        retention_days=retention_days,
        clock=clock,
        cleanup_batch_size=batch,
    )


# --- what is deleted ------------------------------------------------------------------------


async def test_idle_sessions_go_with_all_their_rows(db_path: Path, clock: FakeClock) -> None:
    start = clock.now
    old = await write(db_path, "old", [user(f"q{n}") for n in range(30)], clock)
    clock.advance(days=1)
    older_ish = await write(db_path, "older-ish", [user("q"), assistant("a")], clock)
    with closing(sqlite3.connect(db_path)) as conn, conn:  # a corrupt row is a row too
        conn.execute(
            "INSERT INTO agent_messages (session_id, message_data) VALUES (?, '{bad')",
            (older_ish,),
        )
    clock.advance(days=7)
    active = await write(db_path, "active", [user("q"), assistant("a")], clock)
    clock.now = start + timedelta(days=9, seconds=1)

    async with manager_for(db_path, clock) as manager:
        assert await manager.cleanup_inactive_sessions() == 2
        assert (await manager.get_session_stats(active)).message_count == 2
        for gone in (old, older_ish):
            with pytest.raises(SessionNotFoundError):
                await manager.get_session_stats(gone)
        assert await manager.cleanup_inactive_sessions() == 0, "a second run found more"

    assert session_ids(db_path) == {active}
    assert rows_per_session(db_path) == {active: 2}
    assert orphans(db_path) == 0


async def test_exactly_at_the_boundary(db_path: Path, clock: FakeClock) -> None:
    written = clock.now
    sid = await write(db_path, "c", [user("x")], clock)
    async with manager_for(db_path, clock, retention_days=7) as manager:
        clock.now = written + timedelta(days=7)  # idle exactly retention_days: kept
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 0
        assert await manager.cleanup_inactive_sessions() == 0
        assert session_ids(db_path) == {sid}
        clock.advance(microseconds=1)  # one microsecond more: deleted
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 1
        assert await manager.cleanup_inactive_sessions() == 1
    assert session_ids(db_path) == set()
    assert rows_per_session(db_path) == {}


async def test_listing_inactive_sessions_is_exact_at_the_boundary(
    db_path: Path, clock: FakeClock
) -> None:
    written = clock.now
    sid = await write(db_path, "c", [user("x"), assistant("y")], clock)
    async with manager_for(db_path, clock, retention_days=7) as manager:
        clock.now = written + timedelta(days=7)  # idle exactly retention_days: not listed
        assert await manager.list_inactive_sessions() == []
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 0
        clock.advance(microseconds=1)  # one microsecond more: listed, and cleanup agrees
        (listed,) = await manager.list_inactive_sessions()
        assert (listed.session_id, listed.last_activity) == (sid, written)
        assert (listed.user_id, listed.conversation_id, listed.message_count) == ("u", "c", 2)
        assert session_ids(db_path) == {sid}, "listing deleted something"
        assert await manager.cleanup_inactive_sessions() == 1
        assert await manager.list_inactive_sessions() == []
    assert session_ids(db_path) == set()


async def test_listing_inactive_sessions_shows_what_cleanup_deletes(
    db_path: Path, clock: FakeClock
) -> None:
    start = clock.now
    idle = []
    for n in range(4):  # idle for 13, 12, 11 and 10 days at the end
        idle.append(await write(db_path, f"idle{n}", [user("x")] * (n + 1), clock))
        clock.advance(days=1)
    clock.now = start + timedelta(days=13)
    active = await write(db_path, "active", [user("x")], clock)
    before = snapshot(db_path)
    async with manager_for(db_path, clock) as manager:
        listed = await manager.list_inactive_sessions()
        assert [s.session_id for s in listed] == idle, "not oldest activity first"
        assert [s.message_count for s in listed] == [1, 2, 3, 4]
        assert [s.last_activity for s in listed] == [start + timedelta(days=n) for n in range(4)]
        assert [s.session_id for s in await manager.list_inactive_sessions(limit=2)] == idle[:2]
        override = await manager.list_inactive_sessions(retention_days=11)
        assert [s.session_id for s in override] == idle[:2]
        assert manager.retention_days == 7, "the override must not stick"
        for bad in ({"limit": 0}, {"limit": True}, {"retention_days": 0}):
            with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
                await manager.list_inactive_sessions(**bad)  # type: ignore[arg-type]
        assert snapshot(db_path) == before, "listing changed the database"
        assert await manager.cleanup_inactive_sessions(dry_run=True) == len(listed)
        assert await manager.cleanup_inactive_sessions() == len(listed)
    assert session_ids(db_path) == {active}


async def test_dry_run_counts_and_deletes_nothing(db_path: Path, clock: FakeClock) -> None:
    for n in range(3):
        await write(db_path, f"idle{n}", [user("x"), assistant("y")], clock)
    clock.advance(days=8)
    await write(db_path, "active", [user("x")], clock)
    before = snapshot(db_path)
    async with manager_for(db_path, clock) as manager:
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 3
        assert await manager.cleanup_inactive_sessions(dry_run=True, retention_days=30) == 0
        assert await manager.get_session_count() == 4
    assert snapshot(db_path) == before


async def test_retention_days_override(db_path: Path, clock: FakeClock) -> None:
    start = clock.now
    ten_days = await write(db_path, "ten", [user("x")], clock)
    clock.advance(days=7)
    three_days = await write(db_path, "three", [user("x")], clock)
    clock.now = start + timedelta(days=10)
    async with manager_for(db_path, clock, retention_days=30) as manager:
        assert await manager.cleanup_inactive_sessions() == 0
        with pytest.raises(InvalidArgumentError, match="retention_days"):
            await manager.cleanup_inactive_sessions(retention_days=0)
        with pytest.raises(InvalidArgumentError, match="retention_days"):
            await manager.cleanup_inactive_sessions(retention_days=-3, dry_run=True)
        assert session_ids(db_path) == {ten_days, three_days}
        assert await manager.cleanup_inactive_sessions(retention_days=5) == 1
        assert manager.retention_days == 30, "the override must not stick"
        assert await manager.cleanup_inactive_sessions(retention_days=2) == 1
    assert session_ids(db_path) == set()
    assert orphans(db_path) == 0


async def test_batches_delete_every_idle_session(db_path: Path, clock: FakeClock) -> None:
    idle = []
    for n in range(20):
        idle.append(await write(db_path, f"idle{n:02}", [user("x"), assistant(str(n))], clock))
        clock.advance(minutes=1)
    clock.advance(days=8)
    keep = [await write(db_path, f"keep{n}", [user("x")], clock) for n in range(2)]

    statements: list[str] = []
    async with manager_for(db_path, clock, batch=3) as manager:
        # Private: the SQLite backend runs this on the manager's connection, traced to see
        # its transactions.
        await manager._backend._run(lambda conn: conn.set_trace_callback(statements.append))  # type: ignore[attr-defined]
        assert await manager.cleanup_inactive_sessions() == 20
    # The trace shows bound values: the ids each batch deleted, batch by batch.
    batches = [
        re.findall(r"'(user_u_conv_[^']+)'", sql)
        for sql in statements
        if sql.startswith("DELETE FROM agent_sessions WHERE")
    ]
    transactions = [sql for sql in statements if sql.startswith("BEGIN")]
    assert len(batches[0]) == 3, f"the first batch is cleanup_batch_size: {batches[0]}"
    # One transaction per batch, selection included, a last one that finds none left, and
    # two writing the sweep's record (at its start and its end).
    # And one indexing for search the rows written since the last search (the kept ones').
    assert len(transactions) == len(batches) + 4, (len(transactions), [len(b) for b in batches])
    assert len(batches) >= 3, [len(b) for b in batches]
    assert sorted(sid for batch in batches for sid in batch) == sorted(idle)
    assert session_ids(db_path) == set(keep)
    assert set(rows_per_session(db_path)) == set(keep)
    assert orphans(db_path) == 0


# --- races with writers ---------------------------------------------------------------------


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


async def test_session_written_while_cleanup_runs_is_kept_whole(
    db_path: Path, clock: FakeClock
) -> None:
    # Each batch selects and deletes in one write transaction: a session written to after
    # cleanup started, but before its batch, is no longer idle and stays whole.
    ids = []
    for n in range(5):
        ids.append(await write(db_path, f"s{n}", [user("q"), assistant("a"), user("q2")], clock))
        clock.advance(minutes=1)
    clock.advance(days=10)
    target = ids[0]  # the oldest: certainly in the first batch
    selected: list[list[str]] = []

    async def write_to_target() -> None:
        cutoff = clock.now.timestamp() - 7 * 86400
        selected.append([row[0] for row in query(db_path, sql.SELECT_IDLE_BATCH, (cutoff, 2))])
        await write(db_path, "s0", [user("late reply")], clock)

    manager = SessionManager(
        db_path, max_messages=1000, retention_days=7, clock=clock, cleanup_batch_size=2
    )
    manager._backend = RacingBackend(manager._backend, write_to_target)  # private seam
    async with manager:
        deleted = await manager.cleanup_inactive_sessions()
    assert selected == [ids[:2]], "the write did not land after cleanup started"
    assert deleted == 4
    assert session_ids(db_path) == {target}
    assert rows_per_session(db_path) == {target: 4}, "the written session lost rows"
    assert orphans(db_path) == 0
    with AgentSession("u", "s0", db_path=db_path, clock=clock) as session:
        assert [item["content"] for item in await session.get_items()][-1] == "late reply"


async def test_cleanup_racing_many_writers_leaves_whole_sessions(
    db_path: Path, clock: FakeClock
) -> None:
    count = 120
    for n in range(count):
        await write(db_path, f"s{n:03}", [user("q"), assistant("a"), user("q2")], clock)
        clock.advance(seconds=1)  # cleanup deletes oldest first: s000, s001, ...
    clock.advance(days=10)
    later = FakeClock(clock.now)
    written = [f"s{n:03}" for n in range(0, count, 2)]
    sessions = [
        AgentSession(
            "u", name, db_path=db_path, max_messages=1000, clock=later, retention=WRITER_RETENTION
        )
        for name in written
    ]

    async def writer(share: list[AgentSession]) -> None:
        for session in reversed(share):  # newest first: cleanup starts at the oldest
            await session.add_items([user("late")])
            # AgentSession writes inline without yielding unless the file is locked: hand
            # the loop to the cleanup between writes so the two really interleave.
            await asyncio.sleep(0)

    try:
        async with manager_for(db_path, clock, batch=2) as manager:
            deleted, *_ = await asyncio.gather(
                manager.cleanup_inactive_sessions(), writer(sessions[0::2]), writer(sessions[1::2])
            )
    finally:
        for s in sessions:
            s.close()
    rows = rows_per_session(db_path)
    ids = session_ids(db_path)
    assert ids == {f"user_u_conv_{name}" for name in written}, f"kept {sorted(ids)}"
    assert orphans(db_path) == 0
    assert set(rows) == ids
    recreated = 0
    for sid in ids:
        # Written before cleanup reached it (kept whole: 3 + 1) or after it was deleted
        # (a fresh session holding only the new item); never anything in between.
        assert rows[sid] in (1, 4), f"{sid} holds {rows[sid]} rows"
        recreated += rows[sid] == 1
    assert deleted == count // 2 + recreated, (deleted, recreated)


async def test_clock_jumping_backwards_deletes_nothing_active(
    db_path: Path, clock: FakeClock
) -> None:
    recent = clock.now
    ids = [await write(db_path, f"c{n}", [user("x")], clock) for n in range(3)]
    # The session's own clock jumps back 20 days: its activity time must not go back.
    await write(db_path, "c0", [user("y")], FakeClock(recent - timedelta(days=20)))
    async with manager_for(db_path, clock, retention_days=1) as manager:
        stats = await manager.get_session_stats(ids[0])
        assert stats.last_activity == recent, stats.last_activity
        clock.now = recent - timedelta(days=365)  # the manager's clock jumps back a year
        assert await manager.cleanup_inactive_sessions(dry_run=True) == 0
        assert await manager.cleanup_inactive_sessions() == 0
        clock.now = recent + timedelta(hours=23)
        assert await manager.cleanup_inactive_sessions() == 0
    assert session_ids(db_path) == set(ids)
    assert rows_per_session(db_path)[ids[0]] == 2


async def test_idle_batch_query_uses_the_last_activity_index(
    db_path: Path, clock: FakeClock
) -> None:
    for n in range(50):
        await write(db_path, f"c{n}", [user("x")], clock)
        clock.advance(hours=1)
    with closing(sqlite3.connect(db_path)) as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {sql.SELECT_IDLE_BATCH}", (clock.now.timestamp(), 10)
        ).fetchall()
        count_plan = conn.execute(
            f"EXPLAIN QUERY PLAN {sql.COUNT_IDLE_SESSIONS}", (clock.now.timestamp(),)
        ).fetchall()
        list_plan = conn.execute(
            f"EXPLAIN QUERY PLAN {sql.LIST_IDLE_SESSIONS}", (clock.now.timestamp(), -1)
        ).fetchall()
    details = [row[3] for row in plan]
    assert any("idx_agent_sessions_last_activity" in d for d in details), details
    assert not any(d.startswith("SCAN") for d in details), details
    assert not any("TEMP B-TREE" in d for d in details), (
        f"sorts instead of using the index: {details}"
    )
    count_details = [row[3] for row in count_plan]
    assert any("idx_agent_sessions_last_activity" in d for d in count_details), count_details
    list_details = [row[3] for row in list_plan]
    assert any("idx_agent_sessions_last_activity" in d for d in list_details), list_details


# --- scheduler ------------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
async def scheduler() -> AsyncIterator[AsyncIOScheduler]:
    sched = AsyncIOScheduler(timezone=ZoneInfo("UTC"))
    yield sched
    if sched.running:
        sched.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
    assert not sched.running


def paris_settings(db_path: Path, **changes: Any) -> AgentSessionSettings:
    values: dict[str, Any] = {
        "cleanup_hour": 3,
        "cleanup_minute": 30,
        "timezone": "Europe/Paris",
        "db_path": db_path,
        "retention_days": 7,
    }
    return AgentSessionSettings(**{**values, **changes})


async def test_scheduler_registers_the_daily_job(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler
) -> None:
    async with manager_for(db_path, clock) as manager:
        returned = start_cleanup_scheduler(
            manager, scheduler=scheduler, settings=paris_settings(db_path)
        )
        assert returned is scheduler
        assert scheduler.running
        job = scheduler.get_job(CLEANUP_JOB_ID)
        assert job is not None
        assert CLEANUP_JOB_ID == "agent-sessions-cleanup"
        trigger = job.trigger
        assert isinstance(trigger, CronTrigger)
        fields = {field.name: str(field) for field in trigger.fields}
        assert (fields["hour"], fields["minute"], fields["second"]) == ("3", "30", "0"), fields
        assert fields["day"] == "*"
        assert str(trigger.timezone) == "Europe/Paris"
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == MISFIRE_GRACE_SECONDS
        assert job.misfire_grace_time is not None
        assert job.misfire_grace_time > 0
        next_run = job.next_run_time.astimezone(PARIS)
        assert (next_run.hour, next_run.minute) == (3, 30), next_run
        # 3:30 in Paris whatever the season: +01:00 in winter, +02:00 after the DST change.
        winter = trigger.get_next_fire_time(None, datetime(2026, 3, 27, 12, tzinfo=PARIS))
        summer = trigger.get_next_fire_time(None, datetime(2026, 3, 28, 12, tzinfo=PARIS))
        assert winter == datetime(2026, 3, 28, 3, 30, tzinfo=PARIS)
        assert winter.utcoffset() == timedelta(hours=1)
        assert summer == datetime(2026, 3, 29, 3, 30, tzinfo=PARIS)
        assert summer.utcoffset() == timedelta(hours=2)


async def test_scheduler_registered_twice_keeps_one_job(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler
) -> None:
    async with manager_for(db_path, clock) as manager:
        start_cleanup_scheduler(manager, scheduler=scheduler, settings=paris_settings(db_path))
        start_cleanup_scheduler(
            manager, scheduler=scheduler, settings=paris_settings(db_path, cleanup_hour=4)
        )
        jobs = scheduler.get_jobs()
        assert [job.id for job in jobs] == [CLEANUP_JOB_ID], jobs
        fields = {field.name: str(field) for field in jobs[0].trigger.fields}
        assert fields["hour"] == "4", "the second registration must replace the first"


async def test_scheduled_job_deletes_idle_sessions(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler
) -> None:
    idle = await write(db_path, "idle", [user("x")], clock)
    clock.advance(days=8)
    active = await write(db_path, "active", [user("x")], clock)
    async with manager_for(db_path, clock) as manager:
        start_cleanup_scheduler(manager, scheduler=scheduler, settings=paris_settings(db_path))
        job = scheduler.get_job(CLEANUP_JOB_ID)
        assert job is not None
        assert await job.func(*job.args, **job.kwargs) == 1
    assert session_ids(db_path) == {active}
    assert idle not in rows_per_session(db_path)


async def test_scheduled_job_without_manager_opens_its_own(
    db_path: Path, scheduler: AsyncIOScheduler
) -> None:
    # Each run opens a manager from the settings, with the real clock.
    old = FakeClock(utc_now() - timedelta(days=30))
    await write(db_path, "idle", [user("x")], old)
    active = await write(db_path, "active", [user("x")], FakeClock(utc_now()))
    start_cleanup_scheduler(scheduler=scheduler, settings=paris_settings(db_path))
    job = scheduler.get_job(CLEANUP_JOB_ID)
    assert job is not None
    assert await job.func(*job.args, **job.kwargs) == 1
    assert session_ids(db_path) == {active}


async def test_run_cleanup_logs_and_returns_none_on_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="agent_sessions"):
        folder = paris_settings(tmp_path)  # a folder is not a database
        assert await run_cleanup(settings=folder) is None
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert "cleanup failed" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "folder" in str(failures[0].exc_info[1])


async def test_run_cleanup_with_a_closed_manager_warns_without_a_traceback(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """What a run sees when the app closed its manager (at shutdown, or too early)."""
    manager = manager_for(db_path, clock)
    await manager.close()
    with caplog.at_level(logging.INFO, logger="agent_sessions"):
        assert await run_cleanup(manager) is None
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert "did not finish" in record.getMessage()
    assert "closed" in record.getMessage()
    assert record.exc_info is None


async def test_run_cleanup_logs_the_count(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    await write(db_path, "idle", [user("x")], clock)
    clock.advance(days=8)
    with caplog.at_level(logging.INFO, logger="agent_sessions"):
        async with manager_for(db_path, clock) as manager:
            assert await run_cleanup(manager) == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("deleted 1 idle session" in m and str(db_path) in m for m in messages), messages


class _Waiter(logging.Handler):
    """Sets an asyncio event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.text in record.getMessage():
            self.seen.set()


async def test_run_daemon_starts_and_stops_on_the_event(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_sessions")
    waiter = _Waiter("daemon started")
    logger = logging.getLogger("agent_sessions")
    logger.addHandler(waiter)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(run_daemon(paris_settings(db_path), stop=stop))
        await asyncio.wait_for(waiter.seen.wait(), timeout=10)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    finally:
        logger.removeHandler(waiter)
    assert task.result() is None
    started = next(m for m in waiter.messages if "daemon started" in m)
    assert str(db_path) in started, started
    assert "03:30:00+01:00" in started or "03:30:00+02:00" in started, started
    assert waiter.messages[-1].endswith("daemon stopped"), waiter.messages
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM), "SIGTERM handler left installed"
    assert not loop.remove_signal_handler(signal.SIGINT), "SIGINT handler left installed"


async def test_run_daemon_with_stop_already_set_returns(db_path: Path) -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(run_daemon(paris_settings(db_path), stop=stop), timeout=10)


def test_starting_the_scheduler_without_an_event_loop_is_a_clear_error(db_path: Path) -> None:
    scheduler = AsyncIOScheduler()
    with pytest.raises(SchedulerError, match="running event loop"):
        start_cleanup_scheduler(scheduler=scheduler, settings=paris_settings(db_path))
    assert scheduler.get_jobs() == [], "a job was registered although nothing could run it"
    assert not scheduler.running


async def test_scheduler_takes_the_schedule_from_the_managers_settings(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment says 02:00 UTC; the manager was built for 03:15 in Paris: the manager wins.
    monkeypatch.setenv("AGENT_SESSION_CLEANUP_HOUR", "2")
    get_settings.cache_clear()
    assert get_settings().cleanup_hour == 2
    own = paris_settings(db_path, cleanup_hour=3, cleanup_minute=15)
    async with SessionManager(settings=own, clock=clock) as manager:
        start_cleanup_scheduler(manager, scheduler=scheduler)
        job = scheduler.get_job(CLEANUP_JOB_ID)
        assert job is not None
        fields = {field.name: str(field) for field in job.trigger.fields}
        assert (fields["hour"], fields["minute"]) == ("3", "15"), fields
        assert str(job.trigger.timezone) == "Europe/Paris"
        assert job.args == (manager, own)


async def test_scheduler_with_explicit_settings_overrides_the_managers(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler
) -> None:
    own = paris_settings(db_path, cleanup_hour=3, cleanup_minute=15)
    async with SessionManager(settings=own, clock=clock) as manager:
        start_cleanup_scheduler(
            manager, scheduler=scheduler, settings=paris_settings(db_path, cleanup_hour=5)
        )
        job = scheduler.get_job(CLEANUP_JOB_ID)
        assert job is not None
        fields = {field.name: str(field) for field in job.trigger.fields}
        assert (fields["hour"], fields["minute"]) == ("5", "30"), fields


async def test_cleanup_drops_the_turn_locks_of_the_sessions_it_deletes(
    db_path: Path, clock: FakeClock
) -> None:
    # A holder killed mid-run leaves its lock row behind (its lease long expired by the time
    # the session is idle): cleanup takes it with the session; an active session's stays.
    idle = await write(db_path, "idle", [user("x")], clock)
    clock.advance(days=8)
    active = await write(db_path, "active", [user("x")], clock)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executemany(
            "INSERT INTO agent_sessions_turn_locks (session_id, owner, expires_ts) "
            "VALUES (?, 'killed', 0)",
            [(idle,), (active,)],
        )
        conn.commit()
    async with manager_for(db_path, clock) as manager:
        assert await manager.cleanup_inactive_sessions() == 1
    assert query(db_path, "SELECT session_id FROM agent_sessions_turn_locks") == [(active,)]


# --- the cleanup interval -------------------------------------------------------------------


async def test_with_an_interval_the_job_also_runs_that_often(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler
) -> None:
    settings = paris_settings(db_path, cleanup_interval="5m")
    assert settings.cleanup_interval == timedelta(minutes=5)
    async with manager_for(db_path, clock) as manager:
        before = utc_now()
        start_cleanup_scheduler(manager, scheduler=scheduler, settings=settings)
        (job,) = scheduler.get_jobs()
        assert job.id == CLEANUP_JOB_ID
        assert (job.coalesce, job.max_instances) == (True, 1)
        trigger = job.trigger
        assert isinstance(trigger, OrTrigger)
        daily, every = trigger.triggers
        assert isinstance(daily, CronTrigger)
        assert isinstance(every, IntervalTrigger)
        fields = {field.name: str(field) for field in daily.fields}
        assert (fields["hour"], fields["minute"]) == ("3", "30"), fields
        assert every.interval == timedelta(minutes=5)
        # The first interval run is one interval from now (unless 3:30 in Paris comes first).
        assert before < job.next_run_time <= utc_now() + timedelta(minutes=5)
        # After a run at 3:20 the next is at 3:25, then 3:30 (daily), then 3:35.
        runs = [datetime(2026, 3, 10, 3, 20, tzinfo=PARIS)]
        for _ in range(3):
            runs.append(trigger.get_next_fire_time(runs[-1], runs[-1]))
        assert [(run.hour, run.minute) for run in runs[1:]] == [(3, 25), (3, 30), (3, 35)]


async def test_without_an_interval_the_job_is_daily_only(
    db_path: Path, scheduler: AsyncIOScheduler
) -> None:
    start_cleanup_scheduler(scheduler=scheduler, settings=paris_settings(db_path))
    job = scheduler.get_job(CLEANUP_JOB_ID)
    assert job is not None
    assert isinstance(job.trigger, CronTrigger)


class BlockingBackend:
    """Delegates to a manager's backend; each sweep waits at its start until released."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.sweeps = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def start_sweep(self, started: float) -> int:
        self.sweeps += 1
        self.entered.set()
        await self.release.wait()
        return int(await self._backend.start_sweep(started))


async def test_a_run_due_while_one_runs_is_skipped_not_stacked(
    db_path: Path, clock: FakeClock, scheduler: AsyncIOScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_sessions")
    await write(db_path, "idle", [user("x")], clock)
    clock.advance(days=8)
    manager = manager_for(db_path, clock)
    backend = BlockingBackend(manager._backend)
    manager._backend = backend  # type: ignore[assignment]  # private seam
    skipped = _Waiter("maximum number of running instances")
    finished = _Waiter("cleanup deleted")
    logging.getLogger("apscheduler.scheduler").addHandler(skipped)
    logging.getLogger("agent_sessions").addHandler(finished)
    try:
        async with manager:
            settings = paris_settings(db_path, cleanup_interval="1m")
            start_cleanup_scheduler(manager, scheduler=scheduler, settings=settings)
            job = scheduler.get_job(CLEANUP_JOB_ID)
            assert job is not None
            job.modify(next_run_time=utc_now())  # due now
            await asyncio.wait_for(backend.entered.wait(), timeout=10)
            job.modify(next_run_time=utc_now())  # due again while the first still runs
            await asyncio.wait_for(skipped.seen.wait(), timeout=10)
            backend.release.set()
            await asyncio.wait_for(finished.seen.wait(), timeout=10)
            assert backend.sweeps == 1, "a second sweep started beside the first"
            assert (await manager.health()).last_sweep is not None
    finally:
        logging.getLogger("apscheduler.scheduler").removeHandler(skipped)
        logging.getLogger("agent_sessions").removeHandler(finished)
    assert any("deleted 1 idle session" in m for m in finished.messages), finished.messages


async def test_the_daemon_sweeps_on_the_interval_too(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_sessions")
    waiter = _Waiter("daemon started")
    logger = logging.getLogger("agent_sessions")
    logger.addHandler(waiter)
    stop = asyncio.Event()
    try:
        settings = paris_settings(db_path, cleanup_interval="2m")
        task = asyncio.create_task(run_daemon(settings, stop=stop))
        await asyncio.wait_for(waiter.seen.wait(), timeout=10)
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    finally:
        logger.removeHandler(waiter)
    started = next(m for m in waiter.messages if "daemon started" in m)
    assert "daily, and every 2m" in started, started
    # The first run is the interval's, two minutes from the start, not the 3:30 daily one.
    when = datetime.fromisoformat(started.split("next run at ")[1].split(" (")[0])
    assert when - utc_now() <= timedelta(minutes=2), started


async def test_the_scheduled_sweep_warns_once_about_a_threshold(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(3):
        await write(db_path, f"c{n}", [user("x")], clock)
    settings = paris_settings(db_path, warn_active_sessions=2)
    caplog.set_level(logging.INFO, logger="agent_sessions")
    async with SessionManager(settings=settings, clock=clock) as manager:
        assert manager.warn_active_sessions == 2
        for _ in range(3):
            assert await run_cleanup(manager) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "3 active sessions" in warnings[0]
    assert "warn_active_sessions (2)" in warnings[0]
