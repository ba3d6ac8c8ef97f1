"""End to end: ``AgentSession`` under the SDK's ``Runner``, with pruning on, offline.

Every run goes through ``Runner.run`` / ``Runner.run_streamed`` with ``ScriptedModel`` and a
real function tool, on a SQLite file in ``tmp_path``, and a small ``max_messages`` so pruning
cuts all the time. After each run the stored history is checked three ways:

* structurally (``check_history``): starts with a user message, every tool output follows its
  call, no call is left without an output unless its approval is pending, nothing twice;
* exactly (``bounded``): it must equal the *ideal* pruning of everything the runs produced,
  i.e. the longest run of whole turns, newest last, of at most ``max_messages`` items, or the
  newest turn alone if that is longer. Nothing the Runner wrote may be lost or reordered;
* through the model: the next run's first model call must receive exactly that history plus
  the new user message, and no model call may receive an orphaned tool output.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    Runner,
    RunResult,
    RunResultStreaming,
    RunState,
    function_tool,
)
from agents.memory import SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call

from agent_sessions import AgentSession

REPO_ROOT = Path(__file__).resolve().parents[1]
USER = "user-e2e"
CONVERSATION = "conv-e2e"

Item = dict[str, Any]
Projection = tuple[Any, ...]


# --- tools ------------------------------------------------------------------------------------


@function_tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value:{key}"


@function_tool(needs_approval=True)
def transfer(amount: int) -> str:
    """Move money; a person must approve every call."""
    return f"moved:{amount}"


def lookup_output(key: str) -> str:
    return f"value:{key}"


# --- checks -----------------------------------------------------------------------------------


def as_dict(item: Any) -> Item:
    if isinstance(item, dict):
        return item
    dumped: Item = item.model_dump(exclude_unset=True)
    return dumped


def project(item: Any) -> Projection:
    """A compact, comparable view of one item: what it is and what it says."""
    item = as_dict(item)
    if item.get("role") == "user":
        return ("user", item.get("content"))
    kind = item.get("type")
    if kind == "function_call":
        return ("call", item["call_id"], item["name"])
    if kind == "function_call_output":
        return ("output", item["call_id"], item["output"])
    if kind == "message" and item.get("role") == "assistant":
        return ("message", item["content"][0]["text"])
    return ("other", kind)


def check_history(
    items: Sequence[Any], *, pending: frozenset[str] = frozenset(), where: str = ""
) -> None:
    """Assert ``items`` is valid model input at rest (or with ``pending`` approvals open)."""
    items = [as_dict(item) for item in items]
    assert items, f"{where}: history is empty"
    assert items[0].get("role") == "user", f"{where}: starts with {project(items[0])}"
    calls: Counter[str] = Counter()
    outputs: Counter[str] = Counter()
    for position, item in enumerate(items):
        kind = item.get("type")
        if kind == "function_call":
            calls[item["call_id"]] += 1
        elif kind == "function_call_output":
            call_id = item["call_id"]
            assert calls[call_id], f"{where}: output {call_id} at {position} has no call before it"
            outputs[call_id] += 1
    twice = sorted(
        {call_id for counter in (calls, outputs) for call_id, n in counter.items() if n > 1}
    )
    assert not twice, f"{where}: stored more than once: {twice}"
    unanswered = frozenset(calls) - frozenset(outputs)
    assert unanswered == pending, (
        f"{where}: calls without output {sorted(unanswered)}, expected {sorted(pending)}"
    )


def check_model_input(items: Any, *, where: str) -> None:
    """Assert one model call's input starts with a user message and has no orphaned outputs."""
    assert isinstance(items, list), f"{where}: model input is {type(items).__name__}"
    items = [as_dict(item) for item in items]
    assert items, f"{where}: empty model input"
    assert items[0].get("role") == "user", f"{where}: model input starts with {project(items[0])}"
    seen: set[str] = set()
    answered: set[str] = set()
    for position, item in enumerate(items):
        call_id = item.get("call_id")
        if item.get("type") == "function_call":
            assert call_id not in seen, f"{where}: call {call_id} sent twice"
            seen.add(call_id)
        elif item.get("type") == "function_call_output":
            assert call_id in seen, f"{where}: orphaned output {call_id} at {position}"
            assert call_id not in answered, f"{where}: output {call_id} sent twice"
            answered.add(call_id)


def bounded(items: Sequence[Item], max_messages: int) -> list[Item]:
    """The ideal pruning: longest suffix of at most ``max_messages`` from a user message.

    If even the newest user message starts a longer suffix, that turn is kept whole.
    """
    starts = [index for index, item in enumerate(items) if item.get("role") == "user"]
    assert starts, "test bug: a transcript without user messages"
    fitting = [index for index in starts if len(items) - index <= max_messages]
    return list(items[min(fitting) if fitting else starts[-1] :])


def turn_items(result: RunResult | RunResultStreaming, user_text: str) -> list[Item]:
    """The items a run produced for its turn: the user message, then everything generated."""
    generated = [
        as_dict(item.to_input_item())
        for item in result.new_items
        if item.type != "tool_approval_item"
    ]
    return [{"role": "user", "content": user_text}, *generated]


def approval_call_ids(result: RunResult | RunResultStreaming) -> list[str]:
    return sorted(as_dict(approval.raw_item)["call_id"] for approval in result.interruptions)


def check_new_model_calls(model: ScriptedModel, first: int, *, where: str) -> None:
    calls = model.calls
    assert len(calls) > first, f"{where}: the run made no model call"
    for index in range(first, len(calls)):
        check_model_input(calls[index].input, where=f"{where}, model call {index}")


# --- scripted turns ---------------------------------------------------------------------------

SHAPES = ("none", "one", "parallel", "sequential", "parallel-then-one")


def script_turn(model: ScriptedModel, turn: int, shape: str) -> list[Projection]:
    """Enqueue one turn's model steps; return the projection of what the turn must store."""
    user_text = f"question {turn}"
    expected: list[Projection] = [("user", user_text)]
    if shape == "none":
        steps: list[list[str]] = []
    elif shape == "one":
        steps = [["a"]]
    elif shape == "parallel":
        steps = [["a", "b"]]
    elif shape == "sequential":
        steps = [["a"], ["b"]]
    elif shape == "parallel-then-one":
        steps = [["a", "b"], ["c"]]
    elif shape.startswith("parallel-"):
        steps = [[f"k{n}" for n in range(int(shape.split("-")[1]))]]
    elif shape.startswith("sequential-"):
        steps = [[f"k{n}"] for n in range(int(shape.split("-")[1]))]
    else:
        raise AssertionError(f"unknown shape {shape}")
    for step, keys in enumerate(steps):
        call_ids = [f"t{turn}-s{step}-{key}" for key in keys]
        model.enqueue(
            [function_call("lookup", {"key": call_id}, call_id=call_id) for call_id in call_ids]
        )
        expected += [("call", call_id, "lookup") for call_id in call_ids]
        expected += [("output", call_id, lookup_output(call_id)) for call_id in call_ids]
    reply = f"answer {turn}"
    model.enqueue([assistant_message(reply, item_id=f"msg-{turn}")])
    expected.append(("message", reply))
    return expected


async def run_turn(
    agent: Agent[Any], user_text: str, session: AgentSession, *, streamed: bool
) -> RunResult | RunResultStreaming:
    if not streamed:
        return await Runner.run(agent, user_text, session=session)
    result = Runner.run_streamed(agent, user_text, session=session)
    async for _ in result.stream_events():
        pass
    return result


async def drive_turns(
    db_path: Path,
    *,
    turns: int,
    max_messages: int,
    streamed: bool,
    seed: int,
    shapes: Sequence[str] = SHAPES,
) -> None:
    """Run ``turns`` scripted turns and check every invariant after each one."""
    rng = random.Random(seed)
    produced: list[Item] = []  # everything every run produced, in order
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as session:
        for turn in range(turns):
            where = f"turn {turn}"
            shape = rng.choice(shapes)
            # A model per turn: ScriptedModel.calls copies every recorded call on each read.
            model = ScriptedModel()
            agent = Agent(name="assistant", model=model, tools=[lookup])
            expected_turn = script_turn(model, turn, shape)
            before = await session.get_items()

            result = await run_turn(agent, f"question {turn}", session, streamed=streamed)

            assert result.final_output == f"answer {turn}", f"{where} ({shape})"
            model.assert_complete()
            # The first model call saw exactly the stored history plus the new message.
            first_input = [as_dict(item) for item in model.calls[0].input]
            assert first_input == [*before, {"role": "user", "content": f"question {turn}"}], (
                f"{where}: first model input {[project(i) for i in first_input]} is not "
                f"stored history {[project(i) for i in before]} + the new message"
            )
            check_new_model_calls(model, 0, where=where)

            run_items = turn_items(result, f"question {turn}")
            assert [project(item) for item in run_items] == expected_turn, (
                f"{where} ({shape}): the run produced {[project(i) for i in run_items]}"
            )
            produced += run_items
            stored = await session.get_items()
            check_history(stored, where=where)
            assert len(stored) <= max_messages or stored == run_items, (
                f"{where} ({shape}): {len(stored)} items stored with max_messages="
                f"{max_messages}, and they are not just the current turn ({len(run_items)})"
            )
            assert stored[-len(run_items) :] == run_items, f"{where}: the turn was not kept whole"
            ideal = bounded(produced, max_messages)
            assert stored == ideal, (
                f"{where} ({shape}): stored {[project(i) for i in stored]}, expected "
                f"{[project(i) for i in ideal]}"
            )


# --- 1 and 3: hundreds of turns, plain and streamed -------------------------------------------


async def test_three_hundred_turns_with_tool_calls(db_path: Path) -> None:
    await drive_turns(db_path, turns=300, max_messages=7, streamed=False, seed=1)


@pytest.mark.parametrize("max_messages", [5, 12])
async def test_turns_under_other_bounds(db_path: Path, max_messages: int) -> None:
    await drive_turns(db_path, turns=150, max_messages=max_messages, streamed=False, seed=2)


async def test_streamed_turns_with_tool_calls(db_path: Path) -> None:
    await drive_turns(db_path, turns=300, max_messages=7, streamed=True, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "streamed"])
async def test_two_thousand_turns(db_path: Path, streamed: bool) -> None:
    await drive_turns(db_path, turns=2000, max_messages=9, streamed=streamed, seed=4)


# --- 2: a turn longer than max_messages ---------------------------------------------------------


@pytest.mark.parametrize("shape", ["parallel-8", "sequential-8"])
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "streamed"])
async def test_turn_longer_than_max_messages_is_kept_whole(
    db_path: Path, shape: str, streamed: bool
) -> None:
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup])
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=4) as session:
        expected_small = script_turn(model, 0, "none")
        await run_turn(agent, "question 0", session, streamed=streamed)
        assert [project(i) for i in await session.get_items()] == expected_small

        expected_big = script_turn(model, 1, shape)
        first_call = len(model.calls)
        result = await run_turn(agent, "question 1", session, streamed=streamed)
        assert result.final_output == "answer 1"
        stored = await session.get_items()
        assert len(expected_big) == 18
        assert [project(i) for i in stored] == expected_big, (
            f"a {len(expected_big)}-item turn with max_messages=4 was not kept whole: "
            f"{len(stored)} items stored: {[project(i) for i in stored]}"
        )
        check_history(stored, where=shape)
        check_new_model_calls(model, first_call, where=shape)
        # Every model call of the long turn saw the turn so far, from its user message.
        last_input = [project(i) for i in model.calls[-1].input]
        assert last_input[-(len(expected_big) - 1) :] == expected_big[:-1]

        expected_next = script_turn(model, 2, "one")
        first_call = len(model.calls)
        await run_turn(agent, "question 2", session, streamed=streamed)
        assert [project(i) for i in model.calls[first_call].input] == [
            *expected_big,
            ("user", "question 2"),
        ], "the second turn's model did not receive the whole long turn"
        stored = await session.get_items()
        assert [project(i) for i in stored] == expected_next, (
            f"the next turn did not prune the long one: {len(stored)} items stored"
        )
        check_history(stored, where="after the long turn")
    model.assert_complete()


# --- 4: approvals, interrupted and resumed, with pruning cutting meanwhile ----------------------

APPROVAL_SHAPES = ("single", "with-lookup", "after-lookup", "two", "again", "plain")


def script_approval_turn(model: ScriptedModel, turn: int, shape: str) -> list[list[str]]:
    """Enqueue a turn's first steps; return the call ids of each expected interruption."""

    def transfer_call(name: str) -> Any:
        return function_call("transfer", {"amount": turn}, call_id=f"t{turn}-{name}")

    def lookup_call(name: str) -> Any:
        return function_call("lookup", {"key": name}, call_id=f"t{turn}-{name}")

    if shape == "plain":
        return []
    if shape == "single":
        model.enqueue([transfer_call("x")])
        return [[f"t{turn}-x"]]
    if shape == "with-lookup":
        model.enqueue([lookup_call("l"), transfer_call("x")])
        return [[f"t{turn}-x"]]
    if shape == "after-lookup":
        model.enqueue([lookup_call("l")])
        model.enqueue([transfer_call("x")])
        return [[f"t{turn}-x"]]
    if shape == "two":
        model.enqueue([transfer_call("x"), transfer_call("y")])
        return [[f"t{turn}-x", f"t{turn}-y"]]
    if shape == "again":
        model.enqueue([transfer_call("x")])
        return [[f"t{turn}-x"], [f"t{turn}-y"]]
    raise AssertionError(f"unknown shape {shape}")


class Resumer:
    """Resumes an interrupted run the ways an app can: ``mode`` is ``how-decision``.

    ``how``: ``state`` (``result.to_state()``, same session object), ``string`` (through
    ``to_string``/``RunState.from_string`` and a fresh session object, as a later web request
    would) or ``streamed`` (``to_state()`` and ``Runner.run_streamed`` for both runs).
    ``decision``: ``approve``, ``reject`` or ``mixed`` (every second call is rejected).
    """

    def __init__(self, mode: str, agent: Agent[Any], db_path: Path, max_messages: int) -> None:
        self.how, self.decision = mode.split("-")
        self.agent = agent
        self.db_path = db_path
        self.max_messages = max_messages
        self.decisions = 0

    async def start(self, text: str, session: AgentSession) -> RunResult | RunResultStreaming:
        return await run_turn(self.agent, text, session, streamed=self.how == "streamed")

    def decide(self, state: RunState[Any], interruptions: Sequence[Any]) -> frozenset[str]:
        """Approve or reject each pending call; return the ids of the rejected ones."""
        rejected = set()
        for approval in interruptions:
            call_id = approval.raw_item.call_id
            self.decisions += 1
            if self.decision == "reject" or (self.decision == "mixed" and self.decisions % 2):
                state.reject(approval, rejection_message=f"rejected:{call_id}")
                rejected.add(call_id)
            else:
                state.approve(approval)
        return frozenset(rejected)

    async def resume(
        self, result: RunResult | RunResultStreaming, session: AgentSession
    ) -> tuple[RunResult | RunResultStreaming, frozenset[str]]:
        if self.how == "string":
            text = result.to_state().to_string()
            state = await RunState.from_string(self.agent, text)
            rejected = self.decide(state, state.get_interruptions())
            with AgentSession(
                USER, CONVERSATION, db_path=self.db_path, max_messages=self.max_messages
            ) as fresh:
                return await Runner.run(self.agent, state, session=fresh), rejected
        state = result.to_state()
        rejected = self.decide(state, result.interruptions)
        if self.how == "streamed":
            streaming = Runner.run_streamed(self.agent, state, session=session)
            async for _ in streaming.stream_events():
                pass
            return streaming, rejected
        return await Runner.run(self.agent, state, session=session), rejected


@pytest.mark.parametrize(
    "mode", ["state-approve", "state-mixed", "string-approve", "string-reject", "streamed-mixed"]
)
async def test_approvals_interrupt_and_resume_while_pruning(db_path: Path, mode: str) -> None:
    max_messages = 5
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup, transfer])
    resumer = Resumer(mode, agent, db_path, max_messages)
    produced: list[Item] = []
    pruned_while_pending = 0
    shapes = [*APPROVAL_SHAPES, *APPROVAL_SHAPES[:-1]]  # 11 turns, 10 with approvals
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as session:
        for turn, shape in enumerate(shapes):
            where = f"turn {turn} ({shape}, {mode})"
            interruptions = script_approval_turn(model, turn, shape)
            if not interruptions:
                model.enqueue([assistant_message(f"answer {turn}", item_id=f"msg-{turn}")])
            before = await session.get_items()
            first_call = len(model.calls)
            result = await resumer.start(f"question {turn}", session)
            first_input = [as_dict(item) for item in model.calls[first_call].input]
            assert first_input == [*before, {"role": "user", "content": f"question {turn}"}], (
                f"{where}: first model input is not the stored history + the new message"
            )
            rejected: frozenset[str] = frozenset()
            for round_, call_ids in enumerate(interruptions):
                parked_on = approval_call_ids(result)
                assert parked_on == call_ids, f"{where}: round {round_} parked on {parked_on}"
                so_far = turn_items(result, f"question {turn}")
                stored = await session.get_items()
                check_history(stored, pending=frozenset(call_ids), where=f"{where}, parked")
                assert stored[-len(so_far) :] == so_far, (
                    f"{where}: the parked turn is not stored whole, pending call included: "
                    f"{[project(i) for i in stored]}"
                )
                ideal = bounded([*produced, *so_far], max_messages)
                assert stored == ideal, (
                    f"{where}, parked: stored {[project(i) for i in stored]}, expected "
                    f"{[project(i) for i in ideal]}"
                )
                if len(before) + len(so_far) > len(stored):
                    pruned_while_pending += 1
                # What comes after this round: another approval, or the answer.
                if round_ + 1 < len(interruptions):
                    model.enqueue(
                        [function_call("transfer", {"amount": turn}, call_id=f"t{turn}-y")]
                    )
                else:
                    model.enqueue([assistant_message(f"answer {turn}", item_id=f"msg-{turn}")])
                first_call = len(model.calls)
                result, newly_rejected = await resumer.resume(result, session)
                rejected |= newly_rejected
                check_new_model_calls(model, first_call, where=f"{where}, resumed")

            assert not result.interruptions, f"{where}: still interrupted"
            assert result.final_output == f"answer {turn}", where
            assert model.remaining_steps == 0, where
            run_items = turn_items(result, f"question {turn}")
            for item in run_items:
                if item.get("type") == "function_call_output":
                    call_id = item["call_id"]
                    wanted = (
                        f"rejected:{call_id}"
                        if call_id in rejected
                        else (f"moved:{turn}" if "-l" not in call_id else lookup_output("l"))
                    )
                    assert item["output"] == wanted, f"{where}: output of {call_id}"
            assert run_items[0] == {"role": "user", "content": f"question {turn}"}, where
            produced += run_items
            stored = await session.get_items()
            check_history(stored, where=where)
            ideal = bounded(produced, max_messages)
            assert stored == ideal, (
                f"{where}: stored {[project(i) for i in stored]}, expected "
                f"{[project(i) for i in ideal]}"
            )
    model.assert_complete()
    assert pruned_while_pending >= 5, f"pruning cut only {pruned_while_pending} times while parked"
    # The next run, on a fresh object, sees the valid, bounded history.
    model.enqueue([assistant_message("bye", item_id="msg-bye")])
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as session:
        before = await session.get_items()
        first_call = len(model.calls)
        await Runner.run(agent, "bye", session=session)
        assert [as_dict(i) for i in model.calls[first_call].input] == [
            *before,
            {"role": "user", "content": "bye"},
        ]
        check_history(await session.get_items(), where="after bye")


@pytest.mark.parametrize(
    "max_messages",
    [
        100,  # control: nothing is pruned, and the late approval leaves a valid history
        4,  # the parked call is pruned away before the approval: its output is not stored
        6,  # the call is still stored when the output arrives; later cuts must keep them
        7,  # together (found by review: a user-message cut used to orphan the output)
    ],
)
async def test_late_approval_after_the_conversation_moved_on(
    db_path: Path, max_messages: int
) -> None:
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup, transfer])
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as session:
        model.enqueue([function_call("transfer", {"amount": 1}, call_id="late")])
        parked = await Runner.run(agent, "question 0", session=session)
        assert approval_call_ids(parked) == ["late"]
        # The user goes on chatting without answering; two turns push the parked one out.
        for turn in (1, 2):
            script_turn(model, turn, "none")
            await Runner.run(agent, f"question {turn}", session=session)
        state = parked.to_state()
        state.approve(parked.interruptions[0])
        model.enqueue([assistant_message("answer 0", item_id="msg-0")])
        resumed = await Runner.run(agent, state, session=session)
        assert resumed.final_output == "answer 0"

        stored = await session.get_items()
        calls = {item["call_id"] for item in stored if item.get("type") == "function_call"}
        orphans = [
            position
            for position, item in enumerate(stored)
            if item.get("type") == "function_call_output" and item["call_id"] not in calls
        ]
        assert not orphans, (
            f"outputs stored without their call at {orphans}: {[project(i) for i in stored]}"
        )
        check_history(stored, where="after the late approval")
        script_turn(model, 3, "none")
        first_call = len(model.calls)
        await Runner.run(agent, "question 3", session=session)
        check_model_input(model.calls[first_call].input, where="the turn after")
    model.assert_complete()


# --- 5: pop_item to undo a turn -------------------------------------------------------------------


@pytest.mark.parametrize("last_shape", ["none", "parallel", "sequential"])
async def test_pop_items_undoes_the_last_turn(db_path: Path, last_shape: str) -> None:
    max_messages = 10
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup])
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as session:
        produced: list[Item] = []
        turns = ["one", "none", "parallel", "one", last_shape]
        for turn, shape in enumerate(turns):
            script_turn(model, turn, shape)
            result = await Runner.run(agent, f"question {turn}", session=session)
            last_turn = turn_items(result, f"question {turn}")
            produced += last_turn
        stored = await session.get_items()
        assert stored == bounded(produced, max_messages)
        kept_before_last = stored[: -len(last_turn)]
        assert kept_before_last, "test set-up: nothing would remain after the undo"

        popped: list[Item] = []
        while True:
            item = await session.pop_item()
            assert item is not None, f"ran out of items after popping {len(popped)}"
            popped.append(dict(item))
            if item.get("role") == "user":
                break
        assert popped[::-1] == last_turn, (
            f"popped {[project(i) for i in popped[::-1]]}, the last turn was "
            f"{[project(i) for i in last_turn]}"
        )
        remaining = await session.get_items()
        assert remaining == kept_before_last
        check_history(remaining, where="after undo")
        # It is whole earlier turns: a suffix of what the first four runs produced.
        earlier = produced[: -len(last_turn)]
        assert earlier[-len(remaining) :] == remaining

        script_turn(model, 99, "parallel")
        first_call = len(model.calls)
        result = await Runner.run(agent, "question 99", session=session)
        assert result.final_output == "answer 99"
        assert [as_dict(i) for i in model.calls[first_call].input] == [
            *remaining,
            {"role": "user", "content": "question 99"},
        ], "the run after the undo did not see exactly the remaining history"
        check_new_model_calls(model, first_call, where="after undo")
        new_turn = turn_items(result, "question 99")
        stored = await session.get_items()
        check_history(stored, where="run after undo")
        assert stored == bounded([*remaining, *new_turn], max_messages)
    model.assert_complete()


# --- 6: persistence across objects and processes ------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from agents import Agent, Runner, function_tool
    from agents.testing import ScriptedModel, assistant_message, function_call
    from agent_sessions import AgentSession

    @function_tool
    def lookup(key: str) -> str:
        '''Look a key up.'''
        return f"value:{key}"

    async def main(db_path, user, conversation, max_messages):
        model = ScriptedModel()
        model.enqueue([function_call("lookup", {"key": "child"}, call_id="child-call")])
        model.enqueue([assistant_message("child answer", item_id="msg-child")])
        agent = Agent(name="assistant", model=model, tools=[lookup])
        with AgentSession(user, conversation, db_path=db_path, max_messages=max_messages) as s:
            seen = await s.get_items()
            await Runner.run(agent, "child question", session=s)
            model.assert_complete()
            return {
                "seen": seen,
                "model_input": [dict(i) for i in model.calls[0].input],
                "after": await s.get_items(),
            }

    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))))
    """
)


def run_child(db_path: Path, max_messages: int) -> dict[str, Any]:
    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            CHILD,
            str(db_path),
            USER,
            CONVERSATION,
            str(max_messages),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, f"child failed:\n{completed.stderr[-3000:]}"
    parsed: dict[str, Any] = json.loads(completed.stdout)
    return parsed


async def test_two_objects_and_a_second_process_share_the_history(db_path: Path) -> None:
    max_messages = 9
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup])
    produced: list[Item] = []
    with (
        AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as first,
        AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as second,
    ):
        for turn, shape in enumerate(["one", "parallel", "none", "sequential"]):
            session = first if turn % 2 == 0 else second
            other = second if turn % 2 == 0 else first
            script_turn(model, turn, shape)
            before = await other.get_items()
            first_call = len(model.calls)
            result = await Runner.run(agent, f"question {turn}", session=session)
            assert [as_dict(i) for i in model.calls[first_call].input][:-1] == before, (
                f"turn {turn}: the run did not see what the other object wrote"
            )
            produced += turn_items(result, f"question {turn}")
            assert await other.get_items() == await session.get_items()
            assert await other.get_items() == bounded(produced, max_messages)
        written = await first.get_items()

    child = run_child(db_path, max_messages)

    assert child["seen"] == written, "the second process did not see the first one's history"
    assert child["model_input"] == [*written, {"role": "user", "content": "child question"}]
    child_turn = [
        ("user", "child question"),
        ("call", "child-call", "lookup"),
        ("output", "child-call", "value:child"),
        ("message", "child answer"),
    ]
    assert [project(i) for i in child["after"]][-4:] == child_turn
    assert child["after"] == bounded([*written, *child["after"][-4:]], max_messages)

    # And back in this process, on a new object, after the child has exited.
    with AgentSession(USER, CONVERSATION, db_path=db_path, max_messages=max_messages) as again:
        assert await again.get_items() == child["after"]
        script_turn(model, 9, "one")
        first_call = len(model.calls)
        await Runner.run(agent, "question 9", session=again)
        assert [as_dict(i) for i in model.calls[first_call].input] == [
            *child["after"],
            {"role": "user", "content": "question 9"},
        ]
        check_history(await again.get_items(), where="after the child")
    model.assert_complete()


# --- 7: a read limit from SessionSettings -------------------------------------------------------


def expected_limited_input(history: list[Item], limit: int, user_text: str) -> list[Item]:
    """What the SDK sends for a read limit: the newest ``limit`` items minus orphans."""
    window = history[-limit:] if limit else []
    called = {item["call_id"] for item in window if item.get("type") == "function_call"}
    kept = [
        item
        for item in window
        if item.get("type") != "function_call_output" or item["call_id"] in called
    ]
    return [*kept, {"role": "user", "content": user_text}]


@pytest.mark.parametrize("where_set", ["session", "run_config"])
@pytest.mark.parametrize("limit", [1, 3, 6])
async def test_session_settings_limit_with_the_runner(
    db_path: Path, limit: int, where_set: str
) -> None:
    max_messages = 8
    model = ScriptedModel()
    agent = Agent(name="assistant", model=model, tools=[lookup])
    settings = SessionSettings(limit=limit)
    run_config = RunConfig(session_settings=settings) if where_set == "run_config" else None
    produced: list[Item] = []
    with AgentSession(
        USER,
        CONVERSATION,
        db_path=db_path,
        max_messages=max_messages,
        session_settings=settings if where_set == "session" else None,
    ) as session:
        shapes = ["parallel", "one", "sequential", "none", "parallel", "one", "sequential"]
        for turn, shape in enumerate(shapes):
            script_turn(model, turn, shape)
            everything = [dict(i) for i in await session.get_items(limit=10_000)]
            first_call = len(model.calls)
            result = await Runner.run(
                agent, f"question {turn}", session=session, run_config=run_config
            )
            assert result.final_output == f"answer {turn}"
            first_input = [as_dict(i) for i in model.calls[first_call].input]
            assert first_input == expected_limited_input(everything, limit, f"question {turn}"), (
                f"turn {turn}: model input {[project(i) for i in first_input]}"
            )
            for index in range(first_call, len(model.calls)):
                items = [as_dict(i) for i in model.calls[index].input]
                # The read window may start mid-turn; only orphaned outputs are invalid.
                check_model_input(
                    [{"role": "user", "content": "(window)"}, *items], where=f"turn {turn}"
                )
            produced += turn_items(result, f"question {turn}")
            stored = await session.get_items(limit=10_000)
            check_history(stored, where=f"turn {turn}")
            assert stored == bounded(produced, max_messages), f"turn {turn}"
            if where_set == "session":
                assert await session.get_items() == stored[-limit:]
    model.assert_complete()
