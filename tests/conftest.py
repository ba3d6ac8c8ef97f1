"""Shared fixtures: a clean environment, a database file per test, a movable clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

# Offline runs: no trace export attempts (and no "OPENAI_API_KEY is not set" noise).
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Keep the machine's AGENT_SESSION_* variables and any .env file out of every test."""
    from agent_sessions.settings import get_settings

    for name in list(os.environ):
        if name.startswith("AGENT_SESSION_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # a .env in the repo must not leak in either
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    """Start each test as a new process would: no write latencies, no warnings logged yet."""
    from agent_sessions import metrics

    metrics.write_latency.clear()
    metrics.threshold_warnings.clear()
    yield
    metrics.write_latency.clear()
    metrics.threshold_warnings.clear()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database file path (not yet created)."""
    return tmp_path / "sessions.db"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
