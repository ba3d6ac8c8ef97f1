"""Quickstart: an agent that remembers, across turns and across a restart.

Run it with ``python examples/quickstart.py``. With ``OPENAI_API_KEY`` set it talks to the
real model; without it, it runs offline on the SDK's ``ScriptedModel`` (canned replies, a
real tool call) so every step of the session is still real: the SQLite file, the history
the model is given, pruning and stats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

OFFLINE = not os.environ.get("OPENAI_API_KEY")
if OFFLINE:
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import Agent, Model, Runner, function_tool  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from agent_sessions import (  # noqa: E402
    AgentSessionSettings,
    SessionManager,
    get_agent_session,
)

DB_PATH = Path(__file__).resolve().parent.parent / "data" / "quickstart.db"
SETTINGS = AgentSessionSettings(db_path=DB_PATH, max_messages=8)
USER, CONVERSATION = "ada", "trip-planning"


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


async def turn(agent: Agent, scripted: ScriptedModel | None, text: str) -> None:
    """Run one turn and show what the model was given."""
    with get_agent_session(USER, CONVERSATION, settings=SETTINGS) as session:
        before = len(await session.get_items())
        calls_before = len(scripted.calls) if scripted else 0
        result = await Runner.run(agent, text, session=session)
        after = len(await session.get_items())
    print(f"  user: {text}")
    print(f"  agent: {result.final_output}")
    given = ""
    if scripted is not None:
        given = f"; the model was given {len(scripted.calls[calls_before].input)} items"
    print(f"  (history: {before} items before this turn, {after} after{given})")


async def first_process() -> None:
    """Two turns, then a restart, then enough turns to see pruning."""
    mode = "offline, ScriptedModel" if OFFLINE else "the real OpenAI API"
    print(f"agent_sessions quickstart ({mode}); database: {DB_PATH}")
    for leftover in DB_PATH.parent.glob(f"{DB_PATH.name}*"):
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
    await turn(agent, scripted, "What's my name, and which city did I ask about?")

    print("\n2. A restart: a new process opens the same session and carries on.")
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--second-process")
    if await child.wait() != 0:
        raise SystemExit(f"the second process failed with exit code {child.returncode}")

    print(f"\n3. Pruning: max_messages={SETTINGS.max_messages}; old turns are cut whole.")
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


async def second_process() -> None:
    """Runs in a fresh interpreter: everything it knows comes from the database."""
    agent, scripted = build_agent(
        [[assistant_message("Welcome back, Ada! Still thinking about Lisbon?")]]
    )
    print(f"  (process {os.getpid()})")
    await turn(agent, scripted, "I'm back. Do you remember me?")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--second-process", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    asyncio.run(second_process() if arguments.second_process else first_process())
