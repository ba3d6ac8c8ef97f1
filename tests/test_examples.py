"""The examples run offline and do what the README says they show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _checkout_data() -> dict[str, tuple[int, int]]:
    folder = ROOT / "data"
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*")}


def test_quickstart_runs_offline_and_remembers_across_processes(tmp_path: Path) -> None:
    # Run where the tests may write (tmp_path), never over the checkout's data/quickstart.db.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    db = tmp_path / "quickstart.db"
    before = _checkout_data()
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert _checkout_data() == before, "the test must not touch the checkout's data/"
    assert db.is_file()
    out = result.stdout
    assert "offline, ScriptedModel" in out
    history = [int(n) for n in re.findall(r"history: (\d+) items before this turn", out)]
    after = [int(n) for n in re.findall(r"(\d+) after", out)]
    # turns 1-2 in the first process, turn 3 in a second process, turns 4-7 pruned to 8
    assert history[:3] == [0, 4, 6], out
    assert after[2] == 8, "the second process must carry on from the stored history"
    assert all(n <= 8 for n in after), f"pruning should keep at most 8 items: {after}"
    assert "user_ada_conv_trip-planning: 8 items" in out
    # The proof is visible: what the model received on the second turn, what pruning cut.
    second_input = out.split("the model received, oldest first:")[1].split("(history")[0]
    assert "user: \"Hi, I'm Ada. What's the weather in Lisbon?\"" in second_input
    assert "function_call get_weather" in second_input
    assert "function_call_output" in second_input
    assert "pruning removed the oldest turn(s), each whole: \"Hi, I'm Ada." in out
    # ... and the CLI command it prints inspects that very file.
    command = re.search(r"agent-sessions --db (\S+) stats", out)
    assert command is not None, out
    assert Path(command.group(1)) == db, out
    run_cli = "import sys; from agent_sessions.cli import main; sys.exit(main())"
    cli = subprocess.run(
        [sys.executable, "-c", run_cli, "--db", command.group(1), "stats"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert re.search(r"^sessions +1$", cli.stdout, re.MULTILINE), cli.stdout
    assert re.search(r"^average items per session +8\.0$", cli.stdout, re.MULTILINE), cli.stdout


def test_fastapi_app_remembers_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from agent_sessions import get_settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", str(tmp_path / "app.db"))
    get_settings.cache_clear()
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.fastapi_app import app

    with TestClient(app) as client:
        first = client.post(
            "/chat", json={"user_id": "ada", "conversation_id": "c1", "message": "hello"}
        )
        second = client.post(
            "/chat", json={"user_id": "ada", "conversation_id": "c1", "message": "again"}
        )
        other = client.post(
            "/chat", json={"user_id": "bob", "conversation_id": "c1", "message": "hi"}
        )
        assert first.status_code == second.status_code == other.status_code == 200
        assert first.json()["history_items"] == 2
        assert second.json()["history_items"] == 4
        assert "3 items of context" in second.json()["reply"]
        assert other.json()["history_items"] == 2, "bob must not see ada's conversation"
        listing = client.get("/users/ada/sessions").json()
        assert [s["session_id"] for s in listing] == ["user_ada_conv_c1"]
        bad = client.post(
            "/chat", json={"user_id": "a\nb", "conversation_id": "c1", "message": "x"}
        )
        assert bad.status_code == 422
        assert app.state.manager is not None
        from agent_sessions import CLEANUP_JOB_ID

        assert CLEANUP_JOB_ID in {job.id for job in app.state.scheduler.get_jobs()}
