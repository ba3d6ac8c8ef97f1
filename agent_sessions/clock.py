"""Time as the library sees it: an injectable clock returning aware UTC datetimes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .errors import InvalidArgumentError

Clock = Callable[[], datetime]
"""A callable returning the current time as an aware datetime (converted to UTC)."""


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_timestamp(moment: datetime) -> float:
    """Convert an aware datetime to POSIX seconds, the one format stored by this library.

    Raises:
        InvalidArgumentError: if ``moment`` is not an aware datetime.
    """
    return as_utc(moment).timestamp()


def as_utc(moment: object) -> datetime:
    """Return ``moment`` converted to UTC.

    Arithmetic on the result counts elapsed time: an aware datetime in a zone with daylight
    saving time would add wall-clock days instead.

    Raises:
        InvalidArgumentError: if ``moment`` is not an aware datetime.
    """
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgumentError(f"the clock must return an aware datetime, got {moment!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidArgumentError(f"the clock returned a time out of range: {moment!r}") from None


def days_before(moment: datetime, days: int) -> datetime:
    """Return ``moment`` (aware) minus ``days`` days of elapsed time, in UTC.

    Raises:
        InvalidArgumentError: if ``moment`` is not aware, or the result is before year 1.
    """
    try:
        return as_utc(moment) - timedelta(days=days)
    except OverflowError:
        raise InvalidArgumentError(
            f"the clock's time {moment!r} is too early to subtract {days} day(s) from"
        ) from None


def cutoff_before(moment: datetime, period: timedelta) -> float:
    """POSIX seconds of ``moment`` minus ``period``: activity before it has expired.

    Computed on datetimes, so a time stored from the same clock compares exactly at the
    boundary (float subtraction could be off by a rounding step).

    Raises:
        InvalidArgumentError: if ``moment`` is not aware. Before year 1, the earliest time.
    """
    try:
        return to_timestamp(as_utc(moment) - period)
    except OverflowError:
        return to_timestamp(_EARLIEST)


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def from_timestamp(seconds: float) -> datetime:
    """Convert stored POSIX seconds back to an aware UTC datetime.

    Values beyond what ``datetime`` can hold (a clock that returned ``datetime.max``) are
    clamped to its range, so reading a session never fails on its timestamp.
    """
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return _LATEST if seconds > 0 else _EARLIEST


def now_timestamp(clock: Clock) -> float:
    """Read ``clock`` and return POSIX seconds."""
    return to_timestamp(clock())
