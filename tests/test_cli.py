"""The ``agent-sessions`` command, called as ``main(argv)`` and as the installed script."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_sessions import AgentSession, get_session_id, metrics
from agent_sessions.backends.sqlite import schema
from agent_sessions.cli import main
from agent_sessions.clock import utc_now
from agent_sessions.ids import MAX_COUNT
from agent_sessions.settings import get_settings
from tests.conftest import FakeClock
from tests.items import assistant, user

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
ALICE_2_ITEMS = [user("second conversation"), assistant("ok")]
BOB_ITEMS = [user("old"), assistant("older"), user("oldest?")]


async def _populate(db_path: Path) -> None:
    now = FakeClock(utc_now())
    month_ago = FakeClock(utc_now() - timedelta(days=30))
    for user_id, conversation, items, clock in (
        ("bob", "c1", BOB_ITEMS, month_ago),
        ("alice", "c2", ALICE_2_ITEMS, now),
        ("alice", "c1", TOOL_CONVERSATION, now),
    ):
        with AgentSession(user_id, conversation, db_path=db_path, clock=clock) as session:
            await session.add_items(items)  # type: ignore[arg-type]
        now.advance(seconds=1)  # alice/c1 is the most recent


@pytest.fixture
def populated(db_path: Path) -> Path:
    asyncio.run(_populate(db_path))
    return db_path


def run(*argv: str | Path) -> tuple[int, str]:
    """Call ``main``; argparse errors raise SystemExit, returned here as the exit code."""
    out = io.StringIO()
    try:
        code = main([str(arg) for arg in argv], out=out)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def row_counts(db_path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db_path)) as conn:
        return dict(
            conn.execute("SELECT session_id, COUNT(*) FROM agent_messages GROUP BY 1").fetchall()
        )


def text_fields(output: str) -> dict[str, str]:
    fields = {}
    for line in output.splitlines():
        match = re.fullmatch(r"(\S.*?)\s{2,}(\S.*)", line)
        assert match, f"unparsable line {line!r}"
        fields[match[1]] = match[2]
    return fields


# --- stats ----------------------------------------------------------------------------------


def oldest_activity(db_path: Path) -> str:
    """Bob's last activity as the CLI prints it (his session is the least recent)."""
    code, output = run("--db", db_path, "show", BOB, "--json")
    assert code == 0
    return str(json.loads(output)["last_activity"])


def test_stats_text(populated: Path) -> None:
    code, output = run("--db", populated, "stats")
    assert code == 0
    stored, _, settings = output.partition("\n\n")
    fields = text_fields(stored)
    size = fields.pop("database size")
    assert fields == {
        "database": str(populated),
        "sessions": "3",
        "active sessions": "2",
        "idle sessions": "1",
        "average items per session": "3.67",
        "items": "11",
        "oldest activity": oldest_activity(populated),
        "last sweep": "never",
        "thresholds crossed": "none",
    }, output
    files = [populated, Path(f"{populated}-wal"), Path(f"{populated}-shm")]
    bytes_on_disk = sum(path.stat().st_size for path in files if path.exists())
    assert re.fullmatch(rf"\d+\.\d (kB|MB) \({bytes_on_disk} bytes\)", size), (size, output)
    heading, _, settings = settings.partition("\n")
    assert heading == "settings (not stored in the database)", output
    assert text_fields(settings) == {"retention": "7d", "max messages": "200"}, output


def test_stats_json(populated: Path) -> None:
    metrics.write_latency.clear()  # populated wrote in this process: be a fresh CLI process
    code, output = run("--db", populated, "stats", "--json")
    assert code == 0
    stats = json.loads(output)
    assert stats.pop("database_bytes") > 0
    assert stats == {
        "database": str(populated),
        "sessions": 3,
        "active_sessions": 2,
        "idle_sessions": 1,
        "average_items_per_session": 3.67,
        "items": 11,
        "oldest_activity": oldest_activity(populated),
        "last_sweep": None,
        "thresholds_crossed": [],
        "write_latency_p50": None,  # this process's, and the CLI writes nothing
        "write_latency_p95": None,
        "write_samples": 0,
        "settings": {"retention": "7d", "max_messages": 200},
    }


def test_stats_shows_the_last_sweep_and_the_thresholds_crossed(
    populated: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert run("--db", populated, "cleanup")[0] == 0
    monkeypatch.setenv("AGENT_SESSION_WARN_ACTIVE_SESSIONS", "1")
    monkeypatch.setenv("AGENT_SESSION_WARN_AVERAGE_ITEMS", "10")
    get_settings.cache_clear()
    code, output = run("--db", populated, "stats", "--json")
    assert code == 0
    stats = json.loads(output)
    sweep = stats["last_sweep"]
    assert (sweep["outcome"], sweep["sessions_deleted"], sweep["error"]) == ("ok", 1, None)
    assert sweep["started_at"] <= sweep["finished_at"]
    assert stats["thresholds_crossed"] == ["active_sessions"]
    assert stats["settings"] == {
        "retention": "7d",
        "max_messages": 200,
        "warn_average_items": 10.0,
        "warn_active_sessions": 1,
    }
    code, output = run("--db", populated, "stats")
    assert code == 0
    fields = text_fields(output.partition("\n\n")[0])
    assert fields["thresholds crossed"] == "active_sessions"
    assert re.fullmatch(
        rf"{sweep['started_at']} ok, 1 deleted in \d+\.\d s", fields["last sweep"]
    ), fields
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # the threshold, once in this process
    assert "above warn_active_sessions (1)" in warnings[0]


def test_stats_does_not_present_the_clis_settings_as_the_databases(db_path: Path) -> None:
    """A file written with max_messages=8 is not a file "with" the CLI's 200."""

    async def write() -> None:
        with AgentSession("u", "c", db_path=db_path, max_messages=8) as session:
            await session.add_items([user(f"q{n}") for n in range(10)])

    asyncio.run(write())
    code, output = run("--db", db_path, "stats", "--json")
    assert code == 0
    summary = json.loads(output)
    assert summary["settings"] == {"retention": "7d", "max_messages": 200}
    assert not {"max_messages", "retention"} & set(summary), summary
    code, output = run("--db", db_path, "stats")
    assert code == 0
    stored, _, settings = output.partition("\n\n")
    assert "max messages" not in stored, output
    assert "retention" not in stored, output
    assert settings.startswith("settings (not stored in the database)\n"), output


def test_stats_reads_settings_from_the_environment(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", str(populated))
    monkeypatch.setenv("AGENT_SESSION_RETENTION_DAYS", "60")
    get_settings.cache_clear()
    code, output = run("stats", "--json")
    assert code == 0
    summary = json.loads(output)
    assert (summary["database"], summary["settings"]["retention"]) == (str(populated), "60d")
    assert (summary["active_sessions"], summary["idle_sessions"]) == (3, 0), summary


# --- list -----------------------------------------------------------------------------------


def test_list_text(populated: Path) -> None:
    code, output = run("--db", populated, "list")
    assert code == 0
    lines = output.splitlines()
    assert lines[0].split() == [
        "SESSION",
        "USER",
        "CONVERSATION",
        "ITEMS",
        "CORRUPT",
        "LAST",
        "ACTIVITY",
        "TITLE",
    ]
    assert set(lines[1]) <= {"-", " "}
    rows = [line.split() for line in lines[2:]]
    # Listings count rows without decoding them: corrupt rows are not told apart ("-").
    assert [row[:5] for row in rows] == [
        [ALICE_1, "alice", "c1", "6", "-"],
        [ALICE_2, "alice", "c2", "2", "-"],
        [BOB, "bob", "c1", "3", "-"],
    ], output


def test_list_by_user_paged_and_json(populated: Path) -> None:
    code, output = run("--db", populated, "list", "--user", "alice", "--json")
    assert code == 0
    listed = json.loads(output)
    assert [s["session_id"] for s in listed] == [ALICE_1, ALICE_2]
    assert listed[0]["message_count"] == 6
    assert listed[0]["created_at"].endswith(("Z", "+00:00")), listed[0]["created_at"]
    code, output = run("--db", populated, "list", "--limit", "1", "--offset", "1", "--json")
    assert code == 0
    assert [s["session_id"] for s in json.loads(output)] == [ALICE_2]
    code, output = run("--db", populated, "list", "--user", "nobody")
    assert (code, output) == (0, "no sessions\n")


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_list_text_and_json_print_the_same_timestamps(populated: Path) -> None:
    async def on_the_second() -> None:  # pydantic's JSON drops a zero fraction: not here
        clock = FakeClock(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
        with AgentSession("dan", "c1", db_path=populated, clock=clock) as session:
            await session.add_items([user("hi")])

    asyncio.run(on_the_second())
    code, text = run("--db", populated, "list")
    assert code == 0
    shown = {line.split()[0]: line.split()[5] for line in text.splitlines()[2:]}
    code, output = run("--db", populated, "list", "--json")
    assert code == 0
    listed = json.loads(output)
    assert shown == {s["session_id"]: s["last_activity"] for s in listed}, (shown, listed)
    assert shown["user_dan_conv_c1"] == "2026-01-15T12:00:00.000000Z"
    for entry in listed:
        for key in ("created_at", "last_activity"):
            assert ISO_UTC.fullmatch(entry[key]), entry
    code, output = run("--db", populated, "show", "user_dan_conv_c1")
    assert "\ncreated_at: 2026-01-15T12:00:00.000000Z\n" in output, output
    code, output = run("--db", populated, "export", "user_dan_conv_c1", "--format", "markdown")
    moment = "2026-01-15T12:00:00.000000Z"
    assert f"- created: {moment}; last activity: {moment}\n" in output, output


def test_list_empty_database(db_path: Path) -> None:
    schema.connect(db_path).close()  # an empty database (the CLI does not create one)
    assert run("--db", db_path, "list") == (0, "no sessions\n")
    code, output = run("--db", db_path, "list", "--json")
    assert code == 0
    assert json.loads(output) == []
    code, output = run("--db", db_path, "stats", "--json")
    assert json.loads(output)["sessions"] == 0
    assert json.loads(output)["average_items_per_session"] == 0.0


# --- show and export ------------------------------------------------------------------------


def test_show_text(populated: Path) -> None:
    code, output = run("--db", populated, "show", ALICE_1)
    assert code == 0
    head, _, table = output.partition("\n\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    assert fields["session_id"] == ALICE_1
    assert (fields["user_id"], fields["conversation_id"]) == ("alice", "c1")
    assert (fields["message_count"], fields["corrupt_items"]) == ("6", "0")
    rows = table.splitlines()[2:]
    assert len(rows) == 6, table
    assert rows[3].split()[:3] == ["3", "function_call", "get_weather"], rows[3]
    assert "Paris" in rows[3]
    assert rows[4].split()[:2] == ["4", "function_call_output"], rows[4]
    assert "sunny" in rows[4]


def test_show_names_the_tool_of_every_call_that_has_a_name(db_path: Path) -> None:
    items = [
        user("fix it"),
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "diff"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "applied"},
        {
            "type": "mcp_call",
            "id": "m1",
            "name": "search_docs",
            "server_label": "docs",
            "arguments": "{}",
        },
        {"type": "function_call", "call_id": "c2", "name": "two\nlines", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"},
        assistant("done"),
    ]

    async def write() -> None:
        with AgentSession("u", "c", db_path=db_path) as session:
            await session.add_items(items)  # type: ignore[arg-type]

    asyncio.run(write())
    code, output = run("--db", db_path, "show", get_session_id("u", "c"))
    assert code == 0
    rows = output.partition("\n\n")[2].splitlines()[2:]
    assert [row.split()[1:3] for row in rows[1:6]] == [
        ["custom_tool_call", "apply_patch"],
        ["custom_tool_call_output", "-"],  # outputs have no name: the ROLE column follows
        ["mcp_call", "search_docs"],
        ["function_call", "two"],
        ["function_call_output", "-"],
    ], output
    assert "function_call two lines" in rows[4], "a name must stay on its row"
    assert rows[6].split()[1:3] == ["message", "assistant"]


def test_show_json(populated: Path) -> None:
    code, output = run("--db", populated, "show", ALICE_1, "--json")
    assert code == 0
    shown = json.loads(output)
    assert shown["session_id"] == ALICE_1
    assert shown["items"] == TOOL_CONVERSATION


def test_export_json(populated: Path) -> None:
    code, output = run("--db", populated, "export", BOB)
    assert code == 0
    exported = json.loads(output)
    assert exported["items"] == BOB_ITEMS
    assert (exported["user_id"], exported["message_count"]) == ("bob", 3)
    code, again = run("--db", populated, "export", BOB, "--format", "json")
    assert again == output


def test_export_markdown_with_a_tool_call(populated: Path) -> None:
    code, output = run("--db", populated, "export", ALICE_1, "--format", "markdown")
    assert code == 0
    assert output.startswith(f"# Session `{ALICE_1}`\n"), output[:80]
    for expected in (
        "- user: `alice`",
        "- conversation: `c1`",
        "- items: 6 (corrupt rows skipped: 0)",
        "**User:** hello",
        "**Assistant:** hi there",
        "**User:** what's the weather in Paris?",
        '**Tool call** `get_weather({"city": "Paris"})` (call `call_1`)',
        "**Tool output** (call `call_1`): sunny, 21 C",
        "**Assistant:** It is sunny in Paris.",
    ):
        assert expected in output, f"missing {expected!r} in:\n{output}"
    order = [output.index(s) for s in ("hello", "Tool call", "Tool output", "It is sunny")]
    assert order == sorted(order), order


# --- prune, clear, cleanup ------------------------------------------------------------------


def test_prune_one_session(populated: Path) -> None:
    code, output = run("--db", populated, "prune", ALICE_1)
    assert (code, output) == (0, f"pruned 0 item(s) from {ALICE_1}\n")  # 6 <= 200
    code, output = run("--db", populated, "prune", ALICE_1, "--max-messages", "4")
    assert (code, output) == (0, f"pruned 2 item(s) from {ALICE_1}\n")
    assert row_counts(populated) == {ALICE_1: 4, ALICE_2: 2, BOB: 3}
    code, output = run("--db", populated, "show", ALICE_1, "--json")
    assert json.loads(output)["items"] == TOOL_CONVERSATION[2:]


def test_prune_all(populated: Path) -> None:
    code, output = run("--db", populated, "prune", "--all", "--max-messages", "2")
    # alice/c1 keeps its last turn whole (4), alice/c2 fits (2), bob keeps "oldest?" (1).
    assert (code, output) == (0, "pruned 4 item(s) across all sessions\n")
    assert row_counts(populated) == {ALICE_1: 4, ALICE_2: 2, BOB: 1}


def test_clear(populated: Path) -> None:
    code, output = run("--db", populated, "clear", BOB)
    assert (code, output) == (0, f"cleared {BOB} (3 item(s) deleted)\n")
    assert row_counts(populated) == {ALICE_1: 6, ALICE_2: 2}
    with closing(sqlite3.connect(populated)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM agent_sessions").fetchone() == (2,)


def test_cleanup_dry_run_then_for_real(populated: Path) -> None:
    code, output = run("--db", populated, "cleanup", "--dry-run")
    assert code == 0
    assert output.endswith("\nwould delete 1 session(s) idle for more than 7 day(s)\n"), output
    assert BOB in row_counts(populated)
    code, output = run("--db", populated, "cleanup", "--retention-days", "40")
    assert (code, output) == (0, "deleted 0 session(s) idle for more than 40 day(s)\n")
    assert BOB in row_counts(populated)
    code, output = run("--db", populated, "cleanup")
    assert (code, output) == (0, "deleted 1 session(s) idle for more than 7 day(s)\n")
    assert row_counts(populated) == {ALICE_1: 6, ALICE_2: 2}


async def _add_idle_session(db_path: Path, days_ago: int) -> str:
    clock = FakeClock(utc_now() - timedelta(days=days_ago))
    with AgentSession("carol", f"c{days_ago}", db_path=db_path, clock=clock) as session:
        await session.add_items([user("a"), assistant("b")])  # type: ignore[list-item]
        return session.session_id


def test_cleanup_dry_run_lists_the_sessions_it_would_delete(populated: Path) -> None:
    carol = asyncio.run(_add_idle_session(populated, 20))  # idle, but less long than bob
    before = row_counts(populated)
    code, output = run("--db", populated, "cleanup", "--dry-run")
    assert code == 0
    table, _, summary = output.partition("\n\n")
    assert summary == "would delete 2 session(s) idle for more than 7 day(s)\n", output
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["SESSION", "USER", "CONVERSATION", "ITEMS", "CORRUPT"]
    assert [line.split()[:5] for line in lines[2:]] == [
        [BOB, "bob", "c1", "3", "-"],  # oldest activity first
        [carol, "carol", "c20", "2", "-"],
    ], output
    code, output = run("--db", populated, "cleanup", "--dry-run", "--retention-days", "25")
    assert code == 0
    assert [line.split()[0] for line in output.splitlines()[2:-2]] == [BOB], output
    assert output.endswith("\nwould delete 1 session(s) idle for more than 25 day(s)\n")
    code, output = run("--db", populated, "cleanup", "--dry-run", "--retention-days", "40")
    assert (code, output) == (0, "would delete 0 session(s) idle for more than 40 day(s)\n")
    assert row_counts(populated) == before


def test_cleanup_dry_run_json_has_the_shape_of_list_json(populated: Path) -> None:
    carol = asyncio.run(_add_idle_session(populated, 20))
    code, output = run("--db", populated, "cleanup", "--dry-run", "--json")
    assert code == 0
    idle = json.loads(output)
    code, listed = run("--db", populated, "list", "--json")
    by_id = {entry["session_id"]: entry for entry in json.loads(listed)}
    assert idle == [by_id[BOB], by_id[carol]], idle
    code, output = run(
        "--db", populated, "cleanup", "--dry-run", "--json", "--retention-days", "40"
    )
    assert (code, json.loads(output)) == (0, [])
    assert BOB in row_counts(populated)


def test_cleanup_json_without_dry_run_exits_2_and_deletes_nothing(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = row_counts(populated)
    code, output = run("--db", populated, "cleanup", "--json")
    err = capsys.readouterr().err
    assert (code, output) == (2, ""), err
    assert "--dry-run" in err, err
    assert row_counts(populated) == before


# --- bad input: exit 2, a message, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice"),
        ([], "required"),
        (["cleanup", "--retention-days", "0"], "integer from 1 to 36500"),
        (["cleanup", "--retention-days", "36501"], "integer from 1 to 36500"),
        (["cleanup", "--retention-days", "soon"], "expected an integer, got 'soon'"),
        (["list", "--limit", "-1"], "expected an integer of at least 1, got -1"),
        # Past the library's bound (2**62), argparse refuses it, as it refuses -1.
        (["list", "--limit", str(2**63 - 1)], f"at least 1, got {2**63 - 1} (too large)"),
        (["list", "--offset", "-1"], "expected an integer of at least 0, got -1"),
        (["list", "--offset", str(2**62 + 1)], f"at least 0, got {2**62 + 1} (too large)"),
        (["prune", BOB, "--all"], "not allowed with"),
        (["prune"], "required"),
        (["prune", "--all", "--max-messages", "0"], "expected an integer of at least 1, got 0"),
        (["prune", "--all", "--max-messages", str(2**64)], f"at least 1, got {2**64} (too large)"),
        (["export", BOB, "--format", "pdf"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(
    populated: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = row_counts(populated)
    code, output = run("--db", populated, *argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert message in err, err
    assert str(MAX_COUNT) not in err, "the internal bound is no one's business"
    assert "Traceback" not in err
    assert output == ""
    assert row_counts(populated) == before


def test_the_largest_limit_and_offset_are_accepted(populated: Path) -> None:
    code, output = run("--db", populated, "list", "--limit", str(2**62), "--json")
    assert code == 0
    assert len(json.loads(output)) == 3
    code, output = run("--db", populated, "list", "--offset", str(2**62), "--json")
    assert (code, json.loads(output)) == (0, [])


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AGENT_SESSION_MAX_MESSAGES", "0"), ("AGENT_SESSION_TIMEZONE", "Mars/Olympus")],
)
def test_invalid_environment_exits_2(
    populated: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    code, output = run("--db", populated, "stats")
    err = capsys.readouterr().err
    assert code == 2, err
    assert variable in err, err
    assert "Traceback" not in err
    assert output == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "user_nobody_conv_x"],
        ["show", "user_nobody_conv_x", "--json"],
        ["export", "user_nobody_conv_x", "--format", "markdown"],
        ["clear", "user_nobody_conv_x"],
        ["prune", "user_nobody_conv_x"],
    ],
)
def test_unknown_session_exits_1(
    populated: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    before = row_counts(populated)
    code, output = run("--db", populated, *argv)
    err = capsys.readouterr().err
    assert code == 1, (argv, err)
    assert "user_nobody_conv_x" in err, err
    assert "Traceback" not in err
    assert output == ""
    assert row_counts(populated) == before


def test_db_that_is_not_sqlite_exits_1_and_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    content = b"my notes, not a database\n" * 100
    path.write_bytes(content)
    code, output = run("--db", path, "stats")
    err = capsys.readouterr().err
    assert code == 1, err
    assert str(path) in err, err
    assert "Traceback" not in err
    assert output == ""
    assert path.read_bytes() == content


def test_db_that_is_a_folder_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, _ = run("--db", folder, "list")
    err = capsys.readouterr().err
    assert code == 1, err
    assert str(folder) in err, err
    assert "Traceback" not in err
    assert list(folder.iterdir()) == []


# --- the installed console script -----------------------------------------------------------


def script() -> str:
    found = shutil.which("agent-sessions") or str(Path(sys.executable).parent / "agent-sessions")
    assert Path(found).is_file(), f"console script not installed: {found}"
    return found


def test_console_script_runs_stats(populated: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [script(), "--db", str(populated), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sessions"] == 3


def test_console_script_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [script(), "--db", str(tmp_path / "x.db"), "cleanup", "--retention-days", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "retention-days" in done.stderr
    assert "Traceback" not in done.stderr


def test_python_dash_m_runs_the_cli(populated: Path, tmp_path: Path) -> None:
    def module(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent_sessions", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )

    done = module("--help")
    assert done.returncode == 0, done.stderr
    assert "usage: agent-sessions" in done.stdout
    done = module("--db", str(populated), "stats", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sessions"] == 3
    done = module("--db", str(populated), "list", "--limit", "0")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


DATABASE_COMMANDS = """
import io, json, sys
from agent_sessions.cli import main

db = sys.argv[1]
for argv in (
    ["stats"], ["stats", "--json"], ["list"], ["list", "--json"], ["show", "{alice}"],
    ["export", "{alice}", "--format", "markdown"], ["prune", "--all"],
    ["prune", "{alice}", "--max-messages", "4"], ["cleanup", "--dry-run"], ["cleanup"],
    ["clear", "{alice}"],
):
    code = main(["--db", db, *argv], out=io.StringIO())
    assert code == 0, (argv, code)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
""".replace("{alice}", ALICE_1)


def top_level_modules_after_database_commands(db_path: Path, cwd: Path) -> set[str]:
    """Run every database command in one fresh interpreter; return what it imported."""
    done = subprocess.run(
        [sys.executable, "-c", DATABASE_COMMANDS, str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ALICE_1 not in row_counts(db_path), "the commands did not run"
    return set(json.loads(done.stdout))


def test_database_commands_do_not_import_the_sdk(populated: Path, tmp_path: Path) -> None:
    loaded = top_level_modules_after_database_commands(populated, tmp_path)
    assert "agent_sessions" in loaded
    assert not loaded & {"agents", "openai"}, sorted(loaded & {"agents", "openai"})


def test_database_commands_do_not_import_the_scheduler(populated: Path, tmp_path: Path) -> None:
    loaded = top_level_modules_after_database_commands(populated, tmp_path)
    assert "apscheduler" not in loaded


def test_daemon_starts_and_stops_on_sigterm(populated: Path, tmp_path: Path) -> None:
    db_path = populated
    env = {**os.environ, "AGENT_SESSION_TIMEZONE": "Europe/Paris"}
    process = subprocess.Popen(
        [script(), "--db", str(db_path), "daemon"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("daemon started" in line for line in seen):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"daemon exited before starting: {seen}"
            seen.append(line)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    while (line := lines.get_nowait()) is not None:
        seen.append(line)
    assert code == 0, seen
    assert str(db_path) in next(line for line in seen if "daemon started" in line)
    assert any(line.rstrip().endswith("daemon stopped") for line in seen), seen
    assert not any("Traceback" in line for line in seen), seen
    assert process.stdout is not None
    assert process.stdout.read() == ""
    process.stdout.close()
    process.stderr.close()  # type: ignore[union-attr]


def test_a_missing_database_is_reported_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "sessions.db"
    for command in (["stats"], ["list"], ["show", "x"], ["cleanup"], ["prune", "--all"]):
        assert main(["--db", str(missing), *command], out=io.StringIO()) == 1, command
        err = capsys.readouterr().err
        assert "no database at" in err, (command, err)
        assert "typo" in err
    assert not missing.parent.exists(), "the CLI created folders for a database it did not find"


def test_a_database_without_sessions_is_reported_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_app = tmp_path / "app.db"
    with closing(sqlite3.connect(other_app)) as conn, conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (other_app, empty):
        before = path.read_bytes()
        for command in (["stats"], ["list"], ["cleanup"], ["prune", "--all"], ["daemon"]):
            assert main(["--db", str(path), *command], out=io.StringIO()) == 1, command
            err = capsys.readouterr().err
            assert "holds no sessions" in err, (command, err)
            assert str(path) in err, (command, err)
        assert path.read_bytes() == before, f"{path.name} was changed"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "empty.db"]


def test_a_database_path_with_a_tilde_is_the_same_file_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", "~/chat/sessions.db")

    async def write() -> None:
        with AgentSession("ada", "trip") as session:
            await session.add_items([user("hello")])

    asyncio.run(write())
    assert (home / "chat" / "sessions.db").is_file()
    code, output = run("stats", "--json")
    assert code == 0
    assert json.loads(output)["sessions"] == 1
    code, output = run("--db", "~/chat/sessions.db", "list", "--json")
    assert code == 0
    assert [row["session_id"] for row in json.loads(output)] == ["user_ada_conv_trip"]
    assert not (tmp_path / "~").exists()


def test_text_output_escapes_lone_surrogates_instead_of_crashing(tmp_path: Path) -> None:
    """The SDK stores any str; the real stdout cannot encode a lone surrogate."""
    db_path = tmp_path / "surrogates.db"

    async def write() -> None:
        with AgentSession("u", "c", db_path=db_path) as session:
            await session.add_items([user("bad \ud800 text"), assistant("also \udcff")])

    asyncio.run(write())
    session_id = get_session_id("u", "c")
    for command in (
        ["show", session_id],
        ["export", session_id, "--format", "markdown"],
        ["export", session_id],
    ):
        done = subprocess.run(
            [script(), "--db", str(db_path), *command],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        assert b"Traceback" not in done.stderr
        assert b"bad \\ud800 text" in done.stdout, (command, done.stdout)


def test_the_daemon_refuses_a_missing_database_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "sessions.db"
    done = subprocess.run(  # a subprocess: a daemon that wrongly starts is stopped by timeout
        [script(), "--db", str(missing), "daemon"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "no database at" in done.stderr, done.stderr
    assert "typo" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not missing.parent.exists(), "the daemon created a database it did not find"


@pytest.mark.parametrize("db", ["", "  "])
def test_an_empty_database_path_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], db: str
) -> None:
    assert main(["--db", db, "list"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "the database path must not be empty" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_dotenv_that_is_not_utf8_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_bytes(b"AGENT_SESSION_MAX_MESSAGES=\xff5\n")  # cwd is tmp_path
    assert main(["--db", str(tmp_path / "x.db"), "stats"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("agent-sessions: cannot read agent_sessions settings from .env"), err
    assert "Traceback" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["stats"], ["list", "--json"], ["export", ALICE_1]])
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(
    populated: Path, command: list[str]
) -> None:
    argv = [script(), "--db", str(populated), *command]
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "agent-sessions: cannot write the output: No space left on device\n"
    closed = subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(1),
    )
    assert closed.returncode == 1, closed.stderr
    assert closed.stderr == "agent-sessions: cannot write the output: standard output is closed\n"


def test_cleanup_dry_run_lists_at_most_limit_and_counts_them_all(tmp_path: Path) -> None:
    from agent_sessions.cli import main as cli_main
    from tests.conftest import FakeClock

    path = tmp_path / "idle.db"
    clock = FakeClock()

    async def fill() -> None:
        for n in range(5):
            with AgentSession("u", f"c{n}", db_path=path, clock=clock) as session:
                await session.add_items([{"role": "user", "content": "x"}])
            clock.advance(minutes=1)

    asyncio.run(fill())
    # Every session is idle by the real clock the CLI uses (the fake one is in 2026-01).
    out = io.StringIO()
    assert cli_main(["--db", str(path), "cleanup", "--dry-run", "--limit", "2"], out=out) == 0
    text = out.getvalue()
    assert "user_u_conv_c0" in text
    assert "user_u_conv_c1" in text
    assert "user_u_conv_c2" not in text
    assert "... and 3 more (--limit 2)" in text
    assert "would delete 5 session(s)" in text
    out = io.StringIO()
    listing = ["--db", str(path), "cleanup", "--dry-run", "--json", "--limit", "3"]
    assert cli_main(listing, out=out) == 0
    assert len(json.loads(out.getvalue())) == 3
