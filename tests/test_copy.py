"""``agent-sessions copy``: SQLite to PostgreSQL and back, exact, verified and resumable.

What a copy must keep is compared on the raw rows of each database: every session, its owner,
its activity times (to the microsecond) and its items' stored text byte for byte. Rows that
do not decode are left out and counted.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from agents import SQLiteSession

from agent_sessions import SessionManager, get_agent_session
from agent_sessions.backends import open_backend
from agent_sessions.cli import main
from agent_sessions.copying import CopyReport, copy_sessions
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user
from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database

Snapshot = tuple[dict[str, tuple[Any, ...]], dict[str, list[bytes]]]

CORRUPT = ["{not json", "[1, 2]", '{"a": 1} trailing']
# Valid items whose stored text is not what json.dumps would write: a copy must not re-encode.
HAND_WRITTEN = ['{"role":"user","content":"compact"}', '{ "content" : "spaced" ,"role":"user" }']


@pytest.fixture(autouse=True)
def no_connections_opened_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work around the pool bug in ``test_postgres_wiring`` (the CLI could hang at exit)."""
    monkeypatch.setenv("AGENT_SESSION_POOL_MIN_SIZE", "0")


@pytest.fixture
def pg_database() -> Iterator[str]:
    with fresh_database(require_postgres(PG_URL)) as name:
        yield name


@pytest.fixture(params=["direct", "pgbouncer"])
async def pg_url(request: pytest.FixtureRequest, pg_database: str) -> AsyncIterator[str]:
    from agent_sessions.backends.postgres import close_pools

    route = PG_URL if request.param == "direct" else PGBOUNCER_URL
    yield with_database(require_postgres(route), pg_database)
    await close_pools()


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


async def run_cli_async(*argv: str) -> tuple[int, str]:
    """``run_cli`` from a test's event loop (the CLI runs its own)."""
    return await asyncio.to_thread(run_cli, *argv)


async def copy(source: str, destination: str) -> dict[str, Any]:
    code, output = await run_cli_async("copy", "--from", source, "--to", destination, "--json")
    assert code == 0, output
    report: dict[str, Any] = json.loads(output)
    return report


def redacted(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", "@") if password else url


# --- the source database ------------------------------------------------------------------


async def make_source(path: Path) -> list[str]:
    """A SQLite file of varied sessions; returns their ids (the corrupt rows are in the 3rd)."""
    clock = FakeClock()
    ids = []
    conversations = [
        ("alice", "trip", [user("Weather in Oslo?"), call("c1"), output("c1"), assistant("Sunny")]),
        ("alice", "work", [user("héllo 你好 👋"), assistant("'; DROP TABLE x; --")]),
        ("bob", "c1", [user("NUL \x00 and lone \ud800"), {"type": "message", "n": 2**70}]),
        ("a_b", "c", [user("needs escaping"), {"type": "reasoning", "id": "r", "summary": []}]),
        ("carol", "empty", [user("popped")]),
    ]
    for user_id, conversation, items in conversations:
        clock.advance(hours=1, microseconds=123_457)
        with get_agent_session(user_id, conversation, db_path=path, clock=clock) as session:
            await session.add_items(items)  # type: ignore[arg-type]
            clock.advance(seconds=5, microseconds=1)
            await session.add_items([assistant(f"later for {conversation}")])  # type: ignore[list-item]
            ids.append(session.session_id)
    with get_agent_session("carol", "empty", db_path=path, clock=clock) as session:
        while await session.pop_item() is not None:  # a session row with no items
            pass
    legacy = SQLiteSession("legacy chat", db_path=path)  # written by the SDK: no owner
    await legacy.add_items([user("from a plain SQLiteSession")])  # type: ignore[list-item]
    legacy.close()
    ids.append("legacy chat")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
            [(ids[2], text) for text in CORRUPT] + [(ids[0], text) for text in HAND_WRITTEN],
        )
    return sorted(ids)


def sqlite_snapshot(path: str | Path, *, decodable_only: bool = True) -> Snapshot:
    with closing(sqlite3.connect(path)) as conn:
        sessions = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT session_id, user_id, conversation_id, created_ts, last_activity_ts "
                "FROM agent_sessions"
            )
        }
        items: dict[str, list[bytes]] = {sid: [] for sid in sessions}
        for sid, data in conn.execute(
            "SELECT session_id, CAST(message_data AS BLOB) FROM agent_messages ORDER BY id"
        ):
            if not decodable_only or data.decode("utf-8", "replace") not in CORRUPT:
                items[sid].append(data)
    return sessions, items


def pg_snapshot(url: str) -> Snapshot:
    import psycopg

    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        sessions = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT session_id, user_id, conversation_id, created_at AT TIME ZONE 'UTC', "
                "last_activity AT TIME ZONE 'UTC' FROM agent_sessions_session"
            ).fetchall()
        }
        items: dict[str, list[bytes]] = {sid: [] for sid in sessions}
        for sid, data in conn.execute(
            "SELECT session_id, message_data FROM agent_sessions_item ORDER BY session_id, seq"
        ).fetchall():
            items[sid].append(data.encode("utf-8", "surrogatepass"))
    return sessions, items


def as_microseconds(snapshot: Snapshot) -> Snapshot:
    """A SQLite snapshot with its POSIX-second times as PostgreSQL holds them."""
    sessions, items = snapshot
    return {
        sid: (
            user_id,
            conversation,
            *(datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in times),
        )
        for sid, (user_id, conversation, *times) in sessions.items()
    }, items


async def listed(target: str) -> list[dict[str, Any]]:
    async with SessionManager(target, max_messages=10, retention_days=7) as manager:
        return [
            {**stats.model_dump(), "corrupt_items": None}
            for stats in await manager.list_sessions(limit=100)
        ]


# --- round trip ---------------------------------------------------------------------------


async def test_sqlite_to_postgres_and_back_keeps_everything(pg_url: str, tmp_path: Path) -> None:
    source, back = tmp_path / "source.db", tmp_path / "back.db"
    ids = await make_source(source)
    before = sqlite_snapshot(source, decodable_only=False)
    expected = sqlite_snapshot(source)
    assert sorted(expected[0]) == ids
    assert sum(map(len, expected[1].values())) == 17
    assert expected[1]["user_alice_conv_trip"][-2:] == [text.encode() for text in HAND_WRITTEN]
    assert expected[1]["user_carol_conv_empty"] == []
    assert expected[0]["legacy chat"][:2] == (None, None), "a session without an owner"

    report = await copy(str(source), pg_url)
    assert report == {
        "from": str(source),
        "to": redacted(pg_url),
        "sessions_copied": 6,
        "sessions_already_there": 0,
        "items": 17,
        "corrupt_rows_left_out": 3,
        "sessions_deleted_meanwhile": 0,
        "refused": [],
        "mismatched": [],
        "verified": True,
    }
    assert pg_snapshot(pg_url) == as_microseconds(expected)

    report = await copy(pg_url, str(back))
    copied = (report["sessions_copied"], report["items"], report["corrupt_rows_left_out"])
    assert copied == (6, 17, 0)
    assert sqlite_snapshot(back, decodable_only=False) == expected, "floats, owners, bytes"
    assert sqlite_snapshot(source, decodable_only=False) == before, "the source was changed"
    assert await listed(str(source)) == await listed(pg_url) == await listed(str(back))

    # Resumable: a second run of each finds every session already there.
    for origin, destination in ((str(source), pg_url), (pg_url, str(back))):
        again = await copy(origin, destination)
        assert (again["sessions_copied"], again["sessions_already_there"]) == (0, 6)
        assert again["verified"] is True

    # The copy is a working database: its sessions go on (dated long ago: a long retention).
    with get_agent_session("alice", "trip", db_path=pg_url, retention="36500d") as session:
        stored = await session.get_items()
        assert stored[-1] == json.loads(HAND_WRITTEN[1])
        await session.add_items([user("after the move")])  # type: ignore[list-item]
        assert (await session.get_items())[-1] == user("after the move")


async def test_a_copy_stopped_half_way_ends_identical_when_run_again(
    pg_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    ids = await make_source(source)
    expected = sqlite_snapshot(source)

    class Stop(Exception):
        pass

    def stop_after_three(report: CopyReport) -> None:
        if report.copied == 3:
            raise Stop

    reader = open_backend(source, create=False, offload=True)
    writer = open_backend(pg_url)
    try:
        await reader.open()
        await writer.open()
        with pytest.raises(Stop):
            await copy_sessions(reader, writer, progress=stop_after_three)
    finally:
        await reader.close()
        await writer.close()
    partial = pg_snapshot(pg_url)
    assert sorted(partial[0]) == ids[:3], "sessions are copied in id order, each whole"

    # Meanwhile one copied session changed at the destination: the next run copies it again.
    with get_agent_session("a_b", "c", db_path=pg_url) as session:
        await session.add_items([user("written at the destination")])  # type: ignore[list-item]

    report = await copy(str(source), pg_url)
    assert (report["sessions_copied"], report["sessions_already_there"]) == (4, 2)
    assert (report["mismatched"], report["verified"]) == ([], True)
    assert pg_snapshot(pg_url) == as_microseconds(expected)


# --- refusals -------------------------------------------------------------------------------


async def test_one_database_as_both_ends_is_refused(pg_url: str, tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    await make_source(source)
    before = sqlite_snapshot(source, decodable_only=False)
    # The working directory is tmp_path (tests/conftest.py): a relative path is the same file.
    for origin, destination in (
        (str(source), str(source)),
        (str(source), "source.db"),
        ("./source.db", str(source)),
        (pg_url, pg_url),
    ):
        code, output = await run_cli_async("copy", "--from", origin, "--to", destination)
        assert (code, output) == (2, ""), (origin, destination)
    assert sqlite_snapshot(source, decodable_only=False) == before


def test_a_missing_source_is_refused_and_nothing_is_created(
    pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_pg = with_database(require_postgres(PG_URL), pg_database)
    missing = tmp_path / "typo" / "missing.db"
    for origin, destination in (
        (str(missing), str(tmp_path / "copy.db")),
        (str(missing), empty_pg),
        (empty_pg, str(tmp_path / "copy.db")),
    ):
        code, output = run_cli("copy", "--from", origin, "--to", destination)
        err = capsys.readouterr().err
        assert (code, output) == (1, ""), err
        assert err.startswith("agent-sessions: "), err
    assert list(tmp_path.iterdir()) == [], "a file or folder was created"
    assert not has_tables(empty_pg), "tables were created in the empty source or destination"


def has_tables(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_tables WHERE schemaname = 'public'").fetchall())


def test_a_session_postgres_cannot_hold_does_not_stop_the_copy(
    pg_database: str, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"

    async def write() -> None:
        with get_agent_session("u", "a", db_path=source) as session:
            await session.add_items([user("a")])  # type: ignore[list-item]
        unusual = SQLiteSession("sdk\x00id", db_path=source)  # the SDK takes any str
        await unusual.add_items([user("b")])  # type: ignore[list-item]
        unusual.close()

    asyncio.run(write())
    url = with_database(require_postgres(PG_URL), pg_database)
    run_cli("copy", "--from", str(source), "--to", url)
    assert "user_u_conv_a" in pg_snapshot(url)[0], "the session after it was not copied"
