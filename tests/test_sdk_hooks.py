"""What AgentSession relies on in SQLiteSession, named in one place.

AgentSession subclasses SQLiteSession but does not run its ``__init__`` (a connection and a
schema check per object) and overrides everything that touches the database. If an SDK
upgrade adds a method or changes how the Runner reaches a session, this file fails first.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from agents import SQLiteSession
from agents.memory import SessionSettings

from agent_sessions import AgentSession, AgentSessionsError

# SQLiteSession 0.24 methods AgentSession does not override, and why that is safe.
NOT_OVERRIDDEN = {
    "_acquire_file_lock": "classmethod on SQLiteSession's lock registry; never called by us",
    "_release_file_lock": "classmethod on SQLiteSession's lock registry; never called by us",
    "_close_connections_from_exited_threads": "only reached through _get_connection",
    "_invalidate_connection": "only reached through _write_connection",
    "_configure_connection": "staticmethod; only reached from SQLiteSession.__init__",
    "_init_db_for_connection": "only reached from SQLiteSession.__init__",
    "_create_schema_for_connection": "only reached from SQLiteSession.__init__",
    "_insert_items": "only reached through _write_connection",
    "_pop_item_with_validation": "only reached through _write_connection",
}


def _methods(cls: type) -> set[str]:
    return {
        name
        for name, value in vars(cls).items()
        if callable(value) or isinstance(value, staticmethod | classmethod)
        if not (name.startswith("__") and name.endswith("__"))
    }


def _overridden(cls: type) -> set[str]:
    """Methods ``cls`` defines itself or takes from a class of ours ahead of SQLiteSession."""
    ours = [klass for klass in cls.__mro__[: cls.__mro__.index(SQLiteSession)]]
    return set().union(*(_methods(klass) for klass in ours))


def test_every_sqlite_session_method_is_overridden_or_known_to_be_unreachable() -> None:
    unknown = _methods(SQLiteSession) - _overridden(AgentSession) - set(NOT_OVERRIDDEN)
    assert not unknown, f"SQLiteSession gained methods AgentSession does not handle: {unknown}"
    stale = set(NOT_OVERRIDDEN) - _methods(SQLiteSession)
    assert not stale, f"SQLiteSession no longer has {stale}: update NOT_OVERRIDDEN"


def test_the_session_protocol_and_its_optional_hooks() -> None:
    for name in ("get_items", "add_items", "pop_item", "clear_session", "close"):
        assert name in _overridden(AgentSession), f"AgentSession must implement {name}"
    # The Runner looks these up with getattr and, if present, routes writes through them.
    for hook in ("_get_items_with_generation", "_add_items_with_generation"):
        assert not hasattr(SQLiteSession, hook) or hook in _overridden(AgentSession), hook
    # The Runner passes a RunContextWrapper only if every method accepts ``wrapper``; ours do
    # not, so it calls them with the plain protocol signatures.
    assert "wrapper" not in inspect.signature(AgentSession.add_items).parameters


def test_documented_attributes_are_set_without_sqlite_session_init(tmp_path: Path) -> None:
    with AgentSession(
        "u", "c", db_path=tmp_path / "x.db", session_settings=SessionSettings(limit=3)
    ) as session:
        assert session.session_id == "user_u_conv_c"
        assert session.db_path == str(tmp_path / "x.db")
        assert session.session_settings == SessionSettings(limit=3)
        assert (session.sessions_table, session.messages_table) == (
            "agent_sessions",
            "agent_messages",
        )
        with pytest.raises(AgentSessionsError, match="thread connections"):
            session._get_connection()


async def test_compaction_snapshot_goes_through_the_public_methods(tmp_path: Path) -> None:
    with AgentSession("u", "c", db_path=tmp_path / "x.db") as session:
        assert await session._get_compaction_snapshot(10) is None
