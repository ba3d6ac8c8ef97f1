"""Clock edges for cleanup (issue 5, item 6).

Cleanup deletes a session when its last activity is more than ``retention_days`` before the
manager's clock, and keeps it otherwise, to the microsecond: whatever time zone the clocks
report in, whatever the process's TZ, across DST, with clocks that jump backwards, for
sessions adopted from the SDK's naive-UTC text timestamps, and never deleting a session
active within the window.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from agents import SQLiteSession
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent_sessions import (
    CLEANUP_JOB_ID,
    AgentSessionsError,
    AgentSessionSettings,
    InvalidArgumentError,
    SessionManager,
    start_cleanup_scheduler,
)
from agent_sessions.scheduler import run_cleanup
from agent_sessions.session import AgentSession
from tests.conftest import FakeClock

ITEM = {"role": "user", "content": "x"}
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
ZONES: dict[str, tzinfo] = {
    "UTC": UTC,
    "+05:00": timezone(timedelta(hours=5)),
    "-09:30": timezone(-timedelta(hours=9, minutes=30)),
    "America/Los_Angeles": ZoneInfo("America/Los_Angeles"),
    "Asia/Tokyo": ZoneInfo("Asia/Tokyo"),
    "Asia/Kathmandu": ZoneInfo("Asia/Kathmandu"),
    "Pacific/Chatham": ZoneInfo("Pacific/Chatham"),
    "Pacific/Kiritimati": ZoneInfo("Pacific/Kiritimati"),
    "Etc/GMT+12": ZoneInfo("Etc/GMT+12"),
}
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW_PROPERTY = settings(PROPERTY, max_examples=1000)


# --- helpers --------------------------------------------------------------------------------


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def session_ids(db: Path) -> set[str]:
    return {row[0] for row in query(db, "SELECT session_id FROM agent_sessions")}


def rows_per_session(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT session_id, COUNT(*) FROM agent_messages GROUP BY 1"))


def stored_ts(db: Path, session_id: str) -> float:
    rows = query(
        db, "SELECT last_activity_ts FROM agent_sessions WHERE session_id = ?", (session_id,)
    )
    return float(rows[0][0])


async def write(db: Path, conversation: str, *moments: datetime, user: str = "u") -> str:
    """One add_items per moment, each through a writer whose clock reads that moment.

    The writers' retention is a century: these tests are about cleanup's cutoff, so a write
    long after the one before must add to the session, not start it afresh.
    """
    session_id = ""
    for moment in moments:
        with AgentSession(
            user,
            conversation,
            db_path=db,
            max_messages=10_000,
            clock=FakeClock(moment),
            retention="36500d",
        ) as session:
            await session.add_items([ITEM])  # type: ignore[list-item]
            session_id = session.session_id
    return session_id


def manager(db: Path, clock: FakeClock, retention_days: int = 7) -> SessionManager:
    return SessionManager(db, max_messages=10_000, retention_days=retention_days, clock=clock)


async def cleanup_deletes(mgr: SessionManager, db: Path, expected: set[str], what: str) -> None:
    """Dry run, then cleanup: both must name exactly ``expected`` (and their rows go)."""
    before = session_ids(db)
    would = await mgr.cleanup_inactive_sessions(dry_run=True)
    assert would == len(expected), f"{what}: dry run counts {would}, expected {sorted(expected)}"
    deleted = await mgr.cleanup_inactive_sessions()
    after = session_ids(db)
    assert before - after == expected, (
        f"{what}: deleted {sorted(before - after)} ({deleted}), expected {sorted(expected)}"
    )
    assert deleted == len(expected), f"{what}: reported {deleted}"
    assert set(rows_per_session(db)) <= after, f"{what}: rows left behind by deleted sessions"
    assert await mgr.get_active_session_count() == len(after), f"{what}: active count"


# --- the boundary ---------------------------------------------------------------------------


@pytest.mark.parametrize("manager_zone", ["UTC", "+05:00", "America/Los_Angeles"])
@pytest.mark.parametrize("retention_days", [1, 7, 30, 3650])
async def test_boundary_is_exact_to_the_microsecond(
    db_path: Path, retention_days: int, manager_zone: str
) -> None:
    cutoff = NOW - timedelta(days=retention_days)
    older = await write(db_path, "older", cutoff - US)
    exact = await write(db_path, "exact", cutoff)
    younger = await write(db_path, "younger", cutoff + US)
    fresh = await write(db_path, "fresh", NOW)
    clock = FakeClock(NOW.astimezone(ZONES[manager_zone]))
    async with manager(db_path, clock, retention_days) as mgr:
        await cleanup_deletes(mgr, db_path, {older}, "a microsecond past the window")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, {exact}, "exactly retention_days + 1 µs")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, {younger}, "the next microsecond")
    assert session_ids(db_path) == {fresh}
    assert rows_per_session(db_path) == {fresh: 1}


async def test_one_instant_in_any_time_zone_is_one_activity(db_path: Path) -> None:
    instant = NOW - timedelta(days=7)
    ids = {
        name: await write(db_path, f"tz{n}", instant.astimezone(zone))
        for n, (name, zone) in enumerate(ZONES.items())
    }
    stamps = {name: stored_ts(db_path, sid) for name, sid in ids.items()}
    assert set(stamps.values()) == {instant.timestamp()}, f"stored times differ: {stamps}"
    clock = FakeClock(NOW.astimezone(ZoneInfo("America/Los_Angeles")))
    async with manager(db_path, clock) as mgr:
        for name, sid in ids.items():
            stats = await mgr.get_session_stats(sid)
            assert stats.last_activity == instant, f"{name}: {stats.last_activity}"
            assert stats.created_at == instant, f"{name}: {stats.created_at}"
            assert stats.last_activity.utcoffset() == timedelta(0), f"{name}: not reported in UTC"
        await cleanup_deletes(mgr, db_path, set(), "the same instant, exactly at the boundary")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, set(ids.values()), "1 µs later, every zone")


NEW_YORK = ZoneInfo("America/New_York")


async def test_dst_transitions_count_elapsed_time_not_wall_clock(db_path: Path) -> None:
    # Spring forward (2026-03-08): a wall-clock week is 6 days 23 hours of elapsed time.
    spring = await write(db_path, "spring", datetime(2026, 3, 5, 12, 0, tzinfo=NEW_YORK))
    clock = FakeClock(datetime(2026, 3, 12, 12, 0, tzinfo=NEW_YORK))  # 7 wall-clock days later
    async with manager(db_path, clock) as mgr:
        await cleanup_deletes(mgr, db_path, set(), "a wall-clock week over spring-forward")
        clock.now = datetime(2026, 3, 12, 13, 0, tzinfo=NEW_YORK)  # exactly 7 x 24 h
        await cleanup_deletes(mgr, db_path, set(), "7 x 24 h over spring-forward")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, {spring}, "7 x 24 h + 1 µs over spring-forward")
    # Fall back (2026-11-01): a wall-clock week is 7 days 1 hour of elapsed time.
    fall = await write(db_path, "fall", datetime(2026, 10, 29, 12, 0, tzinfo=NEW_YORK))
    clock = FakeClock(datetime(2026, 11, 5, 11, 0, tzinfo=NEW_YORK))  # exactly 7 x 24 h
    async with manager(db_path, clock) as mgr:
        await cleanup_deletes(mgr, db_path, set(), "7 x 24 h over fall-back")
        clock.now = datetime(2026, 11, 5, 11, 0, 0, 1, tzinfo=NEW_YORK)
        await cleanup_deletes(mgr, db_path, {fall}, "7 x 24 h + 1 µs over fall-back")
    # The repeated hour: 01:30 happens twice, an hour apart; fold tells them apart.
    first = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK, fold=0)
    second = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK, fold=1)
    early = await write(db_path, "fold0", first)
    late = await write(db_path, "fold1", second)
    assert stored_ts(db_path, late) - stored_ts(db_path, early) == 3600.0
    clock = FakeClock((second + timedelta(days=7)).astimezone(NEW_YORK))
    async with manager(db_path, clock) as mgr:
        await cleanup_deletes(mgr, db_path, {early}, "the first 01:30 is an hour older")
    assert session_ids(db_path) == {late}


@pytest.fixture
def process_tz() -> Iterator[Callable[[str], None]]:
    """Set the process's TZ (what time.localtime and SQLite's 'localtime' use)."""
    saved = os.environ.get("TZ")

    def set_zone(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield set_zone
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles", "Pacific/Kiritimati"])
async def test_the_process_time_zone_does_not_change_what_is_stored(
    db_path: Path, process_tz: Callable[[str], None], zone: str
) -> None:
    """Our default clock and the SDK's CURRENT_TIMESTAMP, written under another TZ."""
    process_tz(zone)
    assert time.localtime().tm_gmtoff != 0, f"TZ={zone} did not take effect"
    before = time.time()
    with AgentSession("u", "ours", db_path=db_path, max_messages=10) as session:
        await session.add_items([ITEM])  # type: ignore[list-item]
    sdk = SQLiteSession("user_u_conv_sdk", db_path)
    try:
        await sdk.add_items([ITEM])  # type: ignore[list-item]
    finally:
        sdk.close()
    after = time.time()
    ours, theirs = stored_ts(db_path, "user_u_conv_ours"), stored_ts(db_path, "user_u_conv_sdk")
    assert before - 0.001 <= ours <= after + 0.001, (zone, before, ours, after)
    assert int(before) <= theirs <= after + 1, (zone, before, theirs, after)  # whole seconds
    async with manager(db_path, FakeClock(datetime.fromtimestamp(after, UTC))) as mgr:
        stats = await mgr.get_session_stats("user_u_conv_ours")
    assert abs(stats.last_activity.timestamp() - ours) < 1e-6, stats


async def test_settings_time_zone_moves_the_schedule_not_the_deletions(tmp_path: Path) -> None:
    zones = ["UTC", "Asia/Tokyo", "Pacific/Kiritimati", "Pacific/Pago_Pago"]
    cutoff = NOW - timedelta(days=7)
    survivors: dict[str, set[str]] = {}
    next_runs: dict[str, datetime] = {}
    for zone in zones:
        db = tmp_path / f"{zone.replace('/', '_')}.db"
        for name, moment in (("old", cutoff - US), ("edge", cutoff), ("new", cutoff + US)):
            await write(db, name, moment.astimezone(ZoneInfo(zone)))
        config = AgentSessionSettings(
            db_path=db, retention_days=7, max_messages=10_000, timezone=zone, cleanup_hour=2
        )
        async with SessionManager(settings=config, clock=FakeClock(NOW)) as mgr:
            assert await run_cleanup(mgr) == 1, zone
        survivors[zone] = session_ids(db)
        scheduler = AsyncIOScheduler(timezone=ZoneInfo("UTC"))
        try:
            start_cleanup_scheduler(scheduler=scheduler, settings=config)
            job = scheduler.get_job(CLEANUP_JOB_ID)
            assert job is not None
            assert job.trigger.timezone == ZoneInfo(zone), job.trigger
            next_runs[zone] = job.next_run_time
            local = job.next_run_time.astimezone(ZoneInfo(zone))
            assert (local.hour, local.minute) == (2, 0), f"{zone}: next run {local}"
        finally:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)
    assert all(kept == {"user_u_conv_edge", "user_u_conv_new"} for kept in survivors.values()), (
        f"deletions depend on the settings' time zone: {survivors}"
    )
    utc_times = {zone: run.astimezone(UTC).time() for zone, run in next_runs.items()}
    assert len(set(utc_times.values())) == len(zones), f"schedule ignores the zone: {utc_times}"


# --- clocks that misbehave ------------------------------------------------------------------


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive in effect."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


BAD_CLOCKS: dict[str, Any] = {
    "naive": datetime(2026, 1, 15, 12, 0),
    "tzinfo without offset": datetime(2026, 1, 15, 12, 0, tzinfo=NoOffset()),
    "float": 1.7e9,
    "None": None,
}


@pytest.mark.parametrize("kind", sorted(BAD_CLOCKS))
async def test_naive_clock_is_refused_clearly_and_writes_nothing(db_path: Path, kind: str) -> None:
    known = await write(db_path, "known", NOW)
    rows_before = query(db_path, "SELECT * FROM agent_messages ORDER BY id")
    sessions_before = query(db_path, "SELECT * FROM agent_sessions ORDER BY session_id")
    value = BAD_CLOCKS[kind]

    def bad() -> Any:
        return value

    refused: list[BaseException] = []
    for conversation in ("new", "known"):
        with AgentSession("u", conversation, db_path=db_path, max_messages=10, clock=bad) as s:
            with pytest.raises(InvalidArgumentError, match="aware") as add:
                await s.add_items([ITEM])  # type: ignore[list-item]
            with pytest.raises(InvalidArgumentError, match="aware") as pop:
                await s.pop_item()
            refused += [add.value, pop.value]
    async with manager(db_path, bad) as mgr:
        with pytest.raises(InvalidArgumentError, match="aware") as cleanup:
            await mgr.cleanup_inactive_sessions()
        with pytest.raises(InvalidArgumentError, match="aware") as dry:
            await mgr.cleanup_inactive_sessions(dry_run=True)
        with pytest.raises(InvalidArgumentError, match="aware") as active:
            await mgr.get_active_session_count()
        refused += [cleanup.value, dry.value, active.value]
    for error in refused:  # InvalidArgumentError is both of these
        assert isinstance(error, AgentSessionsError), error
        assert isinstance(error, ValueError), error
    assert query(db_path, "SELECT * FROM agent_messages ORDER BY id") == rows_before
    assert query(db_path, "SELECT * FROM agent_sessions ORDER BY session_id") == sessions_before
    assert session_ids(db_path) == {known}


async def test_clocks_at_the_ends_of_time_are_refused_and_change_nothing(db_path: Path) -> None:
    known = await write(db_path, "known", NOW)
    before = query(db_path, "SELECT * FROM agent_messages ORDER BY id")
    # datetime.max an hour behind UTC is past datetime.max in UTC: it cannot be converted.
    beyond = datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))
    session = AgentSession("u", "known", db_path=db_path, clock=lambda: beyond)
    with session, pytest.raises(InvalidArgumentError, match="out of range"):
        await session.add_items([ITEM])  # type: ignore[list-item]
    earliest = datetime.min.replace(tzinfo=UTC)  # no retention window fits before it
    async with manager(db_path, lambda: earliest) as mgr:
        with pytest.raises(InvalidArgumentError, match="too early"):
            await mgr.cleanup_inactive_sessions()
        with pytest.raises(InvalidArgumentError, match="too early"):
            await mgr.get_active_session_count()
    assert query(db_path, "SELECT * FROM agent_messages ORDER BY id") == before
    assert session_ids(db_path) == {known}


async def test_writer_clock_jumping_backwards_keeps_the_latest_activity(db_path: Path) -> None:
    sid = await write(db_path, "c", NOW, NOW - timedelta(days=30), NOW - timedelta(days=400))
    other = await write(db_path, "other", NOW - timedelta(days=3))
    back = FakeClock(NOW - timedelta(days=10))
    with AgentSession("u", "c", db_path=db_path, max_messages=10_000, clock=back) as session:
        popped = await session.pop_item()  # also touches the session, with the old time
        await session.add_items([ITEM, ITEM])  # type: ignore[list-item]
    assert popped == ITEM
    assert stored_ts(db_path, sid) == NOW.timestamp(), "activity time moved backwards"
    clock = FakeClock(NOW + timedelta(days=7))
    async with manager(db_path, clock) as mgr:
        assert (await mgr.get_session_stats(sid)).last_activity == NOW
        await cleanup_deletes(mgr, db_path, {other}, "writer clocks jumped back 10-400 days")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, {sid}, "7 days after the latest write")


async def test_manager_clock_jumping_around_never_deletes_an_active_session(
    db_path: Path,
) -> None:
    times = {
        name: NOW + timedelta(days=days)
        for name, days in (("a", -20), ("b", -8), ("c", -3), ("d", 0), ("e", 2))
    }
    ids = {name: await write(db_path, name, moment) for name, moment in times.items()}
    clock = FakeClock(NOW)
    steps = [0, -400, 3, -1, 8, -30, 12]  # days from NOW, in the manager's clock
    async with manager(db_path, clock) as mgr:
        alive = set(ids)
        for days in steps:
            clock.now = NOW + timedelta(days=days)
            cutoff = clock.now - timedelta(days=7)
            gone = {n for n in alive if times[n] < cutoff}
            await cleanup_deletes(mgr, db_path, {ids[n] for n in gone}, f"manager at {days:+} d")
            alive -= gone
    assert session_ids(db_path) == set(), "every session is idle by NOW + 12 days"


async def test_writer_clock_far_in_the_future(db_path: Path) -> None:
    future = datetime(2999, 1, 1, tzinfo=UTC)
    sid = await write(db_path, "future", future)
    idle = await write(db_path, "idle", NOW - timedelta(days=30))
    await write(db_path, "future", NOW)  # a correct clock afterwards does not lower it
    clock = FakeClock(NOW)
    async with manager(db_path, clock) as mgr:
        stats = await mgr.get_session_stats(sid)
        assert stats.last_activity == future, stats
        assert stats.message_count == 2, stats
        # Documented behaviour (max() of write times): the session counts as active until
        # 2999 + retention. Other sessions are judged as usual.
        await cleanup_deletes(mgr, db_path, {idle}, "one writer's clock in 2999")
        listed = await mgr.list_sessions("u")
        assert [s.session_id for s in listed] == [sid], listed
    last = await write(db_path, "last", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    async with manager(db_path, clock) as mgr:
        assert (await mgr.get_session_stats(last)).last_activity.year == 9999


async def test_bug_writer_clock_at_datetime_max(db_path: Path) -> None:
    sid = await write(db_path, "max", datetime.max.replace(tzinfo=UTC))
    async with manager(db_path, FakeClock(NOW)) as mgr:
        assert (await mgr.get_session_stats(sid)).last_activity.year == 9999
        assert len(await mgr.list_sessions("u")) == 1


@pytest.mark.parametrize("power", [30, 31])
async def test_bug_boundary_across_a_power_of_two_seconds(db_path: Path, power: int) -> None:
    base = datetime.fromtimestamp(2**power, UTC)
    sessions = {}
    for micros in range(40):  # session m<k> was last active exactly 7 days before base + k µs
        moment = base + timedelta(microseconds=micros) - timedelta(days=7)
        sessions[micros] = await write(db_path, f"m{micros}", moment)
    wrong = []
    for micros, sid in sessions.items():
        clock = FakeClock(base + timedelta(microseconds=micros))
        async with manager(db_path, clock) as mgr:
            stats = await mgr.get_session_stats(sid)
            assert stats.last_activity == clock.now - timedelta(days=7)
            # Idle: exactly the sessions written before m<micros>, which sits on the boundary.
            if await mgr.cleanup_inactive_sessions(dry_run=True) != micros:
                wrong.append(micros)
    assert wrong == [], f"a session idle exactly 7 days counted idle at base + {wrong} µs"


# --- adopted SDK timestamps -----------------------------------------------------------------


def sdk_text(moment: datetime) -> str:
    """The SDK's CURRENT_TIMESTAMP format: naive UTC, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def test_sdk_text_timestamps_compare_with_ours_at_the_boundary(db_path: Path) -> None:
    cutoff = NOW - timedelta(days=7)
    for session_id in ("user_sdk_conv_edge", "user_sdk_conv_old", "legacy id"):
        sdk = SQLiteSession(session_id, db_path)
        await sdk.add_items([ITEM])  # type: ignore[list-item]
        sdk.close()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for session_id, moment in (
            ("user_sdk_conv_edge", cutoff),
            ("user_sdk_conv_old", cutoff - timedelta(seconds=1)),
            ("legacy id", cutoff),
        ):
            conn.execute(
                "UPDATE agent_sessions SET created_at = ?, updated_at = ? WHERE session_id = ?",
                (sdk_text(moment - timedelta(days=1)), sdk_text(moment), session_id),
            )
    # Ours, written through a Tokyo clock at the same instant; opening adopts the SDK rows.
    ours = await write(db_path, "edge", cutoff.astimezone(ZoneInfo("Asia/Tokyo")))
    # A row the SDK inserts after adoption goes through the insert trigger.
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO agent_sessions (session_id, created_at, updated_at) VALUES (?, ?, ?)",
            ("user_late_conv_edge", sdk_text(cutoff), sdk_text(cutoff)),
        )
        conn.execute(
            "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
            ("user_late_conv_edge", '{"role": "user", "content": "x"}'),
        )
    edge = {ours, "user_sdk_conv_edge", "legacy id", "user_late_conv_edge"}
    stamps = {sid: stored_ts(db_path, sid) for sid in edge}
    assert set(stamps.values()) == {cutoff.timestamp()}, f"SDK text times differ: {stamps}"
    clock = FakeClock(NOW.astimezone(ZoneInfo("America/Los_Angeles")))
    async with manager(db_path, clock) as mgr:
        stats = await mgr.get_session_stats("user_sdk_conv_edge")
        assert (stats.user_id, stats.conversation_id) == ("sdk", "edge"), stats
        assert stats.last_activity == cutoff, stats
        await cleanup_deletes(mgr, db_path, {"user_sdk_conv_old"}, "SDK text, 1 s past")
        clock.advance(microseconds=1)
        await cleanup_deletes(mgr, db_path, edge, "SDK text and ours, 1 µs past")
    assert session_ids(db_path) == set()
    assert rows_per_session(db_path) == {}


# --- property -------------------------------------------------------------------------------

# Every time below lies in [2**30, 2**31) POSIX seconds (2004-01-10 .. 2038-01-19), where
# floats are spaced 2**-22 s apart, so each microsecond is its own stored value. (Across
# those powers of two the boundary used to be off by a rounding step: see the test above.)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOW = datetime(2004, 6, 1, tzinfo=UTC)
HIGH = datetime(2037, 6, 1, tzinfo=UTC)
DAY_US = 86_400_000_000
ZONE_NAMES = sorted(ZONES)


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // US


OFFSET_US = st.one_of(
    st.sampled_from([0, -1, 1, -2, 2, -1_000_000, 1_000_000, -DAY_US, DAY_US]),
    st.integers(-90 * DAY_US, 30 * DAY_US),
)
WRITE = st.tuples(OFFSET_US, st.sampled_from(ZONE_NAMES))


def _cleanup_property(tmp_path: Path, prop: settings) -> None:
    figures: Counter[str] = Counter()

    async def check(
        now_us: int,
        retention_days: int,
        sessions: list[list[tuple[int, str]]],
        steps: list[int],
        manager_zone: str,
    ) -> None:
        db = tmp_path / f"p{figures['examples']}.db"
        retention_us = retention_days * DAY_US
        last: dict[str, int] = {}
        writes: dict[str, int] = {}
        for n, session_writes in enumerate(sessions):
            moments = [
                from_us(now_us - retention_us + offset).astimezone(ZONES[zone])
                for offset, zone in session_writes
            ]
            sid = await write(db, f"s{n}", *moments)
            last[sid] = max(to_us(m) for m in moments)
            writes[sid] = len(moments)
        clock = FakeClock()
        alive = set(last)
        async with manager(db, clock, retention_days) as mgr:
            for step in [0, *steps]:
                now_us += step
                clock.now = from_us(now_us).astimezone(ZONES[manager_zone])
                cutoff = now_us - retention_us
                gone = {sid for sid in alive if last[sid] < cutoff}
                what = f"now {clock.now}, retention {retention_days} d, step {step} µs"
                await cleanup_deletes(mgr, db, gone, what)
                alive -= gone
                figures["deleted"] += len(gone)
                figures["kept"] += len(alive)
                figures["at the boundary"] += sum(last[sid] == cutoff for sid in alive)
                for sid in alive:
                    stats = await mgr.get_session_stats(sid)
                    assert to_us(stats.last_activity) == last[sid], (sid, stats)
        assert rows_per_session(db) == {sid: writes[sid] for sid in alive}

    @prop
    @given(
        now_us=st.integers(to_us(LOW) + 200 * DAY_US, to_us(HIGH) - 200 * DAY_US),
        retention_days=st.one_of(st.sampled_from([1, 7, 30]), st.integers(1, 60)),
        sessions=st.lists(st.lists(WRITE, min_size=1, max_size=3), min_size=1, max_size=8),
        steps=st.lists(
            st.one_of(st.sampled_from([1, -1, 0]), st.integers(-60 * DAY_US, 60 * DAY_US)),
            max_size=3,
        ),
        manager_zone=st.sampled_from(ZONE_NAMES),
    )
    @example(
        now_us=to_us(NOW),
        retention_days=7,
        sessions=[[(0, "UTC")], [(-1, "Asia/Tokyo")], [(1, "-09:30")], [(-5, "UTC"), (0, "UTC")]],
        steps=[1, -1, 1],
        manager_zone="America/Los_Angeles",
    )
    def property_(
        now_us: int,
        retention_days: int,
        sessions: list[list[tuple[int, str]]],
        steps: list[int],
        manager_zone: str,
    ) -> None:
        figures["examples"] += 1
        asyncio.run(check(now_us, retention_days, sessions, steps, manager_zone))

    property_()
    assert figures["deleted"] > 0, figures
    assert figures["kept"] > 0, figures
    assert figures["at the boundary"] > 0, figures
    print(f"cleanup property: {dict(figures)}")


def test_cleanup_deletes_exactly_the_sessions_idle_past_retention(tmp_path: Path) -> None:
    _cleanup_property(tmp_path, PROPERTY)


@pytest.mark.slow
def test_cleanup_deletes_exactly_the_sessions_idle_past_retention_long(tmp_path: Path) -> None:
    _cleanup_property(tmp_path, SLOW_PROPERTY)
