"""The SDK's own public-behaviour assertions about ``SQLiteSession``, run against both classes.

Every case runs twice through the ``make_session`` fixture: against the SDK's plain
``agents.SQLiteSession`` ("sdk") and against ``agent_sessions.AgentSession`` ("agent"), so
anything the SDK's tests assert of ``SQLiteSession`` must hold for ``AgentSession`` too.

Ported from openai/openai-agents-python:

* ``tests/memory/test_session.py``: add/get/clear, ``pop_item`` order and isolation, ``limit``,
  unicode and SQL-looking content, concurrent adds, two sessions on one file, adds on a closed
  session, ``SessionSettings`` defaults / dict coercion / unknown fields, and the Runner cases
  (memory across turns, separate sessions, list input, ``session_input_callback``,
  ``RunConfig(session_settings=...)``).
* ``tests/memory/test_session_limit.py``: ``SessionSettings(limit=...)`` through the Runner
  (limit 2, 0, None and larger than the history) and non-positive ``get_items`` limits.
* ``tests/extensions/memory/test_async_sqlite_session.py``: every operation on a closed session
  raises ``RuntimeError`` (asserted upstream for ``AsyncSQLiteSession``; ``SQLiteSession``
  0.24.0 behaves the same).

Adapted to openai-agents 0.24.0, whose source is the final word:

* A negative ``limit`` returns the whole history (SQLite's ``LIMIT -1``); a later upstream
  ``test_session_limit.py`` expects ``[]``, which 0.24.0 does not do.
* Upstream matches the closed-session message ``"SQLiteSession is closed"``; only the
  ``RuntimeError`` type and ``"is closed"`` are asserted here.
* ``FakeModel`` from the SDK's test tree is replaced by the public ``agents.testing.ScriptedModel``.

Left out: private internals (locks, connection registries, table names, rollback plumbing,
corrupt rows written with raw SQL), ``~`` expansion of ``db_path`` (not done by 0.24.0's
``SQLiteSession``), and Runner cases that do not involve a session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
from agents import Agent, RunConfig, Runner, SQLiteSession, TResponseInputItem
from agents.memory import SessionSettings
from agents.result import RunResult, RunResultStreaming
from agents.testing import ScriptedModel, assistant_message

# Read by the SDK once, on first use; nothing here may try to export traces.
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"

RUNNER_METHODS = ["run", "run_sync", "run_streamed"]


class SessionFactory(Protocol):
    def __call__(
        self,
        name: str,
        db_path: str | Path,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> SQLiteSession: ...


@pytest.fixture(params=["sdk", "agent"])
def make_session(request: pytest.FixtureRequest) -> Iterator[SessionFactory]:
    """A factory of sessions of the parametrized class; closes all of them at teardown."""
    with ExitStack() as stack:
        if request.param == "agent":
            agent_sessions = pytest.importorskip("agent_sessions")

            def make(
                name: str,
                db_path: str | Path,
                *,
                session_settings: SessionSettings | dict[str, Any] | None = None,
            ) -> SQLiteSession:
                session: SQLiteSession = agent_sessions.AgentSession(
                    "u1",
                    name,
                    db_path=db_path,
                    max_messages=10_000,
                    session_settings=session_settings,
                )
                stack.callback(session.close)
                return session

        else:

            def make(
                name: str,
                db_path: str | Path,
                *,
                session_settings: SessionSettings | dict[str, Any] | None = None,
            ) -> SQLiteSession:
                session = SQLiteSession(name, db_path, session_settings=session_settings)
                stack.callback(session.close)
                return session

        yield make


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sessions.db")


def _msg(role: str, content: str) -> TResponseInputItem:
    return cast(TResponseInputItem, {"role": role, "content": content})


def _contents(items: list[TResponseInputItem]) -> list[Any]:
    return [item.get("content") for item in items]


def _text(item: Any) -> Any:
    """The text of an input item: a plain string, or the first part of a list of parts."""
    content = item.get("content")
    if isinstance(content, list):
        return content[0]["text"]
    return content


def _run_sync_in_new_loop(agent: Agent[Any], input_data: Any, **kwargs: Any) -> RunResult:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return Runner.run_sync(agent, input_data, **kwargs)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def _run(
    method: str, agent: Agent[Any], input_data: Any, **kwargs: Any
) -> RunResult | RunResultStreaming:
    if method == "run":
        return await Runner.run(agent, input_data, **kwargs)
    if method == "run_sync":
        return await asyncio.to_thread(_run_sync_in_new_loop, agent, input_data, **kwargs)
    result = Runner.run_streamed(agent, input_data, **kwargs)
    async for _event in result.stream_events():
        pass
    return result


def _last_input(model: ScriptedModel) -> list[Any]:
    call = model.last_call
    assert call is not None
    assert isinstance(call.input, list)
    return call.input


def _reply(text: str, n: int) -> list[Any]:
    # Distinct ids: the SDK may treat repeated item ids in one history as one item.
    return [assistant_message(text, item_id=f"msg-{n}")]


# --- add_items / get_items / clear_session -------------------------------------------------


async def test_add_get_and_clear(make_session: SessionFactory, db: str) -> None:
    session = make_session("direct", db)
    await session.add_items([_msg("user", "Hello"), _msg("assistant", "Hi there!")])

    retrieved = await session.get_items()
    assert len(retrieved) == 2
    assert retrieved[0].get("role") == "user"
    assert retrieved[0].get("content") == "Hello"
    assert retrieved[1].get("role") == "assistant"
    assert retrieved[1].get("content") == "Hi there!"

    await session.clear_session()
    assert await session.get_items() == []


async def test_new_session_is_empty(make_session: SessionFactory, db: str) -> None:
    session = make_session("fresh", db)
    assert await session.get_items() == []
    assert await session.get_items(limit=3) == []


async def test_add_empty_list_is_a_no_op(make_session: SessionFactory, db: str) -> None:
    session = make_session("empty-add", db)
    await session.add_items([])
    assert await session.get_items() == []

    await session.add_items([_msg("user", "one")])
    await session.add_items([])
    assert _contents(await session.get_items()) == ["one"]


async def test_items_keep_insertion_order_across_calls(
    make_session: SessionFactory, db: str
) -> None:
    session = make_session("order", db)
    await session.add_items([_msg("user", "a"), _msg("assistant", "b")])
    await session.add_items([_msg("user", "c")])
    await session.add_items([_msg("assistant", "d"), _msg("user", "e")])
    assert _contents(await session.get_items()) == ["a", "b", "c", "d", "e"]


async def test_items_round_trip_unchanged(make_session: SessionFactory, db: str) -> None:
    session = make_session("round-trip", db)
    items: list[Any] = [
        _msg("user", "plain"),
        {
            "type": "message",
            "id": "msg-1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "parts", "annotations": []}],
        },
    ]
    await session.add_items(items)
    assert await session.get_items() == items


async def test_many_items(make_session: SessionFactory, db: str) -> None:
    session = make_session("many", db)
    items = [_msg("user" if i % 2 == 0 else "assistant", f"Message {i}") for i in range(1000)]
    await session.add_items(items)

    retrieved = await session.get_items()
    assert len(retrieved) == 1000
    assert _contents(retrieved) == [f"Message {i}" for i in range(1000)]
    assert _contents(await session.get_items(limit=3)) == [
        "Message 997",
        "Message 998",
        "Message 999",
    ]


async def test_unicode_content(make_session: SessionFactory, db: str) -> None:
    session = make_session("unicode", db)
    await session.add_items(
        [
            _msg("user", "こんにちは"),
            _msg("assistant", "😊👍"),
            _msg("user", "Привет"),
        ]
    )
    retrieved = await session.get_items()
    assert retrieved[0].get("content") == "こんにちは"
    assert retrieved[1].get("content") == "😊👍"
    assert retrieved[2].get("content") == "Привет"


async def test_special_characters_and_sql_injection(make_session: SessionFactory, db: str) -> None:
    session = make_session("special-chars", db)
    contents = [
        "O'Reilly",
        "DROP TABLE sessions;",
        '"SELECT * FROM users WHERE name = "admin";"',
        "Robert'); DROP TABLE students;--",
        "Normal message",
    ]
    await session.add_items(
        [_msg("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)]
    )
    retrieved = await session.get_items()
    assert len(retrieved) == len(contents)
    assert _contents(retrieved) == contents


async def test_concurrent_adds_to_one_session(make_session: SessionFactory, db: str) -> None:
    session = make_session("concurrent", db)
    await asyncio.gather(*(session.add_items([_msg("user", f"Message {i}")]) for i in range(10)))

    retrieved = await session.get_items()
    assert len(retrieved) == 10
    assert set(_contents(retrieved)) == {f"Message {i}" for i in range(10)}


async def test_concurrent_adds_to_two_sessions_on_one_file(
    make_session: SessionFactory, db: str
) -> None:
    session_1 = make_session("session-1", db)
    session_2 = make_session("session-2", db)
    await asyncio.gather(
        session_1.add_items([_msg("user", "session_1")]),
        session_2.add_items([_msg("user", "session_2")]),
    )
    assert _contents(await session_1.get_items()) == ["session_1"]
    assert _contents(await session_2.get_items()) == ["session_2"]


# --- get_items(limit=...) and SessionSettings --------------------------------------------------


SIX_ITEMS = [
    ("user", "Message 1"),
    ("assistant", "Response 1"),
    ("user", "Message 2"),
    ("assistant", "Response 2"),
    ("user", "Message 3"),
    ("assistant", "Response 3"),
]


async def test_get_items_with_limit(make_session: SessionFactory, db: str) -> None:
    session = make_session("count", db)
    await session.add_items([_msg(role, content) for role, content in SIX_ITEMS])

    all_items = await session.get_items()
    assert len(all_items) == 6
    assert all_items[0].get("content") == "Message 1"
    assert all_items[-1].get("content") == "Response 3"

    assert _contents(await session.get_items(limit=1)) == ["Response 3"]
    assert _contents(await session.get_items(limit=2)) == ["Message 3", "Response 3"]
    assert _contents(await session.get_items(limit=4)) == [
        "Message 2",
        "Response 2",
        "Message 3",
        "Response 3",
    ]
    latest_10 = await session.get_items(limit=10)
    assert len(latest_10) == 6
    assert latest_10[0].get("content") == "Message 1"
    assert latest_10[-1].get("content") == "Response 3"
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=None) == all_items


@pytest.mark.parametrize("limit", [-1, -5])
async def test_negative_limit_returns_everything(
    make_session: SessionFactory, db: str, limit: int
) -> None:
    # 0.24.0 keeps SQLite's meaning of a negative LIMIT: no limit at all.
    session = make_session("limit-negative", db)
    items = [_msg("user", "1"), _msg("assistant", "2")]
    await session.add_items(items)

    assert await session.get_items(limit=limit) == items
    assert await session.get_items(limit=0) == []
    assert len(await session.get_items(limit=1)) == 1
    assert len(await session.get_items()) == 2


async def test_session_settings_default(make_session: SessionFactory) -> None:
    session = make_session("default-settings", ":memory:")
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit is None


async def test_session_settings_constructor(make_session: SessionFactory) -> None:
    session = make_session(
        "constructor-settings", ":memory:", session_settings=SessionSettings(limit=5)
    )
    assert session.session_settings is not None
    assert session.session_settings.limit == 5


async def test_session_settings_dictionary_is_normalized(make_session: SessionFactory) -> None:
    session = make_session("dictionary-settings", ":memory:", session_settings={"limit": 0})
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit == 0
    assert session.session_settings.resolve({"limit": 4}).limit == 4

    await session.add_items([_msg("user", "hidden")])
    assert await session.get_items() == []
    assert _contents(await session.get_items(limit=5)) == ["hidden"]


def test_session_settings_rejects_unknown_dictionary_fields(
    make_session: SessionFactory, db: str
) -> None:
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        make_session("invalid-settings", db, session_settings={"limitt": 1})


async def test_get_items_uses_session_settings_limit(make_session: SessionFactory, db: str) -> None:
    session = make_session("settings-limit", db, session_settings=SessionSettings(limit=3))
    await session.add_items([_msg("user", f"Message {i}") for i in range(5)])

    assert _contents(await session.get_items()) == ["Message 2", "Message 3", "Message 4"]


async def test_explicit_limit_overrides_session_settings(
    make_session: SessionFactory, db: str
) -> None:
    session = make_session("settings-override", db, session_settings=SessionSettings(limit=5))
    await session.add_items([_msg("user", f"Message {i}") for i in range(10)])

    assert _contents(await session.get_items(limit=2)) == ["Message 8", "Message 9"]
    assert len(await session.get_items(limit=8)) == 8
    assert await session.get_items(limit=0) == []


# --- pop_item ----------------------------------------------------------------------------------


async def test_pop_item(make_session: SessionFactory, db: str) -> None:
    session = make_session("pop", db)
    assert await session.pop_item() is None

    await session.add_items(
        [_msg("user", "Hello"), _msg("assistant", "Hi there!"), _msg("user", "How are you?")]
    )
    assert len(await session.get_items()) == 3

    popped = await session.pop_item()
    assert popped is not None
    assert popped.get("role") == "user"
    assert popped.get("content") == "How are you?"
    remaining = await session.get_items()
    assert len(remaining) == 2
    assert remaining[-1].get("content") == "Hi there!"

    popped = await session.pop_item()
    assert popped is not None
    assert popped.get("role") == "assistant"
    assert popped.get("content") == "Hi there!"

    popped = await session.pop_item()
    assert popped is not None
    assert popped.get("role") == "user"
    assert popped.get("content") == "Hello"

    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_pop_item_returns_the_stored_item(make_session: SessionFactory, db: str) -> None:
    session = make_session("pop-equal", db)
    item = _msg("user", "exact")
    await session.add_items([item])
    assert await session.pop_item() == item


async def test_pop_item_only_affects_its_session(make_session: SessionFactory, db: str) -> None:
    session_1 = make_session("session-1", db)
    session_2 = make_session("session-2", db)
    await session_1.add_items([_msg("user", "Session 1 message")])
    await session_2.add_items(
        [_msg("user", "Session 2 message 1"), _msg("user", "Session 2 message 2")]
    )

    popped = await session_2.pop_item()
    assert popped is not None
    assert popped.get("content") == "Session 2 message 2"
    assert _contents(await session_1.get_items()) == ["Session 1 message"]
    assert _contents(await session_2.get_items()) == ["Session 2 message 1"]


async def test_add_after_pop_and_clear(make_session: SessionFactory, db: str) -> None:
    session = make_session("reuse", db)
    await session.add_items([_msg("user", "a"), _msg("assistant", "b")])
    await session.pop_item()
    await session.add_items([_msg("user", "c")])
    assert _contents(await session.get_items()) == ["a", "c"]

    await session.clear_session()
    assert await session.pop_item() is None
    await session.add_items([_msg("user", "d")])
    assert _contents(await session.get_items()) == ["d"]


# --- several sessions and objects on one file --------------------------------------------------


async def test_sessions_on_one_file_are_isolated(make_session: SessionFactory, db: str) -> None:
    session_1 = make_session("session-1", db)
    session_2 = make_session("session-2", db)
    assert session_1.session_id != session_2.session_id

    await session_1.add_items([_msg("user", "I like cats")])
    await session_2.add_items([_msg("user", "I like dogs"), _msg("assistant", "Woof")])
    assert _contents(await session_1.get_items()) == ["I like cats"]
    assert _contents(await session_2.get_items()) == ["I like dogs", "Woof"]

    await session_2.clear_session()
    assert await session_2.get_items() == []
    assert _contents(await session_1.get_items()) == ["I like cats"]


async def test_history_persists_across_objects_on_one_file(
    make_session: SessionFactory, db: str
) -> None:
    writer = make_session("persist", db)
    await writer.add_items([_msg("user", "Hello"), _msg("assistant", "Hi")])
    writer.close()

    reader = make_session("persist", db)
    assert reader.session_id == writer.session_id
    assert _contents(await reader.get_items()) == ["Hello", "Hi"]


async def test_two_live_objects_share_one_session(make_session: SessionFactory, db: str) -> None:
    first = make_session("shared", db)
    second = make_session("shared", db)
    await first.add_items([_msg("user", "from first")])
    await second.add_items([_msg("user", "from second")])

    assert _contents(await first.get_items()) == ["from first", "from second"]
    popped = await first.pop_item()
    assert popped is not None
    assert popped.get("content") == "from second"
    assert _contents(await second.get_items()) == ["from first"]


# --- close() and :memory: ----------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ["file", "memory"])
async def test_closed_session_rejects_every_operation(
    make_session: SessionFactory, db: str, db_kind: str
) -> None:
    session = make_session("closed", db if db_kind == "file" else ":memory:")
    await session.add_items([_msg("user", "before close")])
    session.close()

    with pytest.raises(RuntimeError, match="is closed"):
        await session.get_items()
    with pytest.raises(RuntimeError, match="is closed"):
        await session.add_items([_msg("user", "after close")])
    with pytest.raises(RuntimeError, match="is closed"):
        await session.add_items([])
    with pytest.raises(RuntimeError, match="is closed"):
        await session.pop_item()
    with pytest.raises(RuntimeError, match="is closed"):
        await session.clear_session()


async def test_close_keeps_the_data_on_file(make_session: SessionFactory, db: str) -> None:
    session = make_session("closed-kept", db)
    await session.add_items([_msg("user", "kept")])
    session.close()
    session.close()  # closing twice is harmless

    assert _contents(await make_session("closed-kept", db).get_items()) == ["kept"]


async def test_in_memory_database(make_session: SessionFactory) -> None:
    session = make_session("memory", ":memory:")
    assert await session.get_items() == []
    await session.add_items([_msg("user", "Hello"), _msg("assistant", "Hi"), _msg("user", "Bye")])
    assert _contents(await session.get_items()) == ["Hello", "Hi", "Bye"]
    assert _contents(await session.get_items(limit=2)) == ["Hi", "Bye"]

    popped = await session.pop_item()
    assert popped is not None
    assert popped.get("content") == "Bye"
    await asyncio.gather(*(session.add_items([_msg("user", f"m{i}")]) for i in range(5)))
    assert len(await session.get_items()) == 7

    await session.clear_session()
    assert await session.get_items() == []


# --- Runner with a session ---------------------------------------------------------------------


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_runner_remembers_earlier_turns(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("runner-basic", db)
    model = ScriptedModel([_reply("San Francisco", 1), _reply("California", 2)])
    agent = Agent(name="test", model=model)

    first = await _run(method, agent, "What city is the Golden Gate Bridge in?", session=session)
    assert first.final_output == "San Francisco"
    second = await _run(method, agent, "What state is it in?", session=session)
    assert second.final_output == "California"

    last_input = _last_input(model)
    assert len(last_input) > 1
    assert [_text(item) for item in last_input] == [
        "What city is the Golden Gate Bridge in?",
        "San Francisco",
        "What state is it in?",
    ]
    stored = await session.get_items()
    assert [_text(item) for item in stored] == [
        "What city is the Golden Gate Bridge in?",
        "San Francisco",
        "What state is it in?",
        "California",
    ]
    model.assert_complete()


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_runner_keeps_sessions_apart(
    make_session: SessionFactory, db: str, method: str
) -> None:
    model = ScriptedModel(
        [
            _reply("I like cats", 1),
            _reply("I like dogs", 2),
            _reply("Yes, you mentioned cats", 3),
        ]
    )
    agent = Agent(name="test", model=model)
    session_1 = make_session("session-1", db)
    session_2 = make_session("session-2", db)

    result = await _run(method, agent, "I like cats", session=session_1)
    assert result.final_output == "I like cats"
    result = await _run(method, agent, "I like dogs", session=session_2)
    assert result.final_output == "I like dogs"
    result = await _run(method, agent, "What did I say I like?", session=session_1)
    assert result.final_output == "Yes, you mentioned cats"

    assert [_text(item) for item in _last_input(model)] == [
        "I like cats",
        "I like cats",
        "What did I say I like?",
    ]
    assert [_text(item) for item in await session_2.get_items()] == ["I like dogs"] * 2


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_runner_appends_list_input_to_history(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("list-input", db)
    initial_history = [_msg("user", "Earlier message"), _msg("assistant", "Saved reply")]
    await session.add_items(initial_history)
    list_input = [_msg("user", "Test message")]
    model = ScriptedModel([_reply("This should run", 1)])
    agent = Agent(name="test", model=model)

    await _run(method, agent, list_input, session=session)

    assert _last_input(model) == initial_history + list_input


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_runner_session_input_callback(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("callback", db)
    initial_history = [
        _msg("user", "Hello there."),
        _msg("assistant", "Hi, I'm here to assist you."),
    ]
    await session.add_items(initial_history)

    def only_user_history(history: list[Any], new_input: list[Any]) -> list[Any]:
        return [item for item in history if item["role"] == "user"] + new_input

    new_turn_input = [_msg("user", "What your name?")]
    model = ScriptedModel([_reply("I'm gpt-4o", 1)])
    agent = Agent(name="test", model=model)

    await _run(
        method,
        agent,
        new_turn_input,
        session=session,
        run_config=RunConfig(session_input_callback=only_user_history),
    )

    assert _last_input(model) == [initial_history[0], new_turn_input[0]]


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_runner_callback_repeating_history_does_not_grow_session(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("repeat", db)
    model = ScriptedModel([_reply(f"assistant {turn}", turn) for turn in range(3)])
    agent = Agent(name="test", model=model)

    def repeat_first(history: list[Any], new_input: list[Any]) -> list[Any]:
        if not history:
            return new_input
        return [*history, history[0], *new_input]

    for turn in range(3):
        await _run(
            method,
            agent,
            f"user {turn}",
            session=session,
            run_config=RunConfig(session_input_callback=repeat_first),
        )

    stored = await session.get_items()
    user_messages = [item for item in stored if item.get("role") == "user"]
    assert _contents(user_messages) == ["user 0", "user 1", "user 2"]
    assert len(stored) == 6


# --- Runner with SessionSettings(limit=...) ----------------------------------------------------


async def _three_turns(method: str, agent: Agent[Any], session: SQLiteSession) -> None:
    for turn in range(1, 4):
        await _run(method, agent, f"Message {turn}", session=session)


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_run_config_session_limit(make_session: SessionFactory, db: str, method: str) -> None:
    session = make_session("limit", db)
    model = ScriptedModel([_reply(f"Reply {turn}", turn) for turn in range(1, 5)])
    agent = Agent(name="test", model=model)
    await _three_turns(method, agent, session)
    assert len(await session.get_items()) == 6

    await _run(
        method,
        agent,
        "Message 4",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=2)),
    )

    last_input = _last_input(model)
    assert len(last_input) == 3
    assert last_input[0].get("content") == "Message 3"
    assert last_input[1].get("content")[0]["text"] == "Reply 3"
    assert last_input[2].get("content") == "Message 4"
    assert len(await session.get_items()) == 8


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_run_config_session_limit_zero(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("limit-zero", db)
    model = ScriptedModel([_reply(f"Reply {turn}", turn) for turn in range(1, 4)])
    agent = Agent(name="test", model=model)
    await _run(method, agent, "Message 1", session=session)
    await _run(method, agent, "Message 2", session=session)

    await _run(
        method,
        agent,
        "Message 3",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=0)),
    )

    last_input = _last_input(model)
    assert len(last_input) == 1
    assert last_input[0].get("content") == "Message 3"


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_run_config_session_limit_none_gets_all_history(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("limit-none", db)
    model = ScriptedModel([_reply(f"Reply {turn}", turn) for turn in range(1, 7)])
    agent = Agent(name="test", model=model)
    for turn in range(1, 6):
        await _run(method, agent, f"Message {turn}", session=session)
    assert len(await session.get_items()) == 10

    await _run(
        method,
        agent,
        "Message 6",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=None)),
    )

    last_input = _last_input(model)
    assert len(last_input) == 11
    assert last_input[0].get("content") == "Message 1"
    assert last_input[-1].get("content") == "Message 6"


@pytest.mark.parametrize("method", RUNNER_METHODS)
async def test_run_config_session_limit_larger_than_history(
    make_session: SessionFactory, db: str, method: str
) -> None:
    session = make_session("limit-large", db)
    model = ScriptedModel([_reply("Reply 1", 1), _reply("Reply 2", 2)])
    agent = Agent(name="test", model=model)
    await _run(method, agent, "Message 1", session=session)

    await _run(
        method,
        agent,
        "Message 2",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=100)),
    )

    last_input = _last_input(model)
    assert len(last_input) == 3
    assert last_input[0].get("content") == "Message 1"
    assert last_input[1].get("content")[0]["text"] == "Reply 1"
    assert last_input[2].get("content") == "Message 2"


async def test_run_config_overrides_session_settings(make_session: SessionFactory, db: str) -> None:
    session = make_session("runner-override", db, session_settings=SessionSettings(limit=100))
    await session.add_items([_msg("user", f"Turn {i}") for i in range(10)])
    model = ScriptedModel([_reply("Got it", 1)])
    agent = Agent(name="test", model=model)

    await Runner.run(
        agent,
        "New question",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=2)),
    )

    history = [item for item in _last_input(model) if item.get("content") != "New question"]
    assert _contents(history) == ["Turn 8", "Turn 9"]


async def test_session_settings_limit_applies_to_runner(
    make_session: SessionFactory, db: str
) -> None:
    session = make_session("runner-settings", db, session_settings=SessionSettings(limit=2))
    await session.add_items([_msg("user", f"Turn {i}") for i in range(10)])
    model = ScriptedModel([_reply("Got it", 1)])
    agent = Agent(name="test", model=model)

    await Runner.run(agent, "New question", session=session)

    assert _contents(_last_input(model)) == ["Turn 8", "Turn 9", "New question"]
