"""End to end under the SDK's ``Runner``, offline with ``ScriptedModel``, on every backend.

After each run the stored history must be exactly the ideal pruning of everything the runs
produced (whole turns, newest last, at most ``max_messages`` unless the newest turn is
longer), and every model call must get valid input: the stored history plus the new
message, starting at a user message, with no tool output before its call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from agents import Agent, Runner, RunResult, RunResultStreaming, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call

from agent_sessions import SessionManager, get_agent_session

Item = dict[str, Any]


@function_tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value:{key}"


@function_tool(needs_approval=True)
def transfer(amount: int) -> str:
    """Move money; a person approves every call."""
    return f"moved:{amount}"


def as_dict(item: Any) -> Item:
    if isinstance(item, dict):
        return item
    dumped: Item = item.model_dump(exclude_unset=True)
    return dumped


def check_model_input(items: Sequence[Any], where: str) -> None:
    """One model call's input starts at a user message and pairs every output with its call."""
    items = [as_dict(item) for item in items]
    assert items, f"{where}: empty model input"
    assert items[0].get("role") == "user", f"{where}: starts with {items[0]}"
    called: set[str] = set()
    for position, item in enumerate(items):
        if item.get("type") == "function_call":
            assert item["call_id"] not in called, f"{where}: call {item['call_id']} twice"
            called.add(item["call_id"])
        elif item.get("type") == "function_call_output":
            assert item["call_id"] in called, f"{where}: orphaned output at {position}"


def check_all_model_calls(model: ScriptedModel, first: int, where: str) -> None:
    calls = model.calls
    assert len(calls) > first, f"{where}: no model call"
    for index in range(first, len(calls)):
        check_model_input(calls[index].input, f"{where}, model call {index}")


def bounded(items: Sequence[Item], max_messages: int) -> list[Item]:
    """The ideal pruning: the longest suffix of whole turns that fits, else the newest turn."""
    starts = [index for index, item in enumerate(items) if item.get("role") == "user"]
    fitting = [index for index in starts if len(items) - index <= max_messages]
    return list(items[min(fitting) if fitting else starts[-1] :])


def turn_items(result: RunResult | RunResultStreaming, text: str) -> list[Item]:
    generated = [
        as_dict(item.to_input_item())
        for item in result.new_items
        if item.type != "tool_approval_item"
    ]
    return [{"role": "user", "content": text}, *generated]


def script_turn(model: ScriptedModel, turn: int, shape: str) -> None:
    """Enqueue one turn: no tool, one call, two parallel calls, or two calls in sequence."""
    steps = {"none": [], "one": [["a"]], "parallel": [["a", "b"]], "sequential": [["a"], ["b"]]}
    for step, keys in enumerate(steps[shape]):
        model.enqueue(
            [
                function_call("lookup", {"key": f"t{turn}{key}"}, call_id=f"t{turn}-{step}-{key}")
                for key in keys
            ]
        )
    model.enqueue([assistant_message(f"answer {turn}", item_id=f"msg-{turn}")])


async def run(
    agent: Agent[Any], text: Any, session: Any, *, streamed: bool
) -> RunResult | RunResultStreaming:
    if not streamed:
        return await Runner.run(agent, text, session=session)
    result = Runner.run_streamed(agent, text, session=session)
    async for _ in result.stream_events():
        pass
    return result


# --- two turns with a tool ------------------------------------------------------------------


async def test_the_second_turn_sees_the_first_with_its_tool_call(target: str) -> None:
    model = ScriptedModel()
    model.enqueue([function_call("lookup", {"key": "Oslo"}, call_id="call-1")])
    model.enqueue([assistant_message("Sunny in Oslo.", item_id="msg-1")])
    model.enqueue([assistant_message("You asked about Oslo.", item_id="msg-2")])
    agent = Agent(name="assistant", model=model, tools=[lookup])

    with get_agent_session("ada", "trip", db_path=target) as session:
        first = await Runner.run(agent, "Weather in Oslo?", session=session)
    assert first.final_output == "Sunny in Oslo."
    with get_agent_session("ada", "trip", db_path=target) as session:  # a later request
        second = await Runner.run(agent, "Which city?", session=session)
        stored = await session.get_items()
    assert second.final_output == "You asked about Oslo."
    model.assert_complete()

    seen = [as_dict(item) for item in model.calls[2].input]
    assert seen[0] == {"role": "user", "content": "Weather in Oslo?"}
    assert [item.get("type") for item in seen[1:3]] == ["function_call", "function_call_output"]
    assert seen[2]["output"] == "value:Oslo"
    assert seen[-1] == {"role": "user", "content": "Which city?"}
    assert stored == [*turn_items(first, "Weather in Oslo?"), *turn_items(second, "Which city?")]
    assert seen == stored[:-1], "the second turn's model got the stored history, then the question"
    async with SessionManager(target, max_messages=10, retention_days=7) as manager:
        stats = await manager.get_session_stats(session.session_id)
    assert (stats.user_id, stats.conversation_id, stats.message_count) == ("ada", "trip", 6)


# --- many turns, plain and streamed, with pruning cutting all the time ----------------------


async def test_many_turns_with_pruning_never_break_the_model_input(target: str) -> None:
    rng = random.Random(7)
    max_messages = 7
    produced: list[Item] = []
    for turn in range(24):
        shape = rng.choice(["none", "one", "parallel", "sequential"])
        streamed = turn % 2 == 1
        where = f"turn {turn} ({shape}, {'streamed' if streamed else 'run'})"
        model = ScriptedModel()
        agent = Agent(name="assistant", model=model, tools=[lookup])
        script_turn(model, turn, shape)
        # A session object per turn, as a web app opens one per request.
        with get_agent_session("u", "c", db_path=target, max_messages=max_messages) as session:
            before = await session.get_items()
            result = await run(agent, f"question {turn}", session, streamed=streamed)
            stored = await session.get_items()
        assert result.final_output == f"answer {turn}", where
        model.assert_complete()
        first_input = [as_dict(item) for item in model.calls[0].input]
        assert first_input == [*before, {"role": "user", "content": f"question {turn}"}], where
        check_all_model_calls(model, 0, where)
        produced += turn_items(result, f"question {turn}")
        assert stored == bounded(produced, max_messages), where
        assert len(stored) <= max_messages or stored == turn_items(result, f"question {turn}")


# --- tool approvals: interrupted, stored, resumed -----------------------------------------


async def test_tool_approvals_interrupt_and_resume(target: str) -> None:
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup, transfer])
    produced: list[Item] = []
    max_messages = 5
    with get_agent_session("u", "c", db_path=target, max_messages=max_messages) as session:
        for turn, decision in enumerate(["approve", "reject", "approve"]):
            text = f"pay {turn}"
            model.enqueue([function_call("transfer", {"amount": turn}, call_id=f"pay-{turn}")])
            first_call = len(model.calls)
            before = await session.get_items()
            parked = await Runner.run(agent, text, session=session)
            assert [as_dict(a.raw_item)["call_id"] for a in parked.interruptions] == [f"pay-{turn}"]
            assert [as_dict(i) for i in model.calls[first_call].input] == [
                *before,
                {"role": "user", "content": text},
            ]
            stored = await session.get_items()
            assert stored[-2:] == [
                {"role": "user", "content": text},
                as_dict(parked.new_items[0].to_input_item()),
            ], "the pending call is stored with its turn"
            assert stored[-1]["type"] == "function_call"

            state = parked.to_state()
            if decision == "approve":
                state.approve(parked.interruptions[0])
            else:
                state.reject(parked.interruptions[0], rejection_message=f"no:{turn}")
            model.enqueue([assistant_message(f"done {turn}", item_id=f"msg-{turn}")])
            resumed_from = len(model.calls)
            resumed = await Runner.run(agent, state, session=session)
            assert resumed.final_output == f"done {turn}"
            check_all_model_calls(model, resumed_from, f"turn {turn} resumed")

            stored = await session.get_items()
            turn_stored = stored[stored.index({"role": "user", "content": text}) :]
            kinds = [item.get("type") for item in turn_stored[1:]]
            assert kinds == ["function_call", "function_call_output", "message"], turn_stored
            wanted = f"moved:{turn}" if decision == "approve" else f"no:{turn}"
            assert turn_stored[2]["output"] == wanted
            produced += turn_stored
            assert stored == bounded(produced, max_messages)
            check_model_input(stored, f"turn {turn} at rest")
    model.assert_complete()


# --- pop_item to undo a turn --------------------------------------------------------------


async def test_pop_item_undoes_the_last_turn(target: str) -> None:
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup])
    with get_agent_session("u", "c", db_path=target, max_messages=10) as session:
        produced: list[Item] = []
        for turn, shape in enumerate(["one", "none", "parallel"]):
            script_turn(model, turn, shape)
            result = await Runner.run(agent, f"question {turn}", session=session)
            last_turn = turn_items(result, f"question {turn}")
            produced += last_turn
        stored = await session.get_items()
        assert stored == bounded(produced, 10)
        kept_before = stored[: -len(last_turn)]
        assert kept_before, "set-up: something must remain after the undo"

        popped: list[Item] = []
        for _ in range(len(stored)):  # bounded: a pop that deletes nothing must not spin
            item = await session.pop_item()
            assert item is not None, f"ran out after {len(popped)} items"
            popped.append(dict(item))
            if item.get("role") == "user":
                break
        assert popped[::-1] == last_turn
        assert await session.get_items() == kept_before

        script_turn(model, 9, "one")
        first_call = len(model.calls)
        await Runner.run(agent, "question 9", session=session)
        assert [as_dict(i) for i in model.calls[first_call].input] == [
            *kept_before,
            {"role": "user", "content": "question 9"},
        ], "the run after the undo saw exactly what remained"
        check_all_model_calls(model, first_call, "after undo")
    model.assert_complete()
