"""PostgreSQL wiring: settings, the session factory, the CLI's ``--db URL`` and ``migrate``.

Everything here is about choosing and naming the database, not about storage (the contract
suite in ``tests/contract`` runs the same behaviour over SQLite and PostgreSQL). Passwords
must never reach a message: URLs here carry one, and the failing ones point at a closed port.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent_sessions import (
    AgentSession,
    AgentSessionSettings,
    ConfigurationError,
    InvalidArgumentError,
    SessionManager,
    StorageUnavailableError,
    get_agent_session,
)
from agent_sessions.backends import open_backend
from agent_sessions.backends.postgres import schema as pg_schema
from agent_sessions.cli import main
from agent_sessions.session import PostgresSession
from agent_sessions.settings import get_settings, load_settings
from tests.items import user
from tests.pg_server import PG_URL, PGBOUNCER_URL, fresh_database, require_postgres, with_database

SECRET = "s3cret-Pa55"
REPO_ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def unreachable_url() -> str:
    return f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/app"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"AGENT_SESSION_{name.upper()}", value)
    get_settings.cache_clear()


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgresql://app:pw@db:5432/app", "postgres://app@db/app", "postgresql:///app"]
)
def test_a_postgres_url_is_accepted_and_chosen_over_the_path(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    set_env(monkeypatch, database_url=url, db_path="ignored.db")
    settings = load_settings()
    assert settings.database_url == url
    assert settings.database == url


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_database_url_means_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    set_env(monkeypatch, database_url=value, db_path="chosen.db")
    settings = load_settings()
    assert settings.database_url is None
    assert settings.database == Path("chosen.db")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"database_url": "mysql://app:pw@db/app"}, "AGENT_SESSION_DATABASE_URL"),
        ({"database_url": "sqlite:///app.db"}, "AGENT_SESSION_DATABASE_URL"),
        ({"database_url": "db.internal:5432/app"}, "AGENT_SESSION_DATABASE_URL"),
        ({"pool_min_size": "-1"}, "AGENT_SESSION_POOL_MIN_SIZE"),
        ({"pool_max_size": "0"}, "AGENT_SESSION_POOL_MAX_SIZE"),
        ({"pool_timeout": "0"}, "AGENT_SESSION_POOL_TIMEOUT"),
        ({"statement_timeout": "-1"}, "AGENT_SESSION_STATEMENT_TIMEOUT"),
        ({"statement_timeout": "2000001"}, "AGENT_SESSION_STATEMENT_TIMEOUT"),
    ],
)
def test_bad_settings_are_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    set_env(monkeypatch, **variables)
    with pytest.raises(ConfigurationError, match=named) as raised:
        load_settings()
    assert isinstance(raised.value, ValueError)
    assert "pw@" not in str(raised.value)
    code, output = run_cli("stats")
    assert (code, output) == (2, ""), "the CLI reports bad settings as bad input"


def test_pool_sizes_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, pool_min_size="5", pool_max_size="5")
    assert (load_settings().pool_min_size, load_settings().pool_max_size) == (5, 5)
    set_env(monkeypatch, pool_min_size="5", pool_max_size="4")
    with pytest.raises(ConfigurationError, match=r"pool_max_size \(4\).*pool_min_size \(5\)"):
        load_settings()


def test_disagreeing_pool_sizes_name_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, pool_min_size="5", pool_max_size="4")
    with pytest.raises(ConfigurationError, match="AGENT_SESSION_POOL_MAX_SIZE"):
        load_settings()


def test_repr_and_str_never_show_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://app:{SECRET}@db.internal:5432/app"
    set_env(monkeypatch, database_url=url)
    for settings in (load_settings(), AgentSessionSettings(database_url=url)):
        assert settings.database_url == url
        for text in (repr(settings), str(settings)):
            assert SECRET not in text
            assert "db.internal" not in text


def test_a_refused_url_never_shows_its_password_even_in_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"mysql://app:{SECRET}@db.internal/app"
    set_env(monkeypatch, database_url=url)
    errors: list[BaseException] = []
    for build in (load_settings, lambda: AgentSessionSettings(database_url=url)):
        with pytest.raises(ValueError, match="postgresql://") as raised:
            build()
        errors.append(raised.value)
    for error in errors:
        assert SECRET not in "".join(traceback.format_exception(error))


# --- choosing the session class ---------------------------------------------------------------

URL = f"postgresql://app:{SECRET}@db.internal:5432/app"


def test_get_agent_session_picks_the_class_from_the_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing here reaches a server: a PostgresSession connects on first use.
    path = tmp_path / "app.db"
    for chosen in (
        get_agent_session("u", "c", database_url=URL),
        get_agent_session("u", "c", db_path=URL),
        get_agent_session("u", "c", db_path="postgres://app@db.internal/app"),
    ):
        with chosen as session:
            assert type(session) is PostgresSession
            assert SECRET not in repr(session)
            assert SECRET not in session.database_url
            assert session.database_url.startswith("postgres")
    with get_agent_session("u", "c", db_path=path) as session:
        assert type(session) is AgentSession
    with pytest.raises(InvalidArgumentError, match="db_path or database_url"):
        get_agent_session("u", "c", db_path=path, database_url=URL)

    set_env(monkeypatch, database_url=URL, db_path=str(tmp_path / "env.db"))
    with get_agent_session("u", "c") as session:
        assert type(session) is PostgresSession, "the environment's URL is used"
    with get_agent_session("u", "c", db_path=path) as session:
        assert type(session) is AgentSession, "an explicit path wins over the environment's URL"
        assert Path(session.db_path) == path
    with get_agent_session(
        "u", "c", settings=AgentSessionSettings(database_url=None, db_path=path)
    ) as session:
        assert type(session) is AgentSession


def test_a_postgres_session_needs_a_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="AGENT_SESSION_DATABASE_URL"):
        PostgresSession("u", "c")
    with pytest.raises(InvalidArgumentError, match="postgresql://"):
        PostgresSession("u", "c", database_url=str(tmp_path / "app.db"))
    set_env(monkeypatch, database_url=URL)
    with PostgresSession("u", "c") as session:
        assert SECRET not in session.database_url
    assert list(tmp_path.iterdir()) == [], "nothing was created"


@pytest.mark.parametrize(
    "target", [f"mysql://app:{SECRET}@db/app", "sqlite://x.db", f"redis://:{SECRET}@cache:6379"]
)
def test_an_unsupported_url_scheme_is_refused(target: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unsupported database URL scheme") as raised:
        open_backend(target)
    assert isinstance(raised.value, ValueError)
    assert SECRET not in str(raised.value)
    with pytest.raises(InvalidArgumentError, match="unsupported"):
        get_agent_session("u", "c", db_path=target)
    with pytest.raises(InvalidArgumentError, match="unsupported"):
        SessionManager(target)
    assert run_cli("--db", target, "stats") == (2, "")
    assert list(tmp_path.iterdir()) == [], "no file was made of a URL"


# --- a server that cannot be reached: the password never shows --------------------------------


async def test_unreachable_server_errors_never_show_the_password(
    unreachable_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query_url = unreachable_url.replace(f"app:{SECRET}@", "app@") + f"?password={SECRET}"
    for url in (unreachable_url, query_url):
        with get_agent_session("u", "c", db_path=url) as session:
            assert SECRET not in repr(session)
            with pytest.raises(StorageUnavailableError) as raised:
                await session.add_items([user("x")])  # type: ignore[list-item]
        error = raised.value
        assert "127.0.0.1" in str(error)
        assert error.path is not None
        assert SECRET not in error.path
        assert SECRET not in "".join(traceback.format_exception(error))
        manager = SessionManager(url)
        assert SECRET not in manager.db_path
        with pytest.raises(StorageUnavailableError) as raised:
            await manager.get_session_count()
        await manager.close()
        assert SECRET not in str(raised.value)
        assert "127.0.0.1" in str(raised.value)

    capsys.readouterr()
    sqlite_source = tmp_path / "source.db"
    with AgentSession("u", "c", db_path=sqlite_source) as session:
        await session.add_items([user("x")])  # type: ignore[list-item]
    commands = [
        ["--db", unreachable_url, "stats"],
        ["--db", unreachable_url, "migrate"],
        ["--db", query_url, "list"],
        ["copy", "--from", str(sqlite_source), "--to", unreachable_url],
        ["copy", "--from", unreachable_url, "--to", str(tmp_path / "copy.db")],
    ]
    for argv in commands:
        code, output = await asyncio.to_thread(run_cli, *argv)
        err = capsys.readouterr().err
        assert (code, output) == (1, ""), (argv, err)
        assert err.startswith("agent-sessions: "), err
        assert "Traceback" not in err
        assert "127.0.0.1" in err
        assert SECRET not in err, argv
    assert not (tmp_path / "copy.db").exists()


def test_a_server_failure_is_one_line_on_stderr(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("--db", unreachable_url, "stats") == (1, "")
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err


# --- the CLI on a live server -------------------------------------------------------------------


@pytest.fixture
def empty_database() -> Iterator[str]:
    with fresh_database(require_postgres(PG_URL)) as name:
        yield name


@pytest.fixture(params=["direct", "pgbouncer"])
def live_url(request: pytest.FixtureRequest, empty_database: str) -> str:
    route = PG_URL if request.param == "direct" else PGBOUNCER_URL
    return with_database(require_postgres(route), empty_database)


@pytest.fixture(autouse=True)
def no_connections_opened_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """See ``test_a_cli_command_closes_its_pool_before_its_event_loop_ends``."""
    monkeypatch.setenv("AGENT_SESSION_POOL_MIN_SIZE", "0")


def redacted(url: str) -> str:
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    return url.replace(f":{password}@", "@") if password else url


def table_names(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows.fetchall()}


def test_migrate_creates_the_tables_once(live_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_names(live_url) == set()
    assert run_cli("--db", live_url, "stats") == (1, ""), "only migrate creates tables"
    assert "holds no sessions" in capsys.readouterr().err
    assert table_names(live_url) == set()

    code, output = run_cli("--db", live_url, "migrate")
    assert (code, output) == (
        0,
        f"{redacted(live_url)}: applied {len(pg_schema.MIGRATIONS)} migration(s); "
        f"schema version {pg_schema.LATEST_VERSION}\n",
    )
    assert table_names(live_url) >= {
        "agent_sessions_schema",
        "agent_sessions_session",
        "agent_sessions_item",
        "agent_sessions_turn_lock",
        "agent_sessions_sweep",
    }
    code, output = run_cli("--db", live_url, "migrate")
    assert (code, output) == (
        0,
        f"{redacted(live_url)}: applied 0 migration(s); "
        f"schema version {pg_schema.LATEST_VERSION}\n",
    )
    code, output = run_cli("--db", live_url, "stats", "--json")
    assert code == 0
    stats = json.loads(output)
    assert (stats["database"], stats["sessions"]) == (redacted(live_url), 0)


def test_the_cli_takes_the_url_from_the_environment_and_a_path_wins(
    live_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert run_cli("--db", live_url, "migrate")[0] == 0
    set_env(monkeypatch, database_url=live_url)
    code, output = run_cli("stats", "--json")
    assert (code, json.loads(output)["database"]) == (0, redacted(live_url))
    sqlite_file = tmp_path / "local.db"
    with AgentSession("u", "c", db_path=sqlite_file):
        pass
    code, output = run_cli("--db", str(sqlite_file), "stats", "--json")
    assert (code, json.loads(output)["database"]) == (0, str(sqlite_file))


# --- a library bug: the CLI's pool outlives its event loop ------------------------------------

POOL_PROBE = textwrap.dedent(
    """
    import gc, io, json, os, sys, threading
    from psycopg_pool import AsyncConnectionPool
    from agent_sessions.cli import main

    codes = []
    worker = threading.Thread(
        target=lambda: codes.append(main(["--db", sys.argv[1], "list"], out=io.StringIO())),
        daemon=True,
    )
    worker.start()
    worker.join(10)
    gc.collect()
    open_pools = [p for p in gc.get_objects() if isinstance(p, AsyncConnectionPool)]
    print(json.dumps({
        "hung": worker.is_alive(),
        "codes": codes,
        "open_pools": sum(not pool.closed for pool in open_pools),
    }))
    sys.stdout.flush()
    os._exit(0)
    """
)


def test_a_cli_command_closes_its_pool_before_its_event_loop_ends(live_url: str) -> None:
    assert run_cli("--db", live_url, "migrate")[0] == 0
    env = {**os.environ, "AGENT_SESSION_POOL_MIN_SIZE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    probe = subprocess.run(
        [sys.executable, "-c", POOL_PROBE, live_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout)
    assert not result["hung"], "the command never returned"
    assert result == {"hung": False, "codes": [0], "open_pools": 0}


# --- a manager on a URL -----------------------------------------------------------------------


@pytest.fixture
async def migrated_url(live_url: str) -> AsyncIterator[str]:
    from agent_sessions.backends.postgres import close_pools

    yield live_url
    await close_pools()


async def test_a_manager_takes_a_url_as_its_path_or_as_database_url(migrated_url: str) -> None:
    with get_agent_session("ada", "c", db_path=migrated_url) as session:
        await session.add_items([user("hello")])  # type: ignore[list-item]
    for manager in (SessionManager(migrated_url), SessionManager(database_url=migrated_url)):
        async with manager:
            assert manager.db_path == redacted(migrated_url)
            (stats,) = await manager.list_sessions()
            assert (stats.user_id, stats.message_count) == ("ada", 1)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter#2@db.internal:5432/app",
        "postgresql://app:a/b?c@db.internal/app?sslmode=require",
        "PostgreSQL://app:hunter2@db.internal/app",
    ],
)
def test_passwords_libpq_accepts_unescaped_are_never_shown(url: str) -> None:
    from agent_sessions.backends import redact_url
    from agent_sessions.backends.postgres.errors import redact

    for shown in (redact(url), redact_url(url)):
        assert "hunter" not in shown
        assert "a/b?c" not in shown
        assert "app@db.internal" in shown
