"""Durations written as text (``30m``, ``12h``, ``7d``): retention and the cleanup interval."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidArgumentError

MAX_DURATION = timedelta(days=36_500)
"""Longest duration accepted (a century): anything larger is a typo, and cutoffs stay in range."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
_WHOLE = re.compile(r"(?:\s*\d+\s*[smhdw])+\s*")


def parse_duration(value: object, what: str = "duration") -> timedelta:
    """Return ``value`` as a positive ``timedelta``.

    Accepts a ``timedelta``, or text made of whole numbers with a unit each: ``s``, ``m``,
    ``h``, ``d`` or ``w`` (``"30m"``, ``"1h30m"``, ``"7d"``). A bare number is refused: it
    could mean seconds, minutes or days.

    Raises:
        InvalidArgumentError: naming ``what`` if it is not a duration, not positive, or longer
            than ``MAX_DURATION``.
    """
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, int | float):
        # 30 could mean seconds, minutes or days: a unit is required.
        raise InvalidArgumentError(
            f"{what} must be a duration with a unit such as '30s', '30m' or '7d', or a "
            f"timedelta, not the bare number {value!r}"
        )
    elif isinstance(value, str):
        text = value.strip().lower()
        if not _WHOLE.fullmatch(text):
            raise InvalidArgumentError(
                f"{what} must be a duration such as '30m', '12h' or '7d' (units s, m, h, d, w), "
                f"not {value[:40]!r}"
            )
        seconds = sum(int(number) * _UNITS[unit] for number, unit in _PART.findall(text))
        if seconds > MAX_DURATION.total_seconds():
            raise InvalidArgumentError(f"{what} must be at most {MAX_DURATION.days} days")
        duration = timedelta(seconds=seconds)
    else:
        raise InvalidArgumentError(
            f"{what} must be a duration such as '30m', not {type(value).__name__}"
        )
    if duration <= timedelta(0):
        raise InvalidArgumentError(f"{what} must be positive, got {format_duration(duration)}")
    if duration > MAX_DURATION:
        raise InvalidArgumentError(f"{what} must be at most {MAX_DURATION.days} days")
    return duration


def format_duration(duration: timedelta) -> str:
    """``duration`` in the form ``parse_duration`` reads, largest units first (``"1h30m"``)."""
    seconds = duration.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        return f"{seconds:g}s"
    left = int(seconds)
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
