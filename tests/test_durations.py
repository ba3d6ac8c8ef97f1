"""Durations as text: what retention and the cleanup interval accept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_sessions.durations import MAX_DURATION, format_duration, parse_duration
from agent_sessions.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
        (" 1D 2H ", timedelta(days=1, hours=2)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_durations_parse(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "30",
        "m",
        "3x",
        "-5m",
        "0m",
        "1.5h",
        "7 days",
        "30m garbage",
        "36501d",
        30,
        1.5,
        True,
        None,
        [1],
        timedelta(0),
        timedelta(seconds=-1),
        MAX_DURATION + timedelta(seconds=1),
    ],
)
def test_bad_durations_are_named_errors(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="retention"):
        parse_duration(bad, "retention")


@given(st.integers(1, int(MAX_DURATION.total_seconds())))
def test_format_reads_back(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    assert parse_duration(format_duration(duration)) == duration
