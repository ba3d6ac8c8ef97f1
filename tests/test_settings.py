from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_sessions import AgentSessionSettings, ConfigurationError, get_settings


def test_defaults() -> None:
    settings = AgentSessionSettings()
    assert settings.db_path == Path("./data/agent_sessions.db")
    assert settings.max_messages == 200
    assert settings.retention_days == 7
    assert (settings.cleanup_hour, settings.cleanup_minute) == (2, 0)
    assert settings.timezone == "UTC"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", "/tmp/x.db")
    monkeypatch.setenv("AGENT_SESSION_MAX_MESSAGES", "50")
    monkeypatch.setenv("AGENT_SESSION_TIMEZONE", "Europe/Paris")
    settings = get_settings()
    assert settings.db_path == Path("/tmp/x.db")
    assert settings.max_messages == 50
    assert settings.timezone == "Europe/Paris"
    assert get_settings() is settings  # cached


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    # conftest chdirs into tmp_path, so this is the working directory's .env
    (tmp_path / ".env").write_text(
        "AGENT_SESSION_RETENTION_DAYS=30\nAGENT_SESSION_CLEANUP_HOUR=4\n"
    )
    settings = get_settings()
    assert (settings.retention_days, settings.cleanup_hour) == (30, 4)


def test_a_dotenv_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"AGENT_SESSION_MAX_MESSAGES=\xff5\n")
    with pytest.raises(ConfigurationError, match=r"\.env.*utf-8"):
        get_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENT_SESSION_MAX_MESSAGES", "0"),
        ("AGENT_SESSION_MAX_MESSAGES", "-5"),
        ("AGENT_SESSION_MAX_MESSAGES", "many"),
        ("AGENT_SESSION_RETENTION_DAYS", "0"),
        ("AGENT_SESSION_CLEANUP_HOUR", "25"),
        ("AGENT_SESSION_CLEANUP_MINUTE", "60"),
        ("AGENT_SESSION_TIMEZONE", "Mars/Olympus"),
        ("AGENT_SESSION_DB_PATH", " "),
        ("AGENT_SESSION_DB_PATH", ""),
    ],
)
def test_bad_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        get_settings()
    with pytest.raises(ValidationError, match=variable.removeprefix("AGENT_SESSION_").lower()):
        AgentSessionSettings()


def test_settings_are_frozen() -> None:
    settings = AgentSessionSettings()
    with pytest.raises(ValidationError):
        settings.max_messages = 5  # type: ignore[misc]


def test_range_errors_never_print_the_internal_maximum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent_sessions import AgentSession, InvalidArgumentError
    from agent_sessions.ids import MAX_COUNT
    from agent_sessions.settings import load_settings

    monkeypatch.setenv("AGENT_SESSION_MAX_MESSAGES", str(2**63))
    with pytest.raises(ConfigurationError, match="too large") as from_env:
        load_settings()
    assert str(MAX_COUNT) not in str(from_env.value)
    for bad in (0, 2**63):
        with pytest.raises(InvalidArgumentError) as raised:
            AgentSession("u", "c", db_path=tmp_path / "x.db", max_messages=bad)
        assert str(MAX_COUNT) not in str(raised.value)
        assert "at least 1" in str(raised.value)


def test_the_env_example_is_valid_and_shows_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent_sessions.settings import load_settings

    example = Path(__file__).resolve().parent.parent / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    monkeypatch.chdir(tmp_path)
    assert load_settings() == AgentSessionSettings(_env_file=None)  # type: ignore[call-arg]


def test_a_server_url_is_never_taken_for_a_sqlite_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent_sessions import AgentSession, InvalidArgumentError
    from agent_sessions.settings import load_settings

    monkeypatch.setenv("AGENT_SESSION_DB_PATH", "postgresql://app@db/app")
    with pytest.raises(ConfigurationError, match=r"AGENT_SESSION_DB_PATH.*database_url"):
        load_settings()
    monkeypatch.delenv("AGENT_SESSION_DB_PATH")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"app@db.*server URL") as raised:
        AgentSession("u", "c", db_path="postgresql://app:secret@db/app")
    assert "secret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == [], "nothing may be created for a URL"
