"""Four processes of eight tasks writing full turns to one file while cleanup runs alongside.

Every writer records each acknowledged ``add_items`` (session, the items' tags, in order) and
every exception. A trigger the test installs on ``agent_messages`` copies each inserted row
into an audit table in the same transaction, so afterwards the test knows the order in which
every batch was committed, including batches pruning later removed. Replaying the pruning
rule (an independent reference, ``bounded``) over that order gives exactly what each session
must hold; the stored rows are compared with it item for item.

Per writer, the kept items must be the newest it wrote, in its order. Its newest turn must be
there in full on its own session; on a shared one the rule does not promise that (another
writer's turn committed between its user message and its tool items can move the cut past
the user message), so there the session's newest committed batch must be whole instead.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_sessions import AgentSession, SessionManager
from tests.reliability.tagged import Item, bounded, is_user_tag, tag_of, tool_batch, user

PROCESSES = 4
TASKS = 8  # per process
SHARED_SESSIONS = 4  # written by tasks of every process; each task also has its own session
MAX_MESSAGES = 12
RETENTION_DAYS = 7
IDLE_SEEDED_FIRST = 150  # idle sessions written before the run: the first cleanup's work
IDLE_PER_ROUND = 10  # idle sessions the maintenance process writes before each cleanup
WRITE_SECONDS = 8.0
SOAK_WRITE_SECONDS = 60.0
MAX_PROBLEMS_KEPT = 20  # per process; the counts are exact

Ack = tuple[str, tuple[str, ...]]  # (session id, tags of the items of one add_items, in order)

AUDIT_SQL = """
CREATE TABLE test_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    message_data TEXT NOT NULL
);
CREATE TRIGGER test_audit_insert AFTER INSERT ON agent_messages BEGIN
    INSERT INTO test_audit (session_id, message_data) VALUES (NEW.session_id, NEW.message_data);
END;
"""


# --- items: every item carries a unique tag -----------------------------------------------


def history_problems(items: Sequence[Item], max_messages: int) -> list[str]:
    """What makes ``items`` an invalid stored history (empty list: valid)."""
    if not items:
        return ["empty history"]
    problems = []
    tags = [tag_of(item) for item in items]
    if not is_user_tag(tags[0]):
        problems.append(f"starts at {tags[0]}, not a user message")
    twice = sorted(tag for tag, n in Counter(tags).items() if n > 1)
    if twice:
        problems.append(f"stored twice: {twice[:5]}")
    calls: set[str] = set()
    answered: set[str] = set()
    for position, item in enumerate(items):
        if item.get("type") == "function_call":
            calls.add(item["call_id"])
        elif item.get("type") == "function_call_output":
            if item["call_id"] not in calls:
                problems.append(f"output {item['call_id']} at {position} before its call")
            answered.add(item["call_id"])
    if calls - answered:
        problems.append(f"calls without output: {sorted(calls - answered)[:5]}")
    users = sum(is_user_tag(tag) for tag in tags)
    if len(items) > max_messages and users != 1:
        problems.append(f"{len(items)} items > {max_messages} with {users} user messages")
    return problems


# --- child processes --------------------------------------------------------------------------


async def _write_turns(db_path: str, proc: int, seconds: float, go: Any) -> dict[str, Any]:
    shared = [
        AgentSession("shared", f"s{i}", db_path=db_path, max_messages=MAX_MESSAGES)
        for i in range(SHARED_SESSIONS)
    ]
    own = [
        AgentSession(f"p{proc}t{task}", "own", db_path=db_path, max_messages=MAX_MESSAGES)
        for task in range(TASKS)
    ]
    acks: dict[int, list[Ack]] = {task: [] for task in range(TASKS)}
    errors: list[str] = []
    read_problems: list[str] = []
    counts = Counter[str]()

    def problem(kind: str, text: str) -> None:
        counts[kind] += 1
        if len(read_problems) < MAX_PROBLEMS_KEPT:
            read_problems.append(text)

    async def task_loop(task: int, deadline: float) -> None:
        rng = random.Random(f"{proc}-{task}")
        own_expected: list[str] = []  # only this task writes its own session
        turn = 0
        while time.monotonic() < deadline:
            on_own = turn % 2 == 1
            session = own[task] if on_own else rng.choice(shared)
            tag = f"p{proc}t{task}n{turn}"
            batches = [[user(tag)], tool_batch(tag, pairs=rng.choice((1, 2)))]
            turn += 1
            try:
                items: list[Item] = await session.get_items()  # type: ignore[assignment]
                counts["reads"] += 1
                where = f"p{proc}t{task} read of {session.session_id} before {tag}"
                for text in history_problems(items, MAX_MESSAGES) if items else []:
                    problem("invalid reads", f"{where}: {text}")
                if on_own and [tag_of(item) for item in items] != own_expected:
                    problem("stale own reads", f"{where}: not what this task wrote")
                for batch in batches:
                    await session.add_items(batch)  # type: ignore[arg-type]
                    tags = tuple(tag_of(item) for item in batch)
                    acks[task].append((session.session_id, tags))
                    if on_own:
                        own_expected = bounded([*own_expected, *tags], MAX_MESSAGES, is_user_tag)
            except Exception as exc:  # counted, and asserted to be zero
                counts["errors"] += 1
                if len(errors) < MAX_PROBLEMS_KEPT:
                    errors.append(f"p{proc}t{task} {tag}: {type(exc).__name__}: {exc}")

    try:
        await asyncio.to_thread(go.wait, 120)
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(task_loop(task, deadline) for task in range(TASKS)))
    finally:
        for session in (*shared, *own):
            session.close()
    return {"acks": acks, "errors": errors, "read_problems": read_problems, "counts": counts}


def writer_main(db_path: str, proc: int, seconds: float, ready: Any, go: Any, out: Any) -> None:
    ready.put(f"writer {proc}")
    out.put((f"writer {proc}", asyncio.run(_write_turns(db_path, proc, seconds, go))))


def idle_clock() -> datetime:
    return datetime.now(UTC) - timedelta(days=RETENTION_DAYS * 4)


async def write_idle(db_path: str, conversations: Sequence[str]) -> None:
    for conversation in conversations:
        with AgentSession(
            "idle", conversation, db_path=db_path, max_messages=MAX_MESSAGES, clock=idle_clock
        ) as session:
            await session.add_items([user(f"idle-{conversation}"), *tool_batch(conversation, 1)])


async def _maintain(db_path: str, go: Any, stop: Any) -> dict[str, Any]:
    errors: list[str] = []
    counts = Counter[str]()
    async with SessionManager(
        db_path, max_messages=MAX_MESSAGES, retention_days=RETENTION_DAYS
    ) as manager:
        await asyncio.to_thread(go.wait, 120)
        while not stop.is_set():
            try:
                first = counts["idle seeded"]
                await write_idle(db_path, [f"m{n}" for n in range(first, first + IDLE_PER_ROUND)])
                counts["idle seeded"] += IDLE_PER_ROUND
                counts["sessions deleted"] += await manager.cleanup_inactive_sessions()
                counts["cleanups"] += 1
                listed = await manager.list_sessions(include_expired=True)
                counts["listings"] += 1
                counts["idle listed after cleanup"] += sum(
                    stats.user_id == "idle" for stats in listed
                )
            except Exception as exc:  # counted, and asserted to be zero
                counts["errors"] += 1
                if len(errors) < MAX_PROBLEMS_KEPT:
                    errors.append(f"maintenance: {type(exc).__name__}: {exc}")
    return {"errors": errors, "counts": counts}


def maintenance_main(db_path: str, ready: Any, go: Any, stop: Any, out: Any) -> None:
    ready.put("maintenance")
    out.put(("maintenance", asyncio.run(_maintain(db_path, go, stop))))


# --- the test -------------------------------------------------------------------------------


def query(db_path: str, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql).fetchall()


def run_processes(db_path: str, seconds: float) -> dict[str, dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    ready, out = context.Queue(), context.Queue()
    go, stop = context.Event(), context.Event()
    writers = [
        context.Process(target=writer_main, args=(db_path, proc, seconds, ready, go, out))
        for proc in range(PROCESSES)
    ]
    maintenance = context.Process(target=maintenance_main, args=(db_path, ready, go, stop, out))
    processes = [*writers, maintenance]
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        go.set()
        for _ in writers:
            name, outcome = out.get(timeout=seconds + 120)
            outcomes[name] = outcome
        stop.set()
        name, outcome = out.get(timeout=120)
        outcomes[name] = outcome
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"
    finally:
        stop.set()
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    return outcomes


def run_battery(db_path: str, seconds: float) -> None:
    seeded = [f"seed{n}" for n in range(IDLE_SEEDED_FIRST)]
    asyncio.run(write_idle(db_path, seeded))  # also creates the schema the trigger needs
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(AUDIT_SQL)

    started = time.monotonic()
    outcomes = run_processes(db_path, seconds)
    elapsed = time.monotonic() - started

    writer_acks: dict[str, list[Ack]] = {}
    counts = Counter[str]()
    errors: list[str] = []
    read_problems: list[str] = []
    for name, outcome in outcomes.items():
        counts.update(outcome["counts"])
        errors += outcome["errors"]
        read_problems += outcome.get("read_problems", [])
        for task, acks in outcome.get("acks", {}).items():
            writer_acks[f"{name.split()[1]}/{task}"] = acks
    acks_total = sum(len(acks) for acks in writer_acks.values())
    items_acked = sum(len(tags) for acks in writer_acks.values() for _, tags in acks)

    stored: dict[str, list[str]] = defaultdict(list)
    stored_items: dict[str, list[Item]] = defaultdict(list)
    for session_id, data in query(
        db_path, "SELECT session_id, message_data FROM agent_messages ORDER BY id"
    ):
        stored_items[session_id].append(json.loads(data))
        stored[session_id].append(tag_of(json.loads(data)))
    committed: dict[str, list[str]] = defaultdict(list)
    for session_id, data in query(
        db_path, "SELECT session_id, message_data FROM test_audit ORDER BY seq"
    ):
        committed[session_id].append(tag_of(json.loads(data)))
    written_sessions = {session_id for acks in writer_acks.values() for session_id, _ in acks}
    items_stored = sum(len(stored[session_id]) for session_id in written_sessions)

    figures = (
        f"[{PROCESSES} processes x {TASKS} tasks, {elapsed:.1f} s: {counts['reads']} reads, "
        f"{acks_total} acknowledged add_items ({items_acked} items) on "
        f"{len(written_sessions)} sessions, {items_stored} items stored, "
        f"{counts['errors']} errors; maintenance: {counts['cleanups']} cleanups deleted "
        f"{counts['sessions deleted']} idle sessions of {IDLE_SEEDED_FIRST} + "
        f"{counts['idle seeded']} seeded, {counts['listings']} list_sessions]"
    )
    assert counts["errors"] == 0, f"{figures} errors reached callers: {errors}"
    assert counts["cleanups"] > 0, f"{figures} cleanup never ran while writers wrote"
    assert acks_total >= PROCESSES * TASKS * 10, f"{figures} too little was written to test"
    assert not read_problems, f"{figures} reads during the run: {dict(counts)} {read_problems}"

    # 1. Every acknowledged batch was committed exactly once, whole, and nothing else was.
    ack_of: dict[str, tuple[str, int]] = {}
    for writer, acks in writer_acks.items():
        for index, (_, tags) in enumerate(acks):
            for tag in tags:
                ack_of[tag] = (writer, index)
    batches: dict[str, list[tuple[tuple[str, int], list[str]]]] = defaultdict(list)
    unacknowledged: list[str] = []
    for session_id in written_sessions:
        for tag in committed[session_id]:
            key = ack_of.get(tag)
            if key is None:
                unacknowledged.append(tag)
            elif batches[session_id] and batches[session_id][-1][0] == key:
                batches[session_id][-1][1].append(tag)
            else:
                batches[session_id].append((key, [tag]))
    assert not unacknowledged, f"{figures} committed but never acknowledged: {unacknowledged[:5]}"
    seen = Counter(key for session_batches in batches.values() for key, _ in session_batches)
    never = [
        (writer, index, tags)
        for writer, acks in writer_acks.items()
        for index, (_, tags) in enumerate(acks)
        if seen[(writer, index)] == 0
    ]
    assert not never, f"{figures} {len(never)} acknowledged batches never committed: {never[:3]}"
    split = [key for key, n in seen.items() if n > 1]
    assert not split, f"{figures} batches committed twice or not contiguously: {split[:5]}"
    partial = [
        (key, tags)
        for session_batches in batches.values()
        for key, tags in session_batches
        if tuple(tags) != writer_acks[key[0]][key[1]][1]
    ]
    assert not partial, f"{figures} batches committed partially or reordered: {partial[:3]}"

    # 2. What is stored is exactly what the pruning rule leaves of the committed batches.
    lost = 0
    for session_id in sorted(written_sessions):
        expected: list[str] = []
        for _, tags in batches[session_id]:
            expected = bounded([*expected, *tags], MAX_MESSAGES, is_user_tag)
        missing = [tag for tag in expected if tag not in set(stored[session_id])]
        lost += len(missing)
        assert stored[session_id] == expected, (
            f"{figures} {session_id}: stored {stored[session_id]} is not what pruning leaves, "
            f"{expected}; lost {missing}"
        )
        problems = history_problems(stored_items[session_id], MAX_MESSAGES)
        assert not problems, f"{figures} {session_id}: {problems}"
        newest = batches[session_id][-1][1]
        assert stored[session_id][-len(newest) :] == newest, (
            f"{figures} {session_id}: the newest batch {newest} is not stored whole"
        )

    # 3. Per writer: its acknowledged items on a session that are still there keep its order
    #    and are the newest ones it wrote (pruning only cuts the oldest end); on its own
    #    session, its newest turn is there in full.
    pruned = 0
    for writer, acks in writer_acks.items():
        by_session: dict[str, list[list[str]]] = defaultdict(list)
        for session_id, tags in acks:
            by_session[session_id].append(list(tags))
        for session_id, session_batches in by_session.items():
            written = [tag for tags in session_batches for tag in tags]
            position = {tag: index for index, tag in enumerate(stored[session_id])}
            present = [tag for tag in written if tag in position]
            pruned += len(written) - len(present)
            where = f"{figures} writer {writer} on {session_id}"
            assert present == written[len(written) - len(present) :], (
                f"{where}: kept {present} is not a suffix of what it wrote"
            )
            assert [position[tag] for tag in present] == sorted(position[t] for t in present), (
                f"{where}: stored out of the writer's order"
            )
            if session_id.endswith("_conv_own"):
                newest_turn = [tag for tags in session_batches[-2:] for tag in tags]
                assert is_user_tag(newest_turn[0]), f"{where}: test bug, turn split"
                assert written[-len(newest_turn) :] == present[-len(newest_turn) :], (
                    f"{where}: newest turn {newest_turn} not stored in full"
                )
    assert pruned + items_stored == items_acked, (
        f"{figures} {items_acked} acknowledged = {items_stored} stored + {pruned} pruned?"
    )

    # 4. Cleanup removed every idle session, whole, and no active one.
    sessions = {
        row[0]: row[1] for row in query(db_path, "SELECT session_id, user_id FROM agent_sessions")
    }
    idle_left = sorted(session_id for session_id, owner in sessions.items() if owner == "idle")
    idle_rows = query(
        db_path,
        "SELECT COUNT(*) FROM agent_messages WHERE substr(session_id, 1, 10) = 'user_idle_'",
    )
    assert not idle_left, f"{figures} idle sessions left: {len(idle_left)}: {idle_left[:3]}"
    assert idle_rows == [(0,)], f"{figures} rows of idle sessions left: {idle_rows}"
    assert counts["sessions deleted"] == IDLE_SEEDED_FIRST + counts["idle seeded"], (
        f"{figures} cleanup deleted a different number of sessions than were idle"
    )
    active_gone = sorted(written_sessions - set(sessions))
    assert not active_gone, f"{figures} active sessions deleted: {active_gone}"
    orphans = query(
        db_path,
        "SELECT COUNT(*) FROM agent_messages "
        "WHERE session_id NOT IN (SELECT session_id FROM agent_sessions)",
    )
    assert orphans == [(0,)], f"{figures} rows without a session: {orphans}"

    # 5. The library reads back what is stored, and the file is sound.
    async def read_all() -> dict[str, list[str]]:
        found = {}
        for session_id in written_sessions:
            user_id, conversation_id = session_id.removeprefix("user_").split("_conv_")
            with AgentSession(user_id, conversation_id, db_path=db_path) as session:
                items: list[Item] = await session.get_items()  # type: ignore[assignment]
                found[session_id] = [tag_of(item) for item in items]
        return found

    read_back = asyncio.run(read_all())
    assert read_back == {session_id: stored[session_id] for session_id in written_sessions}, (
        f"{figures} AgentSession.get_items differs from the stored rows"
    )
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)], f"{figures} integrity_check"
    print(f"concurrency: {figures}, {pruned} items pruned by the rule, {lost} lost")


def test_processes_tasks_and_cleanup_share_one_file(tmp_path: Path) -> None:
    run_battery(str(tmp_path / "battery.db"), WRITE_SECONDS)


@pytest.mark.slow
def test_processes_tasks_and_cleanup_share_one_file_soak(tmp_path: Path) -> None:
    run_battery(str(tmp_path / "battery.db"), SOAK_WRITE_SECONDS)
