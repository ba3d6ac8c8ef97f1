"""The cleanup job, daily and every ``cleanup_interval``, in an app or as a standalone daemon.

Wired into APScheduler 3.x.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .durations import format_duration
from .errors import SchedulerError, SessionClosedError
from .manager import SessionManager
from .settings import AgentSessionSettings, get_settings

logger = logging.getLogger("agent_sessions")

CLEANUP_JOB_ID = "agent-sessions-cleanup"
"""Id of the cleanup job; registering it again replaces the earlier one."""

MISFIRE_GRACE_SECONDS = 3600
"""A run missed (e.g. the process was asleep) still happens if less than this late."""


async def run_cleanup(
    manager: SessionManager | None = None, settings: AgentSessionSettings | None = None
) -> int | None:
    """Run one cleanup, logging the outcome; never raises, so the schedule survives errors.

    With no ``manager``, a fresh one is opened from ``settings`` for this run and closed after.
    After the sweep, the counts are checked against the monitoring thresholds (see
    ``SessionManager.health``) while one of them has not warned yet.

    Returns:
        The number of sessions deleted, or ``None`` if the run failed (the error is logged).
    """
    try:
        if manager is not None:
            deleted = await _sweep(manager)
            db_path = manager.db_path
        else:
            async with SessionManager(settings=settings or get_settings()) as own:
                deleted = await _sweep(own)
                db_path = own.db_path
    except SessionClosedError as exc:
        # Expected when an app shuts down mid-run (the batches done so far are committed); a
        # warning, not an error, but visible if the manager was closed too early by mistake.
        logger.warning("agent_sessions cleanup did not finish: %s", exc)
        return None
    except Exception:
        logger.exception("agent_sessions cleanup failed")
        return None
    logger.info("agent_sessions cleanup deleted %d idle session(s) from %s", deleted, db_path)
    return deleted


async def _sweep(manager: SessionManager) -> int:
    deleted = await manager.cleanup_inactive_sessions()
    try:
        await manager._check_thresholds()  # private to the package: the sweep's own check
    except Exception:  # a failed check is no failed sweep: it is done and recorded
        logger.warning("agent_sessions: checking the monitoring thresholds failed", exc_info=True)
    return deleted


def _trigger(settings: AgentSessionSettings) -> BaseTrigger:
    """Daily at ``cleanup_hour:cleanup_minute``, or that or every ``cleanup_interval``."""
    zone = ZoneInfo(settings.timezone)
    daily = CronTrigger(hour=settings.cleanup_hour, minute=settings.cleanup_minute, timezone=zone)
    if settings.cleanup_interval is None:
        return daily
    # One job on both schedules, so its max_instances=1 also keeps the two from overlapping.
    return OrTrigger(
        [daily, IntervalTrigger(seconds=settings.cleanup_interval.total_seconds(), timezone=zone)]
    )


def start_cleanup_scheduler(
    manager: SessionManager | None = None,
    *,
    scheduler: AsyncIOScheduler | None = None,
    settings: AgentSessionSettings | None = None,
) -> AsyncIOScheduler:
    """Schedule ``cleanup_inactive_sessions`` daily at ``cleanup_hour:cleanup_minute``.

    With ``cleanup_interval`` set, the same job also runs that often (from now), for
    retentions measured in minutes or hours. Registers the job ``CLEANUP_JOB_ID`` (replacing
    any earlier one): coalesced, one instance at a time (a run due while the last one still
    runs is skipped, not queued), with a misfire grace of ``MISFIRE_GRACE_SECONDS``.
    Starts the scheduler if it
    is not running, which needs a running event loop (call it from async code, e.g. a
    FastAPI lifespan). Several processes each running it is safe: cleanup works in short
    transactions and a second run finds nothing left to delete.

    Args:
        manager: The manager to clean up with (the caller closes it); by default each run
            opens its own from ``settings``.
        scheduler: An existing scheduler to add the job to; by default a new one.
        settings: Settings for the schedule and the default manager; by default the
            ``manager``'s own settings (those it was built with), else ``get_settings()``.

    Returns:
        The scheduler; call ``scheduler.shutdown()`` on exit.

    Raises:
        SchedulerError: if the scheduler must be started and no event loop is running (it
            was called from synchronous code); nothing is scheduled then.
    """
    if settings is None:
        settings = (manager.settings if manager is not None else None) or get_settings()
    zone = ZoneInfo(settings.timezone)
    if scheduler is None:
        scheduler = AsyncIOScheduler(timezone=zone)
    if not scheduler.running and not _has_event_loop(scheduler):
        raise SchedulerError(
            "start_cleanup_scheduler needs a running event loop to start the scheduler: call "
            "it from async code (e.g. a FastAPI lifespan), or pass a started scheduler"
        )
    scheduler.add_job(
        run_cleanup,
        trigger=_trigger(settings),
        args=(manager, settings),
        id=CLEANUP_JOB_ID,
        name="agent_sessions cleanup",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=MISFIRE_GRACE_SECONDS,
    )
    if not scheduler.running:
        scheduler.start()
    return scheduler


def _has_event_loop(scheduler: AsyncIOScheduler) -> bool:
    given = getattr(scheduler, "_eventloop", None)  # AsyncIOScheduler(event_loop=...)
    if given is not None and not given.is_closed():
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def run_daemon(
    settings: AgentSessionSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    create: bool = True,
) -> None:
    """Run the scheduled cleanup in the foreground until SIGINT/SIGTERM (or ``stop`` is set).

    The database is opened before the schedule starts, so an unusable path fails at once
    rather than at the first run; every run uses that connection.

    Args:
        settings: Settings for the schedule and the database; defaults to ``get_settings()``.
        stop: Set it to stop the daemon (in addition to the signals).
        create: Create the database if it does not exist; with ``False`` a missing file
            raises ``StorageUnavailableError`` (the CLI's choice: a typo must not create one).

    Raises:
        StorageError: (a subclass) if the database cannot be opened.
    """
    settings = settings or get_settings()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with SessionManager(settings=settings, create=create) as manager:
        handled = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        scheduler = start_cleanup_scheduler(manager, settings=settings)
        job = scheduler.get_job(CLEANUP_JOB_ID)
        every = settings.cleanup_interval
        logger.info(
            "agent_sessions cleanup daemon started for %s; next run at %s%s",
            manager.db_path,
            job.next_run_time if job is not None else "?",
            "" if every is None else f" (daily, and every {format_duration(every)})",
        )
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            for signum in handled:
                loop.remove_signal_handler(signum)
            logger.info("agent_sessions cleanup daemon stopped")
