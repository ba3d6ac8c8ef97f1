"""The ``agent-sessions`` CLI, called as ``main([..., "--db", target, ...])``, on every backend."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent_sessions import metrics
from agent_sessions.cli import main
from agent_sessions.clock import utc_now
from tests.conftest import FakeClock
from tests.items import assistant, user

from .helpers import is_postgres, pg_query, stored_rows, write

ALICE_1 = "user_alice_conv_c1"
ALICE_2 = "user_alice_conv_c2"
BOB = "user_bob_conv_c1"
TOOL_CONVERSATION = [
    user("hello"),
    assistant("hi there"),
    user("what's the weather in Paris?"),
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
    assistant("It is sunny in Paris."),
]
BOB_ITEMS = [user("old"), assistant("older"), user("oldest?")]


@pytest.fixture(autouse=True)
def no_connections_opened_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work around a library bug so these tests cannot hang (see ``test_postgres_wiring``).

    The CLI never closes its PostgreSQL pool; when its event loop ends while the pool is
    still opening a connection ahead of need, psycopg_pool swallows the cancellation and
    ``asyncio.run`` waits forever. With no connection opened ahead, none is in flight.
    """
    monkeypatch.setenv("AGENT_SESSION_POOL_MIN_SIZE", "0")


def populate(target: str) -> None:
    """Bob idle for 30 days; alice's c2, then c1 (the most recent), active now."""

    async def write_all() -> None:
        now = FakeClock(utc_now())
        month_ago = FakeClock(utc_now() - timedelta(days=30))
        try:
            await write(target, "bob", "c1", BOB_ITEMS, clock=month_ago)
            await write(target, "alice", "c2", [user("second"), assistant("ok")], clock=now)
            now.advance(seconds=1)
            await write(target, "alice", "c1", TOOL_CONVERSATION, clock=now)
        finally:
            if is_postgres(target):
                from agent_sessions.backends.postgres import close_pools

                await close_pools()

    asyncio.run(write_all())


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def location(target: str) -> str:
    """How the CLI names the database: the path, or the URL without its password."""
    if not is_postgres(target):
        return target
    parts = urlsplit(target)
    return target.replace(f":{parts.password}@", "@") if parts.password else target


def has_tables(target: str) -> bool:
    if is_postgres(target):
        return bool(pg_query(target, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'"))
    return Path(target).exists()


def test_stats_list_show_export(target: str) -> None:
    populate(target)
    metrics.write_latency.clear()  # populate wrote in this process: be a fresh CLI process
    code, output = run("--db", target, "stats", "--json")
    assert code == 0
    stats = json.loads(output)
    assert stats.pop("database_bytes") > 0
    oldest = stats.pop("oldest_activity")
    assert stats == {
        "database": location(target),
        "sessions": 3,
        "active_sessions": 2,
        "idle_sessions": 1,
        "average_items_per_session": 3.67,
        "items": 11,
        "last_sweep": None,
        "thresholds_crossed": [],
        "write_latency_p50": None,
        "write_latency_p95": None,
        "write_samples": 0,
        "settings": {"retention": "7d", "max_messages": 200},
    }
    code, text = run("--db", target, "stats")
    assert code == 0
    assert "average items per session  3.67" in text
    assert f"oldest activity            {oldest}" in text

    code, output = run("--db", target, "list", "--json")
    listed = json.loads(output)
    assert [entry["session_id"] for entry in listed] == [ALICE_1, ALICE_2, BOB]
    assert [entry["message_count"] for entry in listed] == [6, 2, 3]
    assert all(entry["last_activity"].endswith("Z") for entry in listed)
    code, output = run("--db", target, "list", "--user", "alice", "--limit", "1", "--offset", "1")
    assert code == 0
    assert output.splitlines()[2].split()[:4] == [ALICE_2, "alice", "c2", "2"], output

    code, output = run("--db", target, "show", ALICE_1, "--json")
    assert (code, json.loads(output)["items"]) == (0, TOOL_CONVERSATION)
    code, output = run("--db", target, "show", ALICE_1)
    rows = output.partition("\n\n")[2].splitlines()[2:]
    assert rows[3].split()[:3] == ["3", "function_call", "get_weather"], output

    code, output = run("--db", target, "export", BOB)
    exported = json.loads(output)
    assert (code, exported["items"], exported["user_id"]) == (0, BOB_ITEMS, "bob")
    code, output = run("--db", target, "export", ALICE_1, "--format", "markdown")
    assert code == 0
    assert output.startswith(f"# Session `{ALICE_1}`\n")
    assert '**Tool call** `get_weather({"city": "Paris"})` (call `call_1`)' in output
    assert "**Tool output** (call `call_1`): sunny, 21 C" in output


def test_prune_and_clear(target: str) -> None:
    populate(target)
    code, output = run("--db", target, "prune", ALICE_1, "--max-messages", "4")
    assert (code, output) == (0, f"pruned 2 item(s) from {ALICE_1}\n")  # from the 2nd user turn
    code, output = run("--db", target, "prune", "--all", "--max-messages", "1")
    # Every session keeps its newest turn: only bob's first turn (2 items) goes.
    assert (code, output) == (0, "pruned 2 item(s) across all sessions\n")
    code, output = run("--db", target, "clear", BOB)
    assert (code, output) == (0, f"cleared {BOB} (1 item(s) deleted)\n")
    assert stored_rows(target) == {ALICE_1: 4, ALICE_2: 2}


def test_stats_shows_the_last_sweep(target: str) -> None:
    populate(target)
    assert run("--db", target, "cleanup")[0] == 0
    code, output = run("--db", target, "stats", "--json")
    assert code == 0
    sweep = json.loads(output)["last_sweep"]
    assert (sweep["outcome"], sweep["sessions_deleted"], sweep["error"]) == ("ok", 1, None)
    code, text = run("--db", target, "stats")
    assert f"last sweep                 {sweep['started_at']} ok, 1 deleted in " in text


def test_cleanup_dry_run_json_then_for_real(target: str) -> None:
    populate(target)
    code, output = run("--db", target, "cleanup", "--dry-run", "--json")
    assert code == 0
    (idle,) = json.loads(output)
    assert (idle["session_id"], idle["user_id"], idle["message_count"]) == (BOB, "bob", 3)
    code, output = run("--db", target, "cleanup", "--dry-run")
    assert output.endswith("would delete 1 session(s) idle for more than 7 day(s)\n"), output
    code, output = run("--db", target, "cleanup", "--dry-run", "--json", "--retention-days", "40")
    assert (code, json.loads(output)) == (0, [])
    assert BOB in stored_rows(target), "a dry run deleted something"
    code, output = run("--db", target, "cleanup", "--retention-days", "40")
    assert (code, output) == (0, "deleted 0 session(s) idle for more than 40 day(s)\n")
    code, output = run("--db", target, "cleanup")
    assert (code, output) == (0, "deleted 1 session(s) idle for more than 7 day(s)\n")
    assert set(stored_rows(target)) == {ALICE_1, ALICE_2}


@pytest.mark.parametrize("stage", ["missing", "populated"])
def test_exit_codes(target: str, stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    if stage == "missing":
        # No command but migrate creates a database or its tables: a typo is reported.
        for command in (["stats"], ["list"], ["show", BOB], ["cleanup"], ["prune", "--all"]):
            assert run("--db", target, *command) == (1, ""), command
            err = capsys.readouterr().err
            assert err.startswith("agent-sessions: "), err
            assert err.count("\n") == 1, err
            assert location(target) in err
            assert "Traceback" not in err
            password = urlsplit(target).password if is_postgres(target) else None
            assert not password or password not in err
        assert not has_tables(target), "the CLI created the database it did not find"
        return
    populate(target)
    before = stored_rows(target)
    failures: list[tuple[list[str], int]] = [
        (["show", "user_nobody_conv_x"], 1),
        (["export", "user_nobody_conv_x"], 1),
        (["clear", "user_nobody_conv_x"], 1),
        (["prune", "user_nobody_conv_x"], 1),
        (["list", "--limit", "0"], 2),
        (["cleanup", "--json"], 2),  # --json lists what --dry-run finds
        (["cleanup", "--retention-days", "0"], 2),
        (["prune", BOB, "--all"], 2),
    ]
    for command, expected in failures:
        assert run("--db", target, *command) == (expected, ""), command
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip(), command
    assert stored_rows(target) == before, "a failing command changed the database"
    code, _ = run("--db", target, "list")
    assert code == 0


# --- conversations: titles, cursors, a user's data ------------------------------------------


def test_list_pages_by_cursor_and_shows_titles(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(target)
    capsys.readouterr()
    code, output = run("--db", target, "list", "--user", "alice", "--limit", "1", "--json")
    first = json.loads(output)
    cursor = capsys.readouterr().err.strip().removeprefix("next page: --cursor ")
    assert (code, [s["session_id"] for s in first]) == (0, [ALICE_1])
    assert first[0]["title"] == "hello"
    code, output = run(
        "--db", target, "list", "--user", "alice", "--limit", "1", "--cursor", cursor, "--json"
    )
    assert (code, [s["session_id"] for s in json.loads(output)]) == (0, [ALICE_2])
    assert capsys.readouterr().err == ""  # the last page: no next cursor
    code, output = run("--db", target, "list")
    assert code == 0
    assert "TITLE" in output.splitlines()[0]
    assert "what's the weather" not in output  # the title is the first user message
    code, output = run("--db", target, "list", "--active", "--json")
    assert BOB not in {s["session_id"] for s in json.loads(output)}  # idle 30 days: expired
    code, _ = run("--db", target, "list", "--cursor", "not-a-cursor")
    assert code == 2
    assert "cursor" in capsys.readouterr().err


def test_export_user_as_json_and_markdown(target: str, tmp_path: Path) -> None:
    populate(target)
    code, output = run("--db", target, "export", "--user", "alice")
    document = json.loads(output)
    assert (code, document["user_id"]) == (0, "alice")
    assert sorted(c["session_id"] for c in document["conversations"]) == [ALICE_1, ALICE_2]
    assert {len(c["items"]) for c in document["conversations"]} == {2, len(TOOL_CONVERSATION)}
    folder = tmp_path / "alice"
    code, _ = run(
        "--db", target, "export", "--user", "alice", "--format", "markdown", "--output", str(folder)
    )
    assert code == 0
    assert sorted(path.name for path in folder.iterdir()) == ["c1.md", "c2.md"]
    assert "**Tool call** `get_weather" in (folder / "c1.md").read_text()
    code, _ = run("--db", target, "export", ALICE_1, "--output", str(tmp_path / "x.json"))
    assert code == 2  # --output is for --user


def test_delete_user_asks_first_unless_yes(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(target)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: refuses
    code, _ = run("--db", target, "delete-user", "alice")
    assert code == 2
    assert "--yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, output = run("--db", target, "delete-user", "alice")
    assert (code, output) == (1, "nothing deleted\n")
    assert ALICE_1 in stored_rows(target)
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, output = run("--db", target, "delete-user", "alice")
    assert (code, output) == (0, "deleted 2 session(s) of user 'alice'\n")
    code, output = run("--db", target, "delete-user", "bob", "--yes")
    assert (code, output) == (0, "deleted 1 session(s) of user 'bob'\n")
    assert stored_rows(target) == {}
    code, output = run("--db", target, "delete-user", "nobody")
    assert (code, output) == (0, "user 'nobody' has no sessions\n")


def test_a_retention_in_minutes_is_what_cleanup_says_and_uses(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(target)  # alice's sessions are seconds old, bob's 30 days
    monkeypatch.setenv("AGENT_SESSION_RETENTION", "30m")
    from agent_sessions.settings import get_settings

    get_settings.cache_clear()
    code, output = run("--db", target, "cleanup", "--dry-run")
    assert (code, output.splitlines()[-1]) == (
        0,
        "would delete 1 session(s) idle for more than 30m",
    )
    code, output = run("--db", target, "stats", "--json")
    assert json.loads(output)["settings"]["retention"] == "30m"
