"""Settings read from the environment and ``.env`` (prefix ``AGENT_SESSION_``)."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .backends import PoolOptions, is_url

if TYPE_CHECKING:
    from .encryption import Keyring
from .durations import format_duration, parse_duration
from .errors import ConfigurationError, InvalidArgumentError
from .ids import MAX_COUNT

ENV_PREFIX = "AGENT_SESSION_"
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://")
MAX_RETENTION_DAYS = 36_500  # a century; anything larger is a typo, and cutoffs stay in range

T = TypeVar("T")


class AgentSessionSettings(BaseSettings):
    """Configuration of sessions, the manager, the scheduler and the CLI.

    Every field can be set as an environment variable named ``AGENT_SESSION_<FIELD>`` (for
    example ``AGENT_SESSION_MAX_MESSAGES=100``) or in a ``.env`` file in the working directory.
    Invalid values fail when the settings are built, with an error naming the field.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # database_url may hold a password
        validate_default=True,
    )

    db_path: Path = Field(
        default=Path("./data/agent_sessions.db"),
        description="SQLite database file; its parent folder is created when needed.",
    )
    max_messages: int = Field(
        default=200, ge=1, description="Items kept per session after every write."
    )
    retention_days: int = Field(
        default=7,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Sessions idle for longer than this many days expire (see retention).",
    )
    retention: timedelta | None = Field(
        default=None,
        description=(
            "How long a session may be idle before it expires, as a duration ('30m', '12h', "
            "'7d'); when set, it replaces retention_days."
        ),
    )
    cleanup_interval: timedelta | None = Field(
        default=None,
        description="Also sweep expired sessions this often ('5m'); unset: only daily.",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description=(
            "Encrypt stored items at rest: one or more keys (32 random bytes, URL-safe "
            "base64; `agent-sessions generate-key`), newest first, comma-separated. New items "
            "are sealed with the first; reads use whichever sealed a row. A secret: never "
            "printed or logged."
        ),
    )
    search_index: bool = Field(
        default=True,
        description="Index user and assistant message text for search_sessions.",
    )
    search_plaintext_index: bool = Field(
        default=False,
        description=(
            "With encryption_key set, still index message text for search: the index then "
            "holds that text in clear."
        ),
    )
    cleanup_hour: int = Field(default=2, ge=0, le=23, description="Hour of the daily cleanup.")
    cleanup_minute: int = Field(default=0, ge=0, le=59, description="Minute of the daily cleanup.")
    timezone: str = Field(default="UTC", description="IANA time zone of the cleanup schedule.")
    warn_average_items: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "health() and the scheduled sweep log a warning (once per process) when the "
            "average items per session is above this; unset: never."
        ),
    )
    warn_active_sessions: int | None = Field(
        default=None,
        ge=1,
        description=(
            "The same when more sessions than this were active within retention; unset: never."
        ),
    )
    database_url: str | None = Field(
        default=None,
        repr=False,  # it may hold a password
        description="PostgreSQL URL (postgresql://...); when set, used instead of db_path.",
    )
    pool_min_size: int = Field(
        default=0, ge=0, le=10_000, description="PostgreSQL connections each process keeps open."
    )
    pool_max_size: int = Field(
        default=10, ge=1, le=10_000, description="PostgreSQL connections each process may open."
    )
    pool_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a PostgreSQL connection (to connect, or a free one).",
    )
    statement_timeout: float = Field(
        default=30.0,
        ge=0,
        le=2_000_000,
        description="Seconds a PostgreSQL statement may run, lock waits included (0: no limit).",
    )

    @field_validator("db_path", mode="before")
    @classmethod
    def _db_path_not_blank(cls, value: object) -> object:
        # Checked before conversion: Path("") is Path("."), the working directory.
        if isinstance(value, str) and not value.strip():
            raise ValueError("db_path must not be empty")
        if is_url(value):  # Path() would fold it into a file name such as postgresql:/h/db
            raise ValueError("db_path is a SQLite path; put a server URL in database_url")
        return value

    @field_validator("retention", "cleanup_interval", mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # an empty variable means "not set"
        return parse_duration(value, info.field_name or "duration")

    @field_validator("warn_average_items", "warn_active_sessions", mode="before")
    @classmethod
    def _threshold_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None  # an empty variable means "not set"
        return value

    @field_validator("encryption_key", mode="before")
    @classmethod
    def _encryption_keys(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # an empty variable means "not set"
        from .encryption import parse_keys

        try:
            parse_keys(value)
        except InvalidArgumentError as exc:  # names the key's position, never the key
            raise ValueError(str(exc)) from None
        return value

    @field_validator("max_messages")
    @classmethod
    def _max_messages_storable(cls, value: int) -> int:
        # A storage limit (64-bit counts), not a chosen bound: its value would only confuse.
        if value > MAX_COUNT:
            raise ValueError("max_messages is too large")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # an empty variable means "not set"
        if not value.startswith(POSTGRES_URL_PREFIXES):
            raise ValueError("database_url must start with postgresql:// or postgres://")
        return value

    @model_validator(mode="after")
    def _pool_sizes_agree(self) -> Self:
        if self.pool_max_size < self.pool_min_size:
            raise ValueError(
                f"pool_max_size ({self.pool_max_size}) is smaller than pool_min_size "
                f"({self.pool_min_size}): {ENV_PREFIX}POOL_MAX_SIZE must be at least "
                f"{ENV_PREFIX}POOL_MIN_SIZE"
            )
        return self

    @model_validator(mode="after")
    def _one_retention(self) -> Self:
        fields = self.model_fields_set
        if (
            "retention" in fields
            and "retention_days" in fields
            and self.retention is not None
            and self.retention != timedelta(days=self.retention_days)
        ):
            raise ValueError(
                f"retention ({format_duration(self.retention)}) and retention_days "
                f"({self.retention_days}) disagree: set {ENV_PREFIX}RETENTION or "
                f"{ENV_PREFIX}RETENTION_DAYS, not both"
            )
        return self

    @property
    def retention_period(self) -> timedelta:
        """How long a session may be idle: ``retention`` when set, else ``retention_days``."""
        return self.retention if self.retention is not None else timedelta(days=self.retention_days)

    @property
    def database(self) -> str | Path:
        """Where sessions live: ``database_url`` when set, else ``db_path``."""
        return self.database_url if self.database_url is not None else self.db_path

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


def load_settings() -> AgentSessionSettings:
    """Build settings from the environment, translating validation errors.

    Raises:
        ConfigurationError: naming each invalid field and its environment variable.
    """
    try:
        return AgentSessionSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            if error["loc"]
            else error["msg"]
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid agent_sessions settings: {problems}") from exc
    except (UnicodeDecodeError, OSError) as exc:  # a .env that is not UTF-8 text
        raise ConfigurationError(f"cannot read agent_sessions settings from .env: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> AgentSessionSettings:
    """Return the process-wide settings, built on first use and cached.

    Call ``get_settings.cache_clear()`` after changing the environment.
    """
    return load_settings()


def resolve_database(
    db_path: object, database_url: object, settings: AgentSessionSettings | None
) -> object:
    """The database to use, the first given of these.

    An explicit ``db_path`` (a path or URL), ``database_url``, the settings'
    ``database_url``, their ``db_path``.

    Raises:
        InvalidArgumentError: if both are given, or ``settings`` is not settings.
    """
    if db_path is not None and database_url is not None:
        raise InvalidArgumentError("pass db_path or database_url, not both")
    if db_path is not None:
        return db_path
    if database_url is not None:
        return database_url
    return resolve_setting(None, "database", settings)


def pool_options(settings: AgentSessionSettings | None) -> PoolOptions:
    """The PostgreSQL pool's sizes and timeouts from the settings (``get_settings()``)."""
    chosen = settings if settings is not None else get_settings()
    return PoolOptions(
        min_size=chosen.pool_min_size,
        max_size=chosen.pool_max_size,
        timeout=chosen.pool_timeout,
        statement_timeout=chosen.statement_timeout,
    )


def resolve_setting(value: T | None, name: str, settings: AgentSessionSettings | None) -> T:
    """Return ``value``, or when it is ``None`` the field ``name`` of the settings.

    ``settings`` defaults to ``get_settings()``, read only when a value is missing, so code
    given every argument explicitly never touches the environment.

    Raises:
        InvalidArgumentError: if ``settings`` is not an ``AgentSessionSettings``.
    """
    if settings is not None and not isinstance(settings, AgentSessionSettings):
        raise InvalidArgumentError(
            f"settings must be an AgentSessionSettings, not {type(settings).__name__}"
        )
    if value is not None:
        return value
    resolved: T = getattr(settings if settings is not None else get_settings(), name)
    return resolved


def search_enabled(
    search_index: bool | None, keyring: Keyring | None, settings: AgentSessionSettings | None
) -> bool:
    """Whether message text is indexed for search as it is written.

    ``search_index`` (or the settings'); for sessions that encrypt their items, only with
    ``search_plaintext_index`` too: an index of ciphertext finds nothing, and one of the text
    keeps it in clear.
    """
    enabled = bool(resolve_setting(search_index, "search_index", settings))
    if not enabled or keyring is None or keyring.writes_plaintext:
        return enabled
    return bool(resolve_setting(None, "search_plaintext_index", settings))
