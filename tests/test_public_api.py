from __future__ import annotations

import subprocess
import sys
import types

import agent_sessions
from agent_sessions import errors


def test_all_is_exact_and_sorted() -> None:
    public = {
        name
        for name, value in vars(agent_sessions).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    lazy = set(agent_sessions._LAZY)  # loaded on first use (see __init__)
    assert set(agent_sessions.__all__) == public | lazy | {"__version__"}
    assert len(agent_sessions.__all__) == len(set(agent_sessions.__all__))  # ruff keeps order
    for name in agent_sessions.__all__:
        assert getattr(agent_sessions, name) is not None


def test_every_error_shares_one_base() -> None:
    classes = [
        obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, Exception)
    ]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, agent_sessions.AgentSessionsError), cls
    assert issubclass(agent_sessions.InvalidIdentifierError, ValueError)
    assert issubclass(agent_sessions.SessionNotFoundError, LookupError)
    assert issubclass(agent_sessions.SessionClosedError, RuntimeError)


def test_importing_the_package_does_not_import_the_sdk() -> None:
    code = (
        "import sys, agent_sessions\n"
        "from agent_sessions.cli import main\n"
        "assert 'agents' not in sys.modules, 'agents imported eagerly'\n"
        "agent_sessions.AgentSession\n"
        "assert 'agents' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("agent_sessions").joinpath("py.typed").is_file()
