"""SIGKILL a writer at random moments: every acknowledged write survives, no batch is half there.

A child process appends turns as fast as it can to a few sessions on one file and, after each
``add_items`` returns, appends a line to a side log (one ``write()`` per line, so the log may
miss the newest acknowledgement but never shows one that did not happen). The parent kills it
with SIGKILL a random time after it reports it is writing, checks the file, runs the Runner on
it, and starts a new child on the same file, which carries on.

What the child writes is a pure function of (generation, step), so after each kill the test
knows exactly what each session must hold: everything logged, plus at most the one batch the
child was writing when it died (committed, or not, never in part), with the pruning rule
(an independent reference, ``bounded``) applied after every batch on the small session.

Children are forked from a ``forkserver`` with the library preloaded: importing the Agents SDK
takes about 2 s, which 20+ restarts cannot each pay.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner
from agents.testing import ScriptedModel, assistant_message

from agent_sessions import AgentSession, get_session_id
from agent_sessions.backends.sqlite.engine import close_idle_connections
from tests.reliability.tagged import Item, bounded, tag_of, tool_batch, user

USER = "crash"
BIG = ("big0", "big1", "big2")
SMALL = "small"
CONVERSATIONS = (*BIG, SMALL)
BIG_MAX = 1_000_000  # never pruned (the soak writes over 10,000 items to each): all must stay
SMALL_MAX = 10  # pruning runs inside most transactions the kills interrupt
KILLS = 21
SOAK_KILLS = 120
KILL_DELAY = (0.05, 0.4)  # seconds after the child reports it is writing
EARLY_KILL_DELAY = (0.0, 0.05)  # every EARLY_EVERY-th kill lands in the first writes
EARLY_EVERY = 6
# Every kill, the small session and the one being written are read back through
# AgentSession and the Runner runs on the small one. The long sessions (all read back, the
# Runner on the one being written) every few kills: that costs O(history) each time.
READ_ALL_EVERY, RUNNER_EVERY = 1, 3
SOAK_READ_ALL_EVERY, SOAK_RUNNER_EVERY = 10, 10
CHILD_SECONDS = 60.0  # a child whose parent died stops by itself


# --- what the child writes: a pure function of (generation, step) ------------------------------


def max_messages(conversation: str) -> int:
    return SMALL_MAX if conversation == SMALL else BIG_MAX


def step(generation: int, n: int) -> tuple[str, list[Item]]:
    """The conversation and items of the child's ``n``-th ``add_items`` in ``generation``."""
    turn = n // 2
    conversation = CONVERSATIONS[turn % len(CONVERSATIONS)]
    tag = f"g{generation}t{turn}"
    if n % 2 == 0:
        return conversation, [user(tag)]
    pairs = 1 + (turn // len(CONVERSATIONS)) % 2  # one or two call/output pairs
    return conversation, tool_batch(tag, pairs)


def is_user(item: Item) -> bool:
    return item.get("role") == "user"


def batch_of(tag: str) -> tuple[int, int]:
    """(generation, step) of the ``add_items`` call that wrote the item tagged ``tag``."""
    turn, part = tag.rsplit(":", 1)
    generation, turn_number = turn.removeprefix("g").split("t")
    return int(generation), 2 * int(turn_number) + (part != "u")


# --- the child ---------------------------------------------------------------------------------


async def _write_until_killed(db_path: str, log_path: str, generation: int, ready: Any) -> None:
    sessions = {
        conversation: AgentSession(
            USER, conversation, db_path=db_path, max_messages=max_messages(conversation)
        )
        for conversation in CONVERSATIONS
    }
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ready.send("ready")
    deadline = time.monotonic() + CHILD_SECONDS
    n = 0
    while time.monotonic() < deadline:
        conversation, items = step(generation, n)
        if conversation == SMALL and n % 2 == 0:
            await sessions[SMALL].get_items()  # a turn starts by reading the history
        await sessions[conversation].add_items(items)  # type: ignore[arg-type]
        # Only after add_items returned; one write() per line, unbuffered.
        os.write(log, f"{n} {conversation} {','.join(map(tag_of, items))}\n".encode())
        n += 1


def crash_child(db_path: str, log_path: str, generation: int, ready: Any) -> None:
    try:
        asyncio.run(_write_until_killed(db_path, log_path, generation, ready))
    except BaseException:
        ready.send(f"error: {traceback.format_exc()}")
        raise


# --- checks ------------------------------------------------------------------------------------


def drain(reader: Any) -> str:
    """Whatever the child sent before it died (an error report), without blocking."""
    messages = []
    try:
        while reader.poll():
            messages.append(str(reader.recv()))
    except EOFError:
        pass
    return "\n".join(messages)


def read_log(log_path: Path, generation: int) -> int:
    """Number of acknowledgements the child logged (steps 0..n-1, checked against ``step``)."""
    text = log_path.read_bytes().decode() if log_path.exists() else ""
    lines = text.split("\n")[:-1]  # a final line without its newline was never complete
    for n, line in enumerate(lines):
        conversation, items = step(generation, n)
        expected = f"{n} {conversation} {','.join(map(tag_of, items))}"
        assert line == expected, f"log line {n} of generation {generation}: {line!r}"
    return len(lines)


def history_problems(items: Sequence[Item]) -> list[str]:
    """What makes ``items`` an invalid stored history, or model input (empty list: valid)."""
    if not items:
        return ["empty history"]
    problems = []
    if items[0].get("role") != "user":
        problems.append(f"starts at {tag_of(items[0])}, not a user message")
    calls: set[str] = set()
    answered: set[str] = set()
    for position, item in enumerate(items):
        call_id = item.get("call_id")
        if item.get("type") == "function_call":
            if call_id in calls:
                problems.append(f"call {call_id} twice")
            calls.add(call_id)
        elif item.get("type") == "function_call_output":
            if call_id not in calls:
                problems.append(f"output {call_id} at {position} without its call before it")
            if call_id in answered:
                problems.append(f"output {call_id} twice")
            answered.add(call_id)
    # Each call is written with its output in one add_items: none may ever be left alone.
    if calls - answered:
        problems.append(f"calls without output: {sorted(calls - answered)[:5]}")
    return problems


def read_raw(db_path: Path) -> tuple[list[tuple[Any, ...]], dict[str, list[Item]]]:
    """``integrity_check`` and every session's decoded rows, through a fresh raw connection."""
    names = {get_session_id(USER, conversation): conversation for conversation in CONVERSATIONS}
    texts: dict[str, list[str]] = {conversation: [] for conversation in CONVERSATIONS}
    with closing(sqlite3.connect(db_path)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        for session_id, data in conn.execute(
            "SELECT session_id, message_data FROM agent_messages ORDER BY id"
        ):
            assert session_id in names, f"a row of an unknown session {session_id!r}"
            texts[names[session_id]].append(data)
        rows = {row[0] for row in conn.execute("SELECT session_id FROM agent_sessions")}
    # One json.loads per session (decoding row by row costs seconds over a long run).
    stored = {
        name: json.loads(f"[{','.join(session_rows)}]") for name, session_rows in texts.items()
    }
    for name in CONVERSATIONS:
        assert len(stored[name]) == len(texts[name]), f"{name}: a row holds several values"
        assert all(isinstance(item, dict) for item in stored[name]), f"{name}: a row is no item"
    without_row = sorted(names[sid] for sid in names if stored[names[sid]] and sid not in rows)
    assert not without_row, f"sessions with items but no session row: {without_row}"
    return integrity, stored


def explain(
    where: str, name: str, stored: list[Item], if_logged: list[Item], if_one_more: list[Item]
) -> None:
    """Fail with the specific fault, if ``stored`` has one: duplicates, losses, half batches."""
    tags = [tag_of(item) for item in stored]
    twice = sorted(tag for tag, n in Counter(tags).items() if n > 1)
    assert not twice, f"{where}: {name} holds items twice: {twice[:5]}"
    present = set(tags)
    # A logged item may be missing only if the one unlogged batch pruned it.
    may_go = {tag_of(item) for item in if_logged} - {tag_of(item) for item in if_one_more}
    lost = [tag for tag in map(tag_of, if_logged) if tag not in present and tag not in may_go]
    assert not lost, f"{where}: {name} lost {len(lost)} acknowledged items: {lost[:5]}"
    sizes = Counter(batch_of(tag) for tag in tags if ":" in tag)
    half = sorted(batch for batch, n in sizes.items() if n != len(step(*batch)[1]))
    assert not half, f"{where}: {name} holds part of batches (generation, step) {half[:5]}"


def difference(
    stored: dict[str, list[Item]],
    if_logged: dict[str, list[Item]],
    if_one_more: dict[str, list[Item]],
) -> str:
    """Where each session differs from the two states it may be in."""
    found = []
    for name in CONVERSATIONS:
        got = [tag_of(item) for item in stored[name]]
        for label, state in (("logged", if_logged), ("logged + 1", if_one_more)):
            want = [tag_of(item) for item in state[name]]
            if got != want:
                at = next(
                    (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                    min(len(got), len(want)),
                )
                found.append(
                    f"{name} has {len(got)} items, {label} {len(want)}; from item {at}: "
                    f"{got[at : at + 4]} instead of {want[at : at + 4]}"
                )
    return "; ".join(found)


def as_dict(item: Any) -> Item:
    if isinstance(item, dict):
        return item
    dumped: Item = item.model_dump(exclude_unset=True)
    return dumped


async def run_agent(db_path: Path, conversation: str, label: str, figures: str) -> list[Item]:
    """One Runner run on a recovered session; returns what the session holds afterwards."""
    with AgentSession(
        USER, conversation, db_path=db_path, max_messages=max_messages(conversation)
    ) as session:
        before = await session.get_items()
        model = ScriptedModel()
        model.enqueue([assistant_message(f"ok-{label}")])
        result = await Runner.run(Agent(name="a", model=model), f"next-{label}", session=session)
        where = f"{figures} Runner on {conversation} after kill {label}"
        assert result.final_output == f"ok-{label}", where
        model_input = [as_dict(item) for item in model.calls[0].input]
        problems = history_problems(model_input)
        assert not problems, f"{where}: invalid model input: {problems}"
        assert model_input == [*before, {"role": "user", "content": f"next-{label}"}], (
            f"{where}: the model did not get the stored history plus the new message"
        )
        after: list[Item] = await session.get_items()  # type: ignore[assignment]
    assert [tag_of(item) for item in after[-2:]] == [f"next-{label}", f"ok-{label}"], (
        f"{where}: the run's items are not stored last"
    )
    kept = after[:-2]
    assert kept == before[len(before) - len(kept) :], f"{where}: the run changed older items"
    assert conversation == SMALL or kept == before, f"{where}: a big session was pruned"
    problems = history_problems(after)
    assert not problems, f"{where}: invalid history after the run: {problems}"
    return after


# --- the test ------------------------------------------------------------------------------------


async def crash_and_check(
    tmp_path: Path, kills: int, *, read_all_every: int, runner_every: int
) -> None:
    db_path = tmp_path / "crash.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = multiprocessing.get_context("forkserver")
    # What this module imports, so a child only imports the module itself. (Not the module:
    # the forkserver ignores sys.path, so it cannot find ``tests``.) Ignored if this pytest
    # process already started its forkserver: children are then slower, equally valid.
    context.set_forkserver_preload(["agent_sessions.session", "agents.testing", "pytest"])

    expected: dict[str, list[Item]] = {conversation: [] for conversation in CONVERSATIONS}
    stored: dict[str, list[Item]] = expected
    acknowledged = items_acknowledged = unlogged = runner_runs = sessions_read = 0
    started = time.monotonic()

    def figures(kill: int) -> str:
        size = sum(path.stat().st_size for path in tmp_path.glob("crash.db*") if path.is_file())
        return (
            f"[seed {seed}, {kill} kills, {acknowledged} acknowledged add_items "
            f"({items_acknowledged} items), {unlogged} committed but not logged, "
            f"{sum(map(len, stored.values()))} items stored, file {size / 1e6:.1f} MB, "
            f"{sessions_read} sessions read back, {runner_runs} Runner runs, "
            f"{time.monotonic() - started:.1f} s]"
        )

    for kill in range(1, kills + 1):
        generation = kill - 1
        log_path = tmp_path / f"acks-{generation}.log"
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(
            target=crash_child, args=(str(db_path), str(log_path), generation, writer)
        )
        try:
            child.start()
            writer.close()
            assert await asyncio.to_thread(reader.poll, 60), f"{figures(kill - 1)} no ready"
            message = reader.recv()
            assert message == "ready", f"{figures(kill - 1)} child {generation}: {message}"
            early = kill % EARLY_EVERY == 0
            await asyncio.sleep(rng.uniform(*(EARLY_KILL_DELAY if early else KILL_DELAY)))
            child.kill()
            await asyncio.to_thread(child.join, 30)
            report = drain(reader)
            assert child.exitcode == -signal.SIGKILL, (
                f"{figures(kill - 1)} child {generation} ended by itself ({child.exitcode}) "
                f"before the kill: {report}"
            )
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            reader.close()
            child.close()

        # What the child acknowledged, and the two states the file may be in.
        logged = read_log(log_path, generation)
        acknowledged += logged
        if_logged = {conversation: list(items) for conversation, items in expected.items()}
        for n in range(logged):
            conversation, items = step(generation, n)
            if_logged[conversation].extend(items)  # in place: the big sessions are long
            if_logged[conversation] = bounded(
                if_logged[conversation], max_messages(conversation), is_user
            )
            items_acknowledged += len(items)
        conversation, items = step(generation, logged)  # the batch being written at the kill
        if_one_more = dict(if_logged)
        if_one_more[conversation] = bounded(
            [*if_logged[conversation], *items], max_messages(conversation), is_user
        )

        integrity, stored = read_raw(db_path)
        where = f"{figures(kill)} after kill {kill}"
        assert integrity == [("ok",)], f"{where}: integrity_check {integrity[:5]}"
        if stored == if_one_more:
            unlogged += 1
        elif stored != if_logged:
            for name in CONVERSATIONS:
                explain(where, name, stored[name], if_logged[name], if_one_more[name])
            pytest.fail(
                f"{where}: the sessions are not exactly the {logged} logged batches (+ at most "
                f"batch {logged}) of generation {generation} after the earlier ones: "
                f"{difference(stored, if_logged, if_one_more)}"
            )
        for name in CONVERSATIONS:
            problems = history_problems(stored[name]) if stored[name] else []
            assert not problems, f"{where}: {name} is not a valid history: {problems}"
        expected = stored

        # The library opens it and reads the same; the next run gets a valid model input.
        for name in CONVERSATIONS:
            if name in (SMALL, conversation) or kill % read_all_every == 0:
                with AgentSession(
                    USER, name, db_path=db_path, max_messages=max_messages(name)
                ) as session:
                    read = await session.get_items()
                assert read == stored[name], f"{where}: AgentSession reads {name} differently"
                sessions_read += 1
        # The small session every time; the big one that was being written, every few kills
        # (the Runner copies a long history several times over).
        recovered = [SMALL]
        if conversation != SMALL and kill % runner_every == 0:
            recovered.insert(0, conversation)
        for name in recovered:
            expected[name] = await run_agent(db_path, name, str(kill), where)
            runner_runs += 1
        close_idle_connections()  # the next check opens the file afresh

    final = figures(kills)
    assert acknowledged >= kills, f"{final} the child hardly wrote between kills"
    print(f"crash safety: {final}, 0 acknowledged items lost")


async def test_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    await crash_and_check(tmp_path, KILLS, read_all_every=READ_ALL_EVERY, runner_every=RUNNER_EVERY)


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_write_soak(tmp_path: Path) -> None:
    await crash_and_check(
        tmp_path, SOAK_KILLS, read_all_every=SOAK_READ_ALL_EVERY, runner_every=SOAK_RUNNER_EVERY
    )
