"""Persistent, per-user, bounded conversation memory for the OpenAI Agents SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AgentSessionsError,
    ConfigurationError,
    CorruptDatabaseError,
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidItemError,
    SessionClosedError,
    SessionNotFoundError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from .ids import get_session_id
from .manager import SessionManager, SessionStats
from .scheduler import CLEANUP_JOB_ID, start_cleanup_scheduler
from .settings import AgentSessionSettings, get_settings

if TYPE_CHECKING:
    from .session import AgentSession, get_agent_session

__version__ = "0.1.0"

__all__ = [
    "CLEANUP_JOB_ID",
    "AgentSession",
    "AgentSessionSettings",
    "AgentSessionsError",
    "ConfigurationError",
    "CorruptDatabaseError",
    "InvalidArgumentError",
    "InvalidIdentifierError",
    "InvalidItemError",
    "SessionClosedError",
    "SessionManager",
    "SessionNotFoundError",
    "SessionStats",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "__version__",
    "get_agent_session",
    "get_session_id",
    "get_settings",
    "start_cleanup_scheduler",
]


_LAZY = {"AgentSession", "get_agent_session"}


def __getattr__(name: str) -> Any:
    # The session module imports the Agents SDK (about 2 s); the CLI's database commands and
    # the manager do not need it, so it is loaded on first use.
    if name in _LAZY:
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
