"""Reliability under storage faults: a full disk, corrupt rows, damaged and foreign files.

Issue 5, items 3 and 4.

A full disk is simulated two ways; the full-disk tests run with both where they can:

* ``page_limit``: ``PRAGMA max_page_count`` pinned to the current size on the connections the
  code under test uses, so any write needing a new page fails with SQLITE_FULL. Works
  anywhere, but only on those connections, and a write that fits in existing pages succeeds.
* ``tmpfs``: the database lives on a small tmpfs mount filled to the last block by a ballast
  file; "space returns" when the ballast is deleted. This is a real ENOSPC from the kernel,
  hitting the WAL and the files SQLite creates. It needs ``mount`` (root); where that is
  not permitted the variant is skipped and ``page_limit`` still runs.

Corruption covers rows that are not items, a truncated file, a file with zeroed pages,
garbage and non-SQLite files, an empty file, and a file whose tables belong to another app.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner
from agents.testing import ScriptedModel, assistant_message

from agent_sessions import (
    AgentSession,
    AgentSessionsError,
    CorruptDatabaseError,
    SessionManager,
    SessionNotFoundError,
    StorageError,
    StorageFullError,
)
from agent_sessions.backends.sqlite.engine import close_idle_connections
from agent_sessions.cli import main as cli_main
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

Item = dict[str, Any]

# --- helpers ----------------------------------------------------------------------------------


def bulky(tag: str, size: int) -> Item:
    """A user message of about ``size`` bytes (a bulky batch needs new pages)."""
    return user(f"{tag} " + "x" * size)


async def add(session: AgentSession, items: list[Item]) -> None:
    await session.add_items(items)  # type: ignore[arg-type]


def batch(tag: str, count: int = 4, size: int = 3000) -> list[Item]:
    return [bulky(f"{tag}.{n}", size) for n in range(count)]


def contents(items: list[Any]) -> list[Any]:
    """A short projection of items for comparison (text, or the call id)."""
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = content[0]["text"]
        out.append(content if content is not None else item.get("call_id"))
    return out


def raw_rows(path: Path, session_id: str) -> list[tuple[int, Any]]:
    """The session's rows as stored, through a connection of the test's own."""
    with closing(sqlite3.connect(path)) as conn:
        conn.text_factory = bytes  # a row that is not valid UTF-8 must not stop the test
        rows = conn.execute(
            "SELECT id, message_data FROM agent_messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        ).fetchall()
    return [(row_id, data.decode() if _is_utf8(data) else data) for row_id, data in rows]


def _is_utf8(data: object) -> bool:
    if not isinstance(data, bytes):
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def raw_items(path: Path, session_id: str) -> list[Any]:
    return [json.loads(data) for _, data in raw_rows(path, session_id)]


def session_row_count(path: Path, session_id: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM agent_sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
    return int(count)


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_connection(session: AgentSession) -> sqlite3.Connection:
    """The ``sqlite3`` connection ``session`` runs its SQL on in this thread.

    Relies on private internals of ``agent_sessions``: ``AgentSession._backend``, the SQLite
    backend's ``_engine()`` and the engine's ``conn`` attribute
    (``agent_sessions/backends/sqlite/``). The page-limit simulation of a full disk needs the
    very connection the library writes with; if those internals change, this helper fails
    loudly rather than the tests passing vacuously.
    """
    return session._backend._engine().conn


def agent_sessions_script() -> str:
    found = Path(sys.executable).parent / "agent-sessions"
    if not found.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    return str(found)


def run_cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [agent_sessions_script(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(stderr: str, path: Path, what: str) -> None:
    """The CLI's storage-failure contract: one line on stderr naming the path, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"{what}: expected one line on stderr, got {len(lines)}: {stderr!r}"
    assert str(path) in lines[0], f"{what}: stderr does not name {path}: {stderr!r}"
    assert "Traceback" not in stderr, f"{what}: traceback on stderr: {stderr!r}"


def assert_full_error(exc: BaseException, path: Path, what: str) -> None:
    """A clear StorageFullError: says the storage is full and names the database."""
    assert isinstance(exc, StorageFullError), f"{what}: {type(exc).__name__}: {exc}"
    assert isinstance(exc, AgentSessionsError)
    text = str(exc)
    assert "full" in text.lower(), f"{what}: message does not say storage is full: {text!r}"
    assert str(path) in text, f"{what}: message does not name {path}: {text!r}"
    assert exc.path == str(path), f"{what}: exc.path is {exc.path!r}"


# --- full disk: the two simulations -----------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``where``; skip the test if mounting is not permitted."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mount -t tmpfs needs root here; the page_limit variant covers SQLITE_FULL")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.strip()})")
    try:
        yield where
    finally:
        close_idle_connections()  # open files would keep the mount busy
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill_filesystem(ballast: Path) -> int:
    """Grow ``ballast`` until its filesystem has no free block left; return its size."""
    with ballast.open("ab", buffering=0) as file:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written = file.write(block)
                    if written is None or written < chunk:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return ballast.stat().st_size


class FullDisk:
    """Makes the database full, and gives the space back, by one of the two simulations."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.db_path = directory / "sessions.db"
        self.ballast = directory / "ballast"
        self._limited: list[tuple[sqlite3.Connection | SessionManager, int]] = []

    @property
    def real(self) -> bool:
        """True when every write needs space (tmpfs); with a page limit, deletes still fit."""
        return self.kind == "tmpfs"

    async def fill(
        self, session: AgentSession | None = None, manager: SessionManager | None = None
    ) -> str:
        """Make writes fail with SQLITE_FULL; returns a figure for the assertion messages."""
        if self.kind == "tmpfs":
            size = fill_filesystem(self.ballast)
            free = os.statvfs(self.directory).f_bavail
            assert free == 0, f"tmpfs still has {free} free blocks after a {size}-byte ballast"
            return f"tmpfs filled by a {size}-byte ballast"
        if session is not None:
            conn = session_connection(session)
            (previous,) = conn.execute("PRAGMA max_page_count").fetchone()
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {int(pages)}")
            self._limited.append((conn, int(previous)))
        if manager is not None:
            # Private: the SQLite backend's _run executes on the manager's own connection
            # (that of its worker thread).
            run = manager._backend._run  # type: ignore[attr-defined]
            (previous,) = await run(lambda conn: conn.execute("PRAGMA max_page_count").fetchone())
            (pages,) = await run(lambda conn: conn.execute("PRAGMA page_count").fetchone())
            await run(lambda conn: conn.execute(f"PRAGMA max_page_count = {int(pages)}"))
            self._limited.append((manager, int(previous)))
        return f"max_page_count pinned at the current size on {len(self._limited)} connection(s)"

    async def give_back(self, rng: random.Random) -> str:
        """Return a little space: a few pages, or some KB of the ballast."""
        if self.kind == "tmpfs":
            size = self.ballast.stat().st_size
            amount = min(size, rng.randint(16, 128) * 1024)
            os.truncate(self.ballast, size - amount)
            return f"{amount // 1024} KB"
        pages = rng.randint(2, 12)
        for target, _ in self._limited:
            assert isinstance(target, sqlite3.Connection)
            (current,) = target.execute("PRAGMA max_page_count").fetchone()
            target.execute(f"PRAGMA max_page_count = {int(current) + pages}")
        return f"{pages} pages"

    async def free(self) -> None:
        """Give the space back."""
        if self.kind == "tmpfs":
            self.ballast.unlink(missing_ok=True)
            return
        for target, previous in self._limited:
            if isinstance(target, SessionManager):
                await target._backend._run(  # type: ignore[attr-defined]
                    lambda conn: conn.execute(f"PRAGMA max_page_count = {previous}")  # noqa: B023
                )
            else:
                target.execute(f"PRAGMA max_page_count = {previous}")
        self._limited.clear()


@pytest.fixture(params=["page_limit", "tmpfs"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    if request.param == "page_limit":
        yield FullDisk("page_limit", tmp_path)
        return
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mount:
        yield FullDisk("tmpfs", mount)


# --- 3. full disk -----------------------------------------------------------------------------


async def test_full_disk_fails_writes_cleanly_keeps_reads_and_resumes_on_the_same_session(
    disk: FullDisk,
) -> None:
    path = disk.db_path
    acked_a: list[Item] = []
    acked_b: list[Item] = []
    errors: list[str] = []
    with (
        AgentSession("u", "a", db_path=path, max_messages=10_000) as a,
        AgentSession("u", "b", db_path=path, max_messages=10_000) as b,
    ):
        for n in range(6):
            await add(a, batch(f"a{n}", size=1000))
            acked_a += batch(f"a{n}", size=1000)
        for n in range(2):
            await add(b, batch(f"b{n}", size=1000))
            acked_b += batch(f"b{n}", size=1000)
        async with SessionManager(path, max_messages=10_000, retention_days=7) as manager:
            before = await manager.get_session_stats(a.session_id)
            how = await disk.fill(a, manager)

            # Writes that need space fail, each with a clear StorageFullError.
            failing: list[tuple[str, Any]] = [
                ("a: 4 x 3 KB", lambda: add(a, batch("lost1"))),
                ("a: one 3 MB item", lambda: add(a, [bulky("lost2", 3_000_000)])),
                ("b: 4 x 3 KB", lambda: add(b, batch("lost3"))),
            ]
            if disk.real:  # with a page limit these need no new page, and succeed
                failing += [
                    ("a: one tiny item", lambda: add(a, [user("lost4")])),
                    ("b: pop_item", b.pop_item),
                    ("a: clear_session", a.clear_session),
                ]
            for what, operation in failing:
                with pytest.raises(StorageFullError) as info:
                    await operation()
                assert_full_error(info.value, path, f"{disk.kind} {what}")
                errors.append(what)
            # A new session's first write fails too, and leaves no session row behind.
            with AgentSession("u", "c", db_path=path, max_messages=10_000) as c:
                with pytest.raises(StorageFullError) as info:
                    await add(c, batch("lost5"))
                assert_full_error(info.value, path, f"{disk.kind} c: first write")
                errors.append("c: first write")
                assert await c.get_items() == []
                new_session_id = c.session_id

            # Reads keep working while full, on both sessions and on the manager's connection.
            figures = f"{disk.kind}: {how}; {len(errors)} writes refused ({', '.join(errors)})"
            got_a, got_b = await a.get_items(), await b.get_items()
            lost = len([i for i in acked_a if i not in got_a]) + len(
                [i for i in acked_b if i not in got_b]
            )
            assert got_a == acked_a, f"{figures}; a: {len(got_a)}/{len(acked_a)} items, {lost} lost"
            assert got_b == acked_b, f"{figures}; b: {len(got_b)}/{len(acked_b)} items, {lost} lost"
            assert await a.get_items(3) == acked_a[-3:], figures
            stats = await manager.get_session_stats(a.session_id)
            assert stats == before, f"{figures}: a failed write changed a's stats: {stats}"
            listed = {s.session_id: s.message_count for s in await manager.list_sessions()}
            assert listed == {a.session_id: len(acked_a), b.session_id: len(acked_b)}, (
                f"{figures}: manager lists {listed}"
            )
            with pytest.raises(SessionNotFoundError):
                await manager.get_session_stats(new_session_id)
            # And through a connection of the test's own: the failed batches left no row.
            assert raw_items(path, a.session_id) == acked_a, figures
            assert raw_items(path, b.session_id) == acked_b, figures
            assert raw_rows(path, new_session_id) == [], figures
            assert session_row_count(path, new_session_id) == 0, figures

            # Space returns: the same session objects write again, no restart.
            await disk.free()
            await add(a, batch("a-after"))
            acked_a += batch("a-after")
            await add(b, [user("b-after")])
            acked_b.append(user("b-after"))
            assert await a.get_items() == acked_a, f"{figures}: a after space returned"
            assert await b.get_items() == acked_b, f"{figures}: b after space returned"
            assert await b.pop_item() == user("b-after")
            acked_b.pop()
    close_idle_connections()
    with AgentSession("u", "a", db_path=path) as a, AgentSession("u", "b", db_path=path) as b:
        assert await a.get_items() == acked_a, f"{figures}: a after reopening"
        assert await b.get_items() == acked_b, f"{figures}: b after reopening"
    assert integrity(path) == "ok", figures


def whole_or_gone(path: Path, expected: dict[str, list[Item]]) -> tuple[list[str], list[str]]:
    """Split sessions into kept and deleted, asserting each is exactly whole or fully gone."""
    kept, gone = [], []
    with closing(sqlite3.connect(path)) as conn:
        orphans = conn.execute(
            "SELECT COUNT(*) FROM agent_messages WHERE session_id NOT IN "
            "(SELECT session_id FROM agent_sessions)"
        ).fetchone()[0]
    assert orphans == 0, f"{orphans} message rows left without their session"
    for session_id, items in expected.items():
        stored = raw_items(path, session_id)
        has_row = session_row_count(path, session_id) == 1
        if has_row and stored == items:
            kept.append(session_id)
        elif not has_row and not stored:
            gone.append(session_id)
        else:
            raise AssertionError(
                f"{session_id} half-deleted: session row {has_row}, "
                f"{len(stored)}/{len(items)} items"
            )
    return kept, gone


async def test_manager_writes_on_a_full_disk_are_all_or_nothing(
    disk: FullDisk, clock: FakeClock
) -> None:
    path = disk.db_path
    idle: dict[str, list[Item]] = {}
    for n in range(30):
        items = [bulky(f"idle{n}.{k}", 200) for k in range(6)]
        with AgentSession("u", f"idle{n}", db_path=path, clock=clock) as session:
            await add(session, items)
            idle[session.session_id] = items
    clock.advance(days=10)
    turns = [user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3"), assistant("a3")]
    for name in ("keep", "clear", "prune"):
        with AgentSession("u", name, db_path=path, clock=clock, max_messages=100) as session:
            await add(session, turns)
    keep_id, clear_id, prune_id = "user_u_conv_keep", "user_u_conv_clear", "user_u_conv_prune"
    outcomes: list[str] = []

    async def attempt(what: str, operation: Callable[[], Awaitable[int]]) -> bool:
        """Run a manager write on the full disk; True if it went through."""
        try:
            result = await operation()
        except StorageFullError as exc:
            assert_full_error(exc, path, f"{disk.kind} {what}")
            outcomes.append(f"{what}: StorageFullError")
            return False
        outcomes.append(f"{what}: done ({result})")
        return True

    async with SessionManager(
        path, max_messages=2, retention_days=7, clock=clock, cleanup_batch_size=4
    ) as manager:
        with AgentSession("u", "keep", db_path=path, clock=clock) as keep:
            how = await disk.fill(keep, manager)
            cleared = await attempt("clear_session", lambda: manager.clear_session(clear_id))
            pruned = await attempt(
                "prune_session_messages", lambda: manager.prune_session_messages(prune_id)
            )
            if disk.real:
                assert not cleared, f"tmpfs: clear went through: {outcomes}"
                assert not pruned, f"tmpfs: prune went through: {outcomes}"
                # Room for a batch or so: cleanup commits some batches, then one fails.
                os.truncate(disk.ballast, disk.ballast.stat().st_size - 64 * 1024)
            cleaned = await attempt("cleanup_inactive_sessions", manager.cleanup_inactive_sessions)
            figures = f"{disk.kind} ({how}): {'; '.join(outcomes)}"
            # With a page limit deletes need no new page and may succeed; on a real full
            # disk every write needs room in the WAL.
            assert not (disk.real and cleaned), figures

            expected = {
                **idle,
                keep_id: turns,
                clear_id: turns,
                prune_id: turns[-2:] if pruned else turns,
            }
            kept, gone = whole_or_gone(path, expected)
            figures += f"; while full {len(gone)} sessions deleted, {len(kept)} kept whole"
            assert (clear_id in gone) == cleared, figures
            assert {keep_id, prune_id} <= set(kept), figures
            if cleaned:
                assert set(idle) <= set(gone), figures
            # The manager still reads while full.
            count = await manager.get_session_count()
            assert count == len(kept), f"{figures}; the manager counts {count}"
            listed = {
                s.session_id: s.message_count
                for s in await manager.list_sessions(include_expired=True)
            }
            assert listed == {sid: len(expected[sid]) for sid in kept}, figures

            await disk.free()
            remaining_idle = len(set(idle) & set(kept))
            assert await manager.cleanup_inactive_sessions() == remaining_idle, figures
            if not cleared:
                assert await manager.clear_session(clear_id) == len(turns), figures
            if not pruned:
                assert await manager.prune_session_messages(prune_id) == 4, figures
            await add(keep, [user("q4")])
    final = {keep_id: [*turns, user("q4")], prune_id: turns[-2:]}
    kept, _ = whole_or_gone(path, {**idle, clear_id: turns, **final})
    assert sorted(kept) == sorted(final), f"{figures}; kept after space returned: {kept}"
    assert integrity(path) == "ok", figures


@pytest.fixture(params=["page_limit", "tmpfs"])
def big_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    if request.param == "page_limit":
        yield FullDisk("page_limit", tmp_path)
        return
    with mounted_tmpfs(tmp_path / "mnt", "64m") as mount:
        yield FullDisk("tmpfs", mount)


@pytest.mark.slow
async def test_soak_a_disk_that_keeps_filling_up(big_disk: FullDisk) -> None:
    """600 times: a little space returns, the same session writes until full again."""
    disk, path, rng = big_disk, big_disk.db_path, random.Random(20260115)
    # On tmpfs the WAL grows whatever pruning frees, so pruning runs (200 items kept); with
    # a page limit, pages freed by pruning are reused and the limit would never be reached.
    cycles, keep = 600, 200 if disk.real else 1_000_000
    acked: list[Item] = []
    refused = unfilled = 0
    with (
        AgentSession("u", "a", db_path=path, max_messages=keep) as a,
        AgentSession("u", "b", db_path=path) as b,
    ):
        await add(a, [user("seed")])
        await add(b, [user("other")])
        acked.append(user("seed"))
        how = await disk.fill(a)
        for cycle in range(cycles):
            returned = await disk.give_back(rng)
            for n in range(300):
                items = [
                    bulky(f"{cycle}.{n}.{k}", rng.randint(100, 3000))
                    for k in range(rng.randint(1, 4))
                ]
                try:
                    await add(a, items)
                except StorageFullError as exc:
                    assert_full_error(exc, path, f"cycle {cycle}")
                    refused += 1
                    break
                acked.extend(items)
            else:
                unfilled += 1
            # Every item is a user message, so pruning keeps exactly the newest `keep`.
            figures = (
                f"{disk.kind} ({how}), cycle {cycle} (+{returned}): {len(acked)} items "
                f"acknowledged, {refused} writes refused, {unfilled} cycles never filled"
            )
            got = await a.get_items()
            if got != acked[-keep:]:
                lost = sum(item not in got for item in acked[-keep:])
                raise AssertionError(f"{figures}; {lost} lost, {len(got)} stored")
            assert await b.get_items() == [user("other")], figures
            if cycle % 20 == 0:
                assert raw_items(path, a.session_id) == acked[-keep:], figures
        await disk.free()
        await add(a, [user("last")])
        acked.append(user("last"))
    assert refused > cycles // 2, figures
    close_idle_connections()
    with AgentSession("u", "a", db_path=path) as a:
        assert await a.get_items() == acked[-keep:], figures
    assert integrity(path) == "ok", figures


@pytest.fixture
def tmpfs_disk(tmp_path: Path) -> Iterator[FullDisk]:
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mount:
        yield FullDisk("tmpfs", mount)


async def test_wal_growth_fills_the_filesystem_and_nothing_acknowledged_is_lost(
    tmpfs_disk: FullDisk,
) -> None:
    disk = tmpfs_disk
    path = disk.db_path
    wal = Path(f"{path}-wal")
    reserve = disk.directory / "reserve"
    reserve.write_bytes(b"\0" * 512 * 1024)  # freed later, as "space returns"
    acked: list[Item] = []

    async def write_until_full(session: AgentSession, tag: str) -> tuple[int, StorageFullError]:
        for n in range(1000):
            items = batch(f"{tag}{n}")
            try:
                await add(session, items)
            except StorageFullError as exc:
                return n, exc
            acked.extend(items)
        raise AssertionError(f"1000 batches ({len(acked)} items) fit on a 2 MB tmpfs")

    with AgentSession("u", "a", db_path=path, max_messages=100_000) as a:
        batches, exc = await write_until_full(a, "first")
        assert_full_error(exc, path, "WAL growth")
        wal_size = wal.stat().st_size
        figures = (
            f"{batches} batches ({len(acked)} items) acknowledged before the WAL "
            f"({wal_size} bytes; main file {path.stat().st_size}) filled the tmpfs"
        )
        assert batches > 10, figures
        assert await a.get_items() == acked, figures
        assert raw_items(path, a.session_id) == acked, figures
        # Another process reads while full.
        shown = run_cli_process("--db", str(path), "show", a.session_id, "--json")
        assert shown.returncode == 0, f"{figures}; CLI show: {shown.stderr}"
        assert json.loads(shown.stdout)["items"] == acked, figures
        # A new database cannot even be created: a clear error naming it.
        fresh = disk.directory / "fresh.db"
        with pytest.raises(StorageFullError) as info:
            AgentSession("u", "x", db_path=fresh)
        assert_full_error(info.value, fresh, "opening a new database on a full disk")

        reserve.unlink()  # space returns: the same session writes again, no restart
        await add(a, batch("resumed"))
        acked.extend(batch("resumed"))
        with AgentSession("u", "x", db_path=fresh) as x:  # the 0-byte file left is usable
            await add(x, [user("fresh")])
            assert await x.get_items() == [user("fresh")]
        more, exc = await write_until_full(a, "second")
        assert_full_error(exc, path, "WAL growth after space returned")
        figures += f"; {more} more batches on the same session after 512 KB were freed"
        assert more > 3, figures
        assert await a.get_items() == acked, figures

    # Every connection closes while the disk is full: the closing checkpoint cannot complete,
    # so the WAL must survive and be recovered on the next open.
    close_idle_connections()
    left = wal.stat().st_size if wal.exists() else 0
    figures += f"; after closing on a full disk the WAL is {left} bytes"
    with AgentSession("u", "a", db_path=path) as a:
        assert await a.get_items() == acked, figures
    assert integrity(path) == "ok", figures


# --- 4. corruption: rows that are not items ---------------------------------------------------

# Undecodable rows, as another tool or a damaged disk might leave them.
CORRUPT_PAYLOADS: dict[str, str | bytes] = {
    "whitespace": "   ",
    "truncated_json": '{"role": "user", "content": "cut o',
    "not_json": "{not json",
    "empty": "",
    "number": "42",
    "list": "[1, 2]",
    "string": '"text"',
    "null": "null",
    "bool": "true",
    "nan": "NaN",
    "two_objects": '{"a": 1}, {"b": 2}',
    "blob": b"\xff\x00\x01",
}

# A history of four turns with every corrupt kind inserted: at the start, inside a turn,
# between a call and its output, right before user messages (where pruning would cut), and
# at the end. ("X", kind) is a corrupt row.
LAYOUT: list[Item | tuple[str, str]] = [
    ("X", "whitespace"),
    user("u0"),
    assistant("a0"),
    ("X", "truncated_json"),
    ("X", "not_json"),
    user("u1"),
    call("c1"),
    ("X", "string"),
    output("c1"),
    assistant("a1"),
    ("X", "number"),
    ("X", "list"),
    user("u2"),
    assistant("a2"),
    ("X", "null"),
    user("u3"),
    ("X", "bool"),
    ("X", "nan"),
    assistant("a3"),
    ("X", "empty"),
    ("X", "two_objects"),
    ("X", "blob"),
]
GOOD = [entry for entry in LAYOUT if isinstance(entry, dict)]
BAD = [CORRUPT_PAYLOADS[entry[1]] for entry in LAYOUT if isinstance(entry, tuple)]


async def write_layout(
    path: Path, conversation: str, layout: list[Item | tuple[str, str]] = LAYOUT
) -> str:
    """Create session u/``conversation`` holding ``layout``, corrupt rows written raw."""
    with AgentSession("u", conversation, db_path=path) as session:
        await add(session, [user("placeholder")])
        session_id = session.session_id
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM agent_messages WHERE session_id = ?", (session_id,))
        for entry in layout:
            payload = CORRUPT_PAYLOADS[entry[1]] if isinstance(entry, tuple) else json.dumps(entry)
            conn.execute(
                "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                (session_id, payload),
            )
    return session_id


def is_user_row(data: object) -> bool:
    try:
        item = json.loads(data) if isinstance(data, str) else None
    except ValueError:
        return False
    return (
        isinstance(item, dict)
        and item.get("role") == "user"
        and item.get("type", "message") == "message"
    )


def expected_after_prune(rows: list[tuple[int, Any]], max_items: int) -> list[tuple[int, Any]]:
    """The README's rule on a history whose turns all start at a user message."""
    if len(rows) <= max_items:
        return rows
    starts = [n for n, (_, data) in enumerate(rows) if is_user_row(data)]
    fitting = [n for n in starts if len(rows) - n <= max_items]
    return rows[fitting[0] if fitting else starts[-1] :]


async def test_reads_skip_corrupt_rows_exactly(db_path: Path) -> None:
    session_id = await write_layout(db_path, "c")
    figures = f"{len(GOOD)} items, {len(BAD)} corrupt rows of {len(CORRUPT_PAYLOADS)} kinds"
    with AgentSession("u", "c", db_path=db_path) as session:
        assert await session.get_items() == GOOD, figures
        for limit in range(1, len(GOOD) + 2):
            got = await session.get_items(limit)
            assert got == GOOD[-limit:], f"{figures}: get_items({limit}) = {contents(got)}"
    async with SessionManager(db_path, max_messages=100, retention_days=7) as manager:
        stats = await manager.get_session_stats(session_id)
        listed = await manager.list_sessions()
        assert await manager.get_items(session_id) == GOOD, figures
    assert (stats.message_count, stats.corrupt_items) == (len(GOOD), len(BAD)), (
        f"{figures}: stats say {stats.message_count} items, {stats.corrupt_items} corrupt"
    )
    # A listing counts stored rows without decoding them (corrupt_items None).
    assert [(s.message_count, s.corrupt_items) for s in listed] == [(len(GOOD) + len(BAD), None)]
    assert [data for _, data in raw_rows(db_path, session_id)].count("42") == 1, "rows changed"


async def test_pruning_never_cuts_at_a_corrupt_row(tmp_path: Path) -> None:
    total = len(LAYOUT) + 1
    deleted = {"write": 0, "manager": 0}
    for max_items in range(1, total + 1):
        path = tmp_path / f"max{max_items}.db"
        # Pruning inside add_items (the new user message joins the history first).
        written = await write_layout(path, "w")
        before = raw_rows(path, written)
        with AgentSession("u", "w", db_path=path, max_messages=max_items) as session:
            await add(session, [user("u4")])
        after = raw_rows(path, written)
        before.append(after[-1])
        assert after == expected_after_prune(before, max_items), (
            f"add_items, max_messages={max_items}: kept {len(after)} rows starting "
            f"{after[0][1]!r}, expected {len(expected_after_prune(before, max_items))}"
        )
        deleted["write"] += len(before) - len(after)
        # Pruning on demand by the manager.
        pruned = await write_layout(path, "m")
        before = raw_rows(path, pruned)
        async with SessionManager(path, max_messages=max_items, retention_days=7) as manager:
            count = await manager.prune_session_messages(pruned)
        after = raw_rows(path, pruned)
        assert after == expected_after_prune(before, max_items), (
            f"prune_session_messages, max_messages={max_items}: kept {len(after)} rows "
            f"starting {after[0][1]!r}"
        )
        assert count == len(before) - len(after)
        deleted["manager"] += count
    assert deleted["write"] > 0, deleted
    assert deleted["manager"] > 0, deleted


async def test_runner_runs_on_a_session_with_corrupt_rows(db_path: Path) -> None:
    session_id = await write_layout(db_path, "c")
    model = ScriptedModel([[assistant_message("still fine", item_id="msg-1")]])
    agent = Agent(name="test", model=model)
    with AgentSession("u", "c", db_path=db_path, max_messages=100) as session:
        result = await Runner.run(agent, "hello", session=session)
        stored = await session.get_items()
    assert result.final_output == "still fine"
    model.assert_complete()
    sent = model.calls[0].input
    assert isinstance(sent, list)
    assert contents(sent) == [*contents(GOOD), "hello"], f"model input: {contents(sent)}"
    assert contents(stored) == [*contents(GOOD), "hello", "still fine"]
    kept_bad = [data for _, data in raw_rows(db_path, session_id) if data in BAD]
    assert kept_bad == BAD, f"corrupt rows changed: {len(kept_bad)}/{len(BAD)} left"


async def test_pop_item_never_returns_a_corrupt_row(db_path: Path) -> None:
    session_id = await write_layout(db_path, "c")
    popped: list[Any] = []
    with AgentSession("u", "c", db_path=db_path) as session:
        for _ in range(len(LAYOUT) + 2):
            item = await session.pop_item()
            if item is None:
                break
            popped.append(item)
        assert await session.pop_item() is None
        assert await session.get_items() == []
    figures = f"popped {len(popped)} of {len(GOOD)} items, {len(BAD)} corrupt rows"
    assert popped == GOOD[::-1], f"{figures}: {contents(popped)}"
    assert [data for _, data in raw_rows(db_path, session_id)] == BAD, f"{figures}: rows left"
    async with SessionManager(db_path, max_messages=100, retention_days=7) as manager:
        stats = await manager.get_session_stats(session_id)
    assert (stats.message_count, stats.corrupt_items) == (0, len(BAD)), figures


async def test_a_row_that_is_not_utf8_text_is_skipped_and_counted(db_path: Path) -> None:
    with AgentSession("u", "c", db_path=db_path) as session:
        await add(session, [user("q1"), assistant("a1")])
        with closing(sqlite3.connect(db_path)) as conn, conn:
            # A bit flip, or a C program, can store bytes that are not UTF-8 as TEXT.
            conn.execute(
                "INSERT INTO agent_messages (session_id, message_data) "
                "VALUES (?, CAST(X'7BFF7D' AS TEXT))",
                (session.session_id,),
            )
        await add(session, [user("q2")])
        assert await session.get_items() == [user("q1"), assistant("a1"), user("q2")]
        assert await session.pop_item() == user("q2")
        async with SessionManager(db_path, max_messages=100, retention_days=7) as manager:
            stats = await manager.get_session_stats(session.session_id)
        assert (stats.message_count, stats.corrupt_items) == (2, 1), stats


# --- 4. corruption: damaged, foreign and empty files ------------------------------------------

SESSIONS_BUILT = 200
ITEMS_PER_SESSION = 10


def build_database(path: Path) -> dict[tuple[str, str], list[Item]]:
    """A real database of 200 sessions x 10 items of ~1 KB (about 2 MB), all connections closed.

    Items stay under a page, so no row spills into overflow pages and damage to any page
    of the file hits b-tree structure SQLite can detect.
    """

    async def build() -> dict[tuple[str, str], list[Item]]:
        written = {}
        for n in range(SESSIONS_BUILT):
            key = (f"user{n % 10}", f"conv{n}")
            items = [bulky(f"{n}.{k}", 900) for k in range(ITEMS_PER_SESSION)]
            with AgentSession(*key, db_path=path, max_messages=1000) as session:
                await add(session, items)
            written[key] = items
        return written

    written = asyncio.run(build())
    close_idle_connections()  # the last connection checkpoints the WAL into the file
    assert not Path(f"{path}-wal").exists(), "the WAL survived closing every connection"
    assert path.stat().st_size > 2_000_000, path.stat().st_size
    return written


def read_all_sessions(
    path: Path, written: dict[tuple[str, str], list[Item]]
) -> dict[str, list[str]]:
    """Open and read every session; sort them into exact / CorruptDatabaseError / other."""

    async def probe() -> dict[str, list[str]]:
        outcome: dict[str, list[str]] = {"exact": [], "corrupt": [], "wrong": [], "other": []}
        for key, items in written.items():
            try:
                with AgentSession(*key, db_path=path) as session:
                    got = await session.get_items()
            except CorruptDatabaseError as exc:
                named = str(path) in str(exc)
                outcome["corrupt" if named else "other"].append(f"{key[1]}: {exc}")
            except Exception as exc:  # reported, then failed on below
                outcome["other"].append(f"{key[1]}: {type(exc).__module__}.{exc!r}")
            else:
                outcome["exact" if got == items else "wrong"].append(key[1])
        return outcome

    return asyncio.run(probe())


def manager_outcome(path: Path) -> BaseException | None:
    async def run() -> None:
        async with SessionManager(path, max_messages=100, retention_days=7) as manager:
            # A listing counts rows from the index; reading each session's items reaches
            # the damaged pages.
            for listed in await manager.list_sessions(limit=1000, include_expired=True):
                await manager.get_session_stats(listed.session_id)
            await manager.get_session_count()

    try:
        asyncio.run(run())
    except Exception as exc:
        return exc
    return None


def check_cli_refuses(path: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    """In process and as the installed script: exit 1, one line naming the path."""
    # Listing counts rows from an index; exporting each user reads every item, and so
    # reaches damage wherever it is. The first command that fails is checked.
    capsys.readouterr()
    for n in range(10):
        command = ["export", "--user", f"user{n}"]
        code = cli_main(["--db", str(path), *command])
        captured = capsys.readouterr()
        if code != 0:
            break
    assert code == 1, f"{what}: main() returned {code}; stderr {captured.err!r}"
    assert_one_line_error(captured.err, path, f"{what} (main)")
    done = run_cli_process("--db", str(path), *command)
    assert done.returncode == 1, f"{what}: script exited {done.returncode}: {done.stderr!r}"
    assert_one_line_error(done.stderr, path, f"{what} (script)")


def test_truncated_database_gives_a_clear_error_everywhere(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = build_database(db_path)
    size = db_path.stat().st_size
    os.truncate(db_path, size // 2)
    digest = sha256(db_path)
    figures = f"{SESSIONS_BUILT} sessions, file truncated from {size} to {size // 2} bytes"

    outcome = read_all_sessions(db_path, written)
    figures += "; sessions: " + ", ".join(f"{k} {len(v)}" for k, v in outcome.items())
    assert not outcome["other"], f"{figures}: {outcome['other'][:3]}"
    assert not outcome["wrong"], f"{figures}: silently wrong: {outcome['wrong'][:5]}"
    assert len(outcome["corrupt"]) == SESSIONS_BUILT, figures

    error = manager_outcome(db_path)
    assert isinstance(error, CorruptDatabaseError), f"{figures}; manager: {error!r}"
    assert str(db_path) in str(error), f"{figures}; manager: {error}"

    check_cli_refuses(db_path, capsys, figures)
    close_idle_connections()
    assert sha256(db_path) == digest, f"{figures}: the damaged file was modified"


def test_zeroed_pages_give_a_clear_error_where_they_are_read(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = build_database(db_path)
    size = db_path.stat().st_size
    with db_path.open("r+b") as file:  # 16 pages at three quarters of the file: zeros
        file.seek(size * 3 // 4 // 4096 * 4096)
        file.write(b"\0" * 16 * 4096)
    digest = sha256(db_path)

    outcome = read_all_sessions(db_path, written)
    figures = f"{SESSIONS_BUILT} sessions, 64 KB zeroed; sessions: " + ", ".join(
        f"{k} {len(v)}" for k, v in outcome.items()
    )
    assert not outcome["other"], f"{figures}: {outcome['other'][:3]}"
    assert not outcome["wrong"], f"{figures}: silently wrong: {outcome['wrong'][:5]}"
    assert outcome["corrupt"], f"{figures}: the damage was never noticed"
    assert outcome["exact"], f"{figures}: undamaged sessions became unreadable"

    error = manager_outcome(db_path)
    assert isinstance(error, CorruptDatabaseError), f"{figures}; manager: {error!r}"
    check_cli_refuses(db_path, capsys, figures)
    close_idle_connections()
    assert sha256(db_path) == digest, f"{figures}: the damaged file was modified"


_RNG = random.Random(20260115)
NOT_SQLITE: dict[str, bytes] = {
    "random_bytes": _RNG.randbytes(64 * 1024),
    "text_notes": b"these are my notes, not a database\n" * 200,
    "short_text": b"hello\n",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _RNG.randbytes(4096),
    "sqlite_magic_then_garbage": b"SQLite format 3\x00" + _RNG.randbytes(8192),
    "sqlite_header_then_garbage": (
        b"SQLite format 3\x00\x10\x00\x01\x01\x00\x40\x20\x20" + _RNG.randbytes(8192)
    ),
}


@pytest.mark.parametrize(
    "kind",
    [kind for kind in NOT_SQLITE],
)
def test_file_that_is_not_a_database_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / f"{kind}.db"
    path.write_bytes(NOT_SQLITE[kind])
    digest = sha256(path)

    with pytest.raises(AgentSessionsError) as info:
        AgentSession("u", "c", db_path=path)
    error = manager_outcome(path)
    check_cli_refuses(path, capsys, kind)
    close_idle_connections()
    assert sha256(path) == digest, f"{kind}: the file was modified"
    for where, exc in (("AgentSession", info.value), ("SessionManager", error)):
        assert isinstance(exc, CorruptDatabaseError), f"{kind}: {where} raised {exc!r}"
        assert str(path) in str(exc), f"{kind}: {where}: {exc}"


async def test_empty_file_becomes_a_new_database(db_path: Path) -> None:
    db_path.write_bytes(b"")  # SQLite treats a 0-byte file as a new, empty database
    with AgentSession("u", "c", db_path=db_path) as session:
        assert await session.get_items() == []
        await add(session, [user("q1"), assistant("a1")])
        assert await session.get_items() == [user("q1"), assistant("a1")]
    async with SessionManager(db_path, max_messages=100, retention_days=7) as manager:
        assert await manager.get_session_count() == 1
    close_idle_connections()
    assert db_path.read_bytes().startswith(b"SQLite format 3\x00")
    assert integrity(db_path) == "ok"


FOREIGN_SCHEMAS = {
    "sessions_table_of_another_shape": [
        "CREATE TABLE agent_sessions (id INTEGER, name TEXT)",
        "INSERT INTO agent_sessions VALUES (1, 'mine'), (2, 'also mine')",
    ],
    "messages_table_of_another_shape": [
        "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY, body TEXT)",
        "INSERT INTO agent_messages (body) VALUES ('hello')",
    ],
    "sessions_table_with_session_id_only": [
        "CREATE TABLE agent_sessions (session_id TEXT, payload BLOB)",
        "INSERT INTO agent_sessions VALUES ('s1', x'00ff')",
    ],
    "schema_table_of_another_shape": [
        "CREATE TABLE agent_sessions_schema (version TEXT, note TEXT)",
    ],
    "schema_table_of_another_shape_with_text_versions": [
        "CREATE TABLE agent_sessions_schema (version TEXT, note TEXT)",
        "INSERT INTO agent_sessions_schema VALUES ('v9', 'theirs')",
    ],
    "sessions_table_without_a_key": [
        "CREATE TABLE agent_sessions (session_id TEXT, created_at TEXT, updated_at TEXT)",
        "INSERT INTO agent_sessions VALUES ('s1', NULL, NULL)",
    ],
    "messages_table_with_a_column_of_its_own": [
        "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT "
        "NOT NULL, message_data TEXT NOT NULL, created_at TEXT, tenant TEXT NOT NULL)",
    ],
    "messages_id_that_is_not_a_rowid": [
        "CREATE TABLE agent_messages (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, "
        "message_data TEXT NOT NULL, created_at TEXT)",
    ],
    "sessions_times_required_without_default": [
        "CREATE TABLE agent_sessions (session_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL)",
    ],
    "messages_without_rowid": [
        "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY, session_id TEXT, message_data "
        "TEXT, created_at TIMESTAMP) WITHOUT ROWID",
    ],
    "sessions_view": [
        "CREATE TABLE people (name TEXT)",
        "INSERT INTO people VALUES ('ada')",
        "CREATE VIEW agent_sessions AS SELECT name AS session_id FROM people",
    ],
}


def schema_and_rows(path: Path) -> tuple[list[Any], dict[str, list[Any]]]:
    with closing(sqlite3.connect(path)) as conn:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        rows = {
            name: conn.execute(f'SELECT * FROM "{name}"').fetchall()
            for kind, name, _ in schema
            if kind in ("table", "view")
        }
    return schema, rows


def make_foreign_database(path: Path, kind: str) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in FOREIGN_SCHEMAS[kind]:
            conn.execute(statement)


@pytest.mark.parametrize(
    "kind",
    [kind for kind in FOREIGN_SCHEMAS],
)
def test_tables_of_another_app_are_refused_and_not_altered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "their.db"
    make_foreign_database(path, kind)
    before = schema_and_rows(path)

    with pytest.raises(AgentSessionsError) as info:
        AgentSession("u", "c", db_path=path)
    error = manager_outcome(path)
    capsys.readouterr()
    code = cli_main(["--db", str(path), "list"])
    captured = capsys.readouterr()
    close_idle_connections()

    for where, exc in (("AgentSession", info.value), ("SessionManager", error)):
        assert isinstance(exc, StorageError), f"{kind}: {where} raised {exc!r}"
        assert str(path) in str(exc), f"{kind}: {where}: {exc}"
    assert code == 1, f"{kind}: CLI returned {code}: {captured.err!r}"
    assert_one_line_error(captured.err, path, f"{kind} (CLI)")
    after = schema_and_rows(path)
    assert after == before, f"{kind}: the app's database changed:\n{before}\n->\n{after}"


def test_a_refused_database_keeps_its_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "their.db"
    make_foreign_database(path, "sessions_table_of_another_shape")
    digest = sha256(path)
    with pytest.raises(AgentSessionsError):
        AgentSession("u", "c", db_path=path)
    close_idle_connections()
    with closing(sqlite3.connect(path)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete", f"journal_mode is now {mode!r}"
    assert sha256(path) == digest, "the refused file's bytes changed"
