"""Quickstart: an agent that remembers, across turns and across a restart.

Run it with ``python examples/quickstart.py`` (``--db PATH`` to write elsewhere than
``data/quickstart.db``). With ``OPENAI_API_KEY`` set it talks to the real model; without it,
it runs offline on the SDK's ``ScriptedModel`` (canned replies, a real tool call) so every
step of the session is still real: the SQLite file, the history the model is given, pruning
and stats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

OFFLINE = not os.environ.get("OPENAI_API_KEY")
if OFFLINE:
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import Agent, Model, Runner, function_tool  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from agent_sessions import (  # noqa: E402
    AgentSessionSettings,
    SessionManager,
    get_agent_session,
    get_session_id,
)

DEFAULT_DB_PATH = Path(__file__).resolve().parent.parent / "data" / "quickstart.db"
MAX_MESSAGES = 8
USER, CONVERSATION = "ada", "trip-planning"
USER_SESSION_ID = get_session_id(USER, CONVERSATION)  # 'user_ada_conv_trip-planning'
SETTINGS = AgentSessionSettings(db_path=DEFAULT_DB_PATH, max_messages=MAX_MESSAGES)


@function_tool
def get_weather(city: str) -> str:
    """Return today's weather for a city."""
    return f"Sunny and 21 °C in {city}."


def build_agent(script: list[list[object]]) -> tuple[Agent, ScriptedModel | None]:
    """The agent; offline, its model replays ``script`` (one entry per model call)."""
    model: Model | None = None
    scripted = None
    if OFFLINE:
        scripted = ScriptedModel()
        for step in script:
            scripted.enqueue(step)  # type: ignore[arg-type]
        model = scripted
    agent = Agent(
        name="Travel assistant",
        instructions="You are a concise travel assistant. Use tools for the weather.",
        tools=[get_weather],
        **({"model": model} if model is not None else {}),
    )
    return agent, scripted


def describe(item: Any) -> str:
    """One line for an item: its role or type, and its text or tool call."""
    if not isinstance(item, dict):
        return repr(item)[:70]
    if item.get("type") == "function_call":
        return f"function_call {item.get('name')}({item.get('arguments')})"
    if item.get("type") == "function_call_output":
        return f"function_call_output {str(item.get('output'))[:50]!r}"
    content = item.get("content")
    if isinstance(content, list):
        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return f"{item.get('role', item.get('type'))}: {str(content)[:60]!r}"


def user_texts(items: list[Any]) -> list[str]:
    return [str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user"]


async def turn(
    agent: Agent, scripted: ScriptedModel | None, text: str, *, show_input: bool = False
) -> None:
    """Run one turn and show what the model was given, and what pruning removed."""
    with get_agent_session(USER, CONVERSATION, settings=SETTINGS) as session:
        stored_before = await session.get_items()
        calls_before = len(scripted.calls) if scripted else 0
        result = await Runner.run(agent, text, session=session)
        stored_after = await session.get_items()
    before, after = len(stored_before), len(stored_after)
    print(f"  user: {text}")
    print(f"  agent: {result.final_output}")
    given = ""
    if scripted is not None:
        model_input = scripted.calls[calls_before].input
        given = f"; the model was given {len(model_input)} items"
        if show_input and isinstance(model_input, list):
            print("  the model received, oldest first:")
            for item in model_input:
                print(f"    - {describe(item)}")
    print(f"  (history: {before} items before this turn, {after} after{given})")
    removed = [t for t in user_texts(stored_before) if t not in user_texts(stored_after)]
    if removed:
        turns = ", ".join(repr(gone) for gone in removed)
        print(f"  pruning removed the oldest turn(s), each whole: {turns}")


async def first_process() -> None:
    """Two turns, then a restart, then enough turns to see pruning."""
    mode = "offline, ScriptedModel" if OFFLINE else "the real OpenAI API"
    db_path = SETTINGS.db_path
    print(f"agent_sessions quickstart ({mode}); database: {db_path}")
    for leftover in db_path.parent.glob(f"{db_path.name}*"):
        leftover.unlink()

    print("\n1. Two turns in this process: the second one remembers the first.")
    agent, scripted = build_agent(
        [
            [function_call("get_weather", {"city": "Lisbon"}, call_id="call-1")],
            [assistant_message("Hi Ada! Lisbon is sunny and 21 °C today.")],
            [assistant_message("You are Ada, and you asked about Lisbon.")],
        ]
    )
    await turn(agent, scripted, "Hi, I'm Ada. What's the weather in Lisbon?")
    await turn(agent, scripted, "What's my name, and which city did I ask about?", show_input=True)

    print("\n2. A restart: a new process opens the same session and carries on.")
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--second-process", "--db", str(db_path)
    )
    if await child.wait() != 0:
        raise SystemExit(f"the second process failed with exit code {child.returncode}")

    print(f"\n3. Pruning: max_messages={MAX_MESSAGES}; old turns are cut whole.")
    cities = ["Porto", "Madrid", "Rome", "Oslo"]
    agent, scripted = build_agent(
        [
            step
            for index, city in enumerate(cities)
            for step in (
                [function_call("get_weather", {"city": city}, call_id=f"call-p{index}")],
                [assistant_message(f"{city}: sunny and 21 °C.")],
            )
        ]
    )
    for city in cities:
        await turn(agent, scripted, f"And in {city}?")

    print("\n4. Stats from the SessionManager.")
    async with SessionManager(settings=SETTINGS) as manager:
        for stats in await manager.list_sessions(USER):
            print(
                f"  {stats.session_id}: {stats.message_count} items, "
                f"created {stats.created_at:%H:%M:%S}, last active {stats.last_activity:%H:%M:%S}"
            )
        print(f"  active sessions: {await manager.get_active_session_count()}")

    # The CLI through this very interpreter: `agent-sessions` itself is only on PATH in an
    # activated virtual environment.
    cli = f"{shlex.quote(sys.executable)} -m agent_sessions --db {shlex.quote(str(db_path))}"
    print("\n5. Inspect the file with the CLI (agent-sessions, or python -m agent_sessions). It")
    print("   reads the default database unless given --db, so a plain `agent-sessions stats`")
    print("   does not look at this one:")
    print(f"  {cli} stats")
    print(f"  {cli} show {USER_SESSION_ID}")


async def second_process() -> None:
    """Runs in a fresh interpreter: everything it knows comes from the database."""
    agent, scripted = build_agent(
        [[assistant_message("Welcome back, Ada! Still thinking about Lisbon?")]]
    )
    print(f"  (process {os.getpid()})")
    await turn(agent, scripted, "I'm back. Do you remember me?")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=DEFAULT_DB_PATH, help="SQLite file to write")
    parser.add_argument("--second-process", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    SETTINGS = AgentSessionSettings(db_path=arguments.db.resolve(), max_messages=MAX_MESSAGES)
    asyncio.run(second_process() if arguments.second_process else first_process())
