"""Persistent, per-user, bounded conversation memory for the OpenAI Agents SDK."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backends import close_server_pools
from .encryption import Keyring, generate_key
from .errors import (
    AgentSessionsError,
    ConfigurationError,
    CorruptDatabaseError,
    EncryptionKeyError,
    EventLoopMismatchError,
    InvalidArgumentError,
    InvalidIdentifierError,
    InvalidItemError,
    SchedulerError,
    SearchUnavailableError,
    SessionClosedError,
    SessionNotFoundError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    TurnLockTimeoutError,
)
from .ids import get_session_id
from .manager import SessionManager
from .models import (
    ConversationExport,
    HealthReport,
    SearchHit,
    SessionPage,
    SessionStats,
    SweepRecord,
)
from .settings import AgentSessionSettings, get_settings

if TYPE_CHECKING:
    from .scheduler import CLEANUP_JOB_ID, start_cleanup_scheduler
    from .session import AgentSession, PostgresSession, get_agent_session

__version__ = "0.1.0"

__all__ = [
    "CLEANUP_JOB_ID",
    "AgentSession",
    "AgentSessionSettings",
    "AgentSessionsError",
    "ConfigurationError",
    "ConversationExport",
    "CorruptDatabaseError",
    "EncryptionKeyError",
    "EventLoopMismatchError",
    "HealthReport",
    "InvalidArgumentError",
    "InvalidIdentifierError",
    "InvalidItemError",
    "Keyring",
    "PostgresSession",
    "SchedulerError",
    "SearchHit",
    "SearchUnavailableError",
    "SessionClosedError",
    "SessionManager",
    "SessionNotFoundError",
    "SessionPage",
    "SessionStats",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "SweepRecord",
    "TurnLockTimeoutError",
    "__version__",
    "close_server_pools",
    "generate_key",
    "get_agent_session",
    "get_session_id",
    "get_settings",
    "start_cleanup_scheduler",
]


# Loaded on first use: the session module imports the Agents SDK (about 2 s) and the
# scheduler imports APScheduler, neither needed by the CLI's database commands or the manager.
_LAZY = {
    "AgentSession": "session",
    "get_agent_session": "session",
    "PostgresSession": "session",
    "CLEANUP_JOB_ID": "scheduler",
    "start_cleanup_scheduler": "scheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
