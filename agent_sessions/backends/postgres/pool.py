"""Connection pools: one per process, event loop and URL, shared by every backend on it.

A pool belongs to the event loop it was opened in. Once that loop has closed, its pool is
dropped and the next call in a new loop opens another. A forked child never touches its
parent's pools (closing one would end the parent's server sessions): it keeps them
referenced, unused, and opens its own.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[Any]]


def connection_kwargs(connect_timeout: float) -> dict[str, Any]:
    """What every connection of ours is opened with.

    Autocommit, so transactions are only the ones we open; no server-side prepared
    statements (``prepare_threshold=None``), which would outlive the transaction that made
    them and break behind PgBouncer in transaction mode.
    """
    return {
        "autocommit": True,
        "prepare_threshold": None,
        # libpq takes whole seconds.
        "connect_timeout": max(1, math.ceil(connect_timeout)),
    }


@dataclass
class _Entry:
    loop: asyncio.AbstractEventLoop
    schema_lock: asyncio.Lock
    """Held while the schema is checked, so concurrent first calls open one connection."""
    pool: Pool | None = None


class _Registry:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.entries: dict[tuple[str, int], _Entry] = {}
        self.ready: set[str] = set()
        """URLs whose schema this process has checked (or migrated)."""

    def forget_after_fork(self) -> None:
        _inherited.extend(entry.pool for entry in self.entries.values() if entry.pool)
        self.entries = {}
        self.ready = set()
        self.pid = os.getpid()

    def entry(self, url: str) -> _Entry:
        """The entry of ``url`` for the running loop; those of closed loops are dropped."""
        loop = asyncio.get_running_loop()
        entry = self.entries.get((url, id(loop)))
        if entry is not None and entry.loop is loop:
            return entry
        self.drop_closed_loops()
        entry = self.entries[url, id(loop)] = _Entry(loop, asyncio.Lock())
        return entry

    def drop_closed_loops(self) -> None:
        """Forget the pools of event loops that have closed; they cannot be used again."""
        # Their connections close when the pools are garbage-collected (pooled psycopg
        # connections do not warn about that).
        for key, entry in list(self.entries.items()):
            if entry.loop.is_closed():
                del self.entries[key]


_inherited: list[Pool] = []
_registry = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.forget_after_fork)


def _current() -> _Registry:
    if _registry.pid != os.getpid():  # forked without the hook (it is there on POSIX)
        _registry.forget_after_fork()
    return _registry


async def shared_pool(url: str, *, min_size: int, max_size: int, connect_timeout: float) -> Pool:
    """The open pool for ``url`` in this process and event loop, opened on first use.

    The sizes and timeout of the first call for a URL and loop are the ones used.
    """
    entry = _current().entry(url)
    if entry.pool is None:
        entry.pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs=connection_kwargs(connect_timeout),
            timeout=connect_timeout,
            open=False,
            name="agent_sessions",
        )
    if entry.pool.closed:
        # Idempotent: a task that finds the pool another task is still opening waits for it.
        await entry.pool.open()
    return entry.pool


def schema_lock(url: str) -> asyncio.Lock:
    """The lock to hold while checking the schema at ``url`` from the running loop."""
    return _current().entry(url).schema_lock


def schema_ready(url: str) -> bool:
    """Whether this process has already checked or migrated the schema at ``url``."""
    return url in _current().ready


def mark_schema_ready(url: str) -> None:
    """Remember that the schema at ``url`` is current, so later backends skip the check."""
    _current().ready.add(url)


async def close_pools() -> None:
    """Close this process's pools opened in the running event loop; drop those of closed loops.

    Backends keep working afterwards: their next call opens a new pool (and checks the
    schema again). Pools of other event loops still running are left to them.
    """
    loop = asyncio.get_running_loop()
    registry = _current()
    registry.drop_closed_loops()
    mine = [key for key, entry in registry.entries.items() if entry.loop is loop]
    pools = [pool for key in mine if (pool := registry.entries.pop(key).pool) is not None]
    registry.ready.clear()
    for pool in pools:
        await pool.close()
