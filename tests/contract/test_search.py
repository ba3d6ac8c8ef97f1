"""``SessionManager.search_sessions`` and ``agent-sessions search`` on every backend.

Besides what a search returns, these check the index itself (raw rows, behind the library's
back) after every kind of delete: no text of a deleted item may stay findable.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from agent_sessions import (
    AgentSessionSettings,
    InvalidArgumentError,
    SearchHit,
    SearchUnavailableError,
    SessionManager,
    get_agent_session,
)
from agent_sessions.cli import main
from agent_sessions.clock import utc_now
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user

from .helpers import _sqlite, is_postgres, pg_query, write


def manager_for(target: str, clock: FakeClock | None = None, **kwargs: Any) -> SessionManager:
    options: dict[str, Any] = {"max_messages": 50, "retention_days": 7, "clock": clock}
    return SessionManager(target, **{**options, **kwargs})


def indexed_texts(target: str) -> list[str]:
    """Every text the search index holds, read behind the library's back."""
    if is_postgres(target):
        rows = pg_query(
            target, "SELECT search_text FROM agent_sessions_item WHERE search_vector IS NOT NULL"
        )
    else:
        rows = _sqlite(target, "SELECT body FROM agent_sessions_search")
    return [row[0] for row in rows]


async def search(target: str, user_id: str, query: str, clock: FakeClock, **kw: Any) -> list[Any]:
    async with manager_for(target, clock) as manager:
        return await manager.search_sessions(user_id, query, **kw)


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.session_id for hit in hits]


async def test_finds_words_of_user_and_assistant_messages(target: str, clock: FakeClock) -> None:
    trip = await write(
        target,
        "alice",
        "trip",
        [user("Plan a trip to Lisbon in spring"), assistant("Lisbon has lovely tiled facades")],
        clock=clock,
    )
    await write(target, "alice", "other", [user("Recipe for bread")], clock=clock)
    by_user = await search(target, "alice", "spring trip", clock)
    by_assistant = await search(target, "alice", "TILED facades", clock)
    assert ids(by_user) == ids(by_assistant) == [trip]
    hit = by_assistant[0]
    assert isinstance(hit, SearchHit)
    assert (hit.conversation_id, hit.last_activity) == ("trip", clock.now)
    assert hit.title == "Plan a trip to Lisbon in spring"  # the default title
    assert "tiled" in hit.snippet.lower()
    assert "spring" in by_user[0].snippet.lower()
    assert await search(target, "alice", "spring bread", clock) == [], "every word must match"
    assert ids(await search(target, "alice", "lisb", clock)) == [trip], "last word: a prefix"
    assert await search(target, "alice", "lisb spring", clock) == [], "only the last word"
    with pytest.raises(ValueError, match="frozen"):
        hit.rank = 0.0


async def test_never_finds_another_users_conversations(target: str, clock: FakeClock) -> None:
    alice = await write(target, "alice", "c1", [user("secret walrus plans")], clock=clock)
    bob = await write(target, "bob", "c1", [user("secret walrus plans")], clock=clock)
    # A user id that is a prefix, or that FTS syntax could read as a column or operator.
    for other in ("ali", "alice ", "owner", "body", "*", '"alice"'):
        await write(target, other, "c1", [user("secret walrus plans")], clock=clock)
    assert ids(await search(target, "alice", "walrus", clock)) == [alice]
    assert ids(await search(target, "bob", "secret walrus", clock)) == [bob]
    assert await search(target, "nobody", "walrus", clock) == []


async def test_tool_calls_and_outputs_are_not_indexed(target: str, clock: FakeClock) -> None:
    await write(
        target,
        "alice",
        "c1",
        [
            user("what is the weather"),
            {
                "type": "function_call",
                "call_id": "k1",
                "name": "zanzibar_lookup",
                "arguments": '{"city": "Zanzibar"}',
            },
            {"type": "function_call_output", "call_id": "k1", "output": "zanzibar is humid"},
            {
                "type": "reasoning",
                "id": "r1",
                "summary": [{"type": "summary_text", "text": "humid"}],
            },
            assistant("It is warm"),
        ],
        clock=clock,
    )
    assert await search(target, "alice", "zanzibar", clock) == []
    assert await search(target, "alice", "humid", clock) == []
    assert sorted(indexed_texts(target)) == ["It is warm", "what is the weather"]


async def test_ranks_best_first_with_limit(target: str, clock: FakeClock) -> None:
    filler = " ".join(f"word{n}" for n in range(60))
    once = await write(target, "alice", "once", [user(f"penguin {filler}")], clock=clock)
    clock.advance(minutes=1)
    often = await write(
        target, "alice", "often", [user("penguin penguin penguin colony")], clock=clock
    )
    clock.advance(minutes=1)
    await write(target, "alice", "none", [user("no birds here")], clock=clock)
    hits = await search(target, "alice", "penguin", clock)
    assert ids(hits) == [often, once]
    assert hits[0].rank > hits[1].rank > 0
    assert ids(await search(target, "alice", "penguin", clock, limit=1)) == [often]
    # One hit per session, for its best message.
    await write(target, "alice", "once", [user("penguin penguin penguin penguin")], clock=clock)
    hits = await search(target, "alice", "penguin", clock)
    assert sorted(ids(hits)) == sorted([often, once])


HOSTILE = [
    '"AND"',
    "AND",
    "a*",
    "NEAR(",
    "NEAR(a b, 2)",
    "-paris",
    "a OR b",
    "x AND",
    "NOT",
    "^start",
    "body : x",
    "owner : anything",
    "session_id: user_alice_conv_c1",
    "{body}: x",
    "'; DROP TABLE agent_messages; --",
    "x' OR '1'='1",
    "a & b | !c <-> d:*",
    "100%_\\done",
    "a\x00b",
    "\ud800 lone surrogate",
    "日本語のテキスト",
    "Ünïcödé ÀÉÎ",
    "ﬁ ligature ²",
    "x" * 10_000,
    " ".join(["paris"] * 5_000),
    " ".join(f"w{n}" for n in range(2_000)),
]
# No words: the one error a query can cause (InvalidArgumentError).
BLANK = [
    "",
    "   ",
    "\n\t",
    '"',
    "'",
    "*",
    "-",
    "(",
    ")",
    "\x00",
    "!!! --- ???",
    '" " *',
    "🐧🐧",
    "_",
]


async def test_hostile_queries_never_error(target: str, clock: FakeClock) -> None:
    sid = await write(target, "alice", "c1", [user("hello paris"), assistant("ok")], clock=clock)
    async with manager_for(target, clock) as manager:
        for query in HOSTILE:
            hits = await manager.search_sessions("alice", query)
            assert ids(hits) in ([], [sid]), query
        for query in BLANK:
            with pytest.raises(InvalidArgumentError, match="no words"):
                await manager.search_sessions("alice", query)
        for bad_limit in (0, -1, True, "5"):
            with pytest.raises(InvalidArgumentError):
                await manager.search_sessions("alice", "paris", limit=bad_limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await manager.search_sessions("alice", None)  # type: ignore[arg-type]
        assert ids(await manager.search_sessions("alice", "hello paris")) == [sid]
        assert ids(await manager.search_sessions("alice", " ".join(["paris"] * 5_000))) == [sid]


async def test_non_ascii_words(target: str, clock: FakeClock) -> None:
    texts = {
        "de": "Die Straße ist schön",
        "fr": "Un café crème, s'il vous plaît",
        "ru": "Привет, как дела?",
        "el": "Καλημέρα κόσμε",
        "ja": "東京 タワー",
    }
    sids = {}
    for key, text in texts.items():
        sids[key] = await write(target, "алиса", key, [user(text)], clock=clock)
    for query, key in [
        ("straße", "de"),
        ("SCHÖN", "de"),
        ("café", "fr"),
        ("cafe creme", "fr"),
        ("plaît", "fr"),
        ("привет", "ru"),
        ("ДЕЛА", "ru"),
        ("καλημέρα", "el"),
        ("東京", "ja"),
    ]:
        assert ids(await search(target, "алиса", query, clock)) == [sids[key]], query


async def expect_gone(target: str, clock: FakeClock, word: str) -> None:
    assert await search(target, "alice", word, clock) == [], word
    assert not [text for text in indexed_texts(target) if word in text.lower()], word


async def test_pruned_items_leave_the_index(target: str, clock: FakeClock) -> None:
    await write(target, "alice", "c1", [user("aardvark first"), assistant("noted")], clock=clock)
    assert len(await search(target, "alice", "aardvark", clock)) == 1
    with get_agent_session("alice", "c1", db_path=target, max_messages=3, clock=clock) as session:
        for n in range(3):
            await session.add_items([user(f"turn{n} later"), assistant(f"reply{n}")])  # type: ignore[list-item]
    await expect_gone(target, clock, "aardvark")
    assert len(await search(target, "alice", "turn2", clock)) == 1
    # The manager's pruning, after the bound was lowered.
    await write(target, "alice", "c2", [user("okapi"), assistant("x"), user("y")], clock=clock)
    async with manager_for(target, clock, max_messages=1) as manager:
        await manager.prune_session_messages("user_alice_conv_c2")
    await expect_gone(target, clock, "okapi")


async def test_popped_and_cleared_items_leave_the_index(target: str, clock: FakeClock) -> None:
    with get_agent_session("alice", "c1", db_path=target, clock=clock) as session:
        await session.add_items([user("keep this"), assistant("xylophone reply")])  # type: ignore[list-item]
        await session.pop_item()
    await expect_gone(target, clock, "xylophone")
    assert len(await search(target, "alice", "keep", clock)) == 1
    with get_agent_session("alice", "c2", db_path=target, clock=clock) as session:
        await session.add_items([user("quokka by session")])  # type: ignore[list-item]
        await session.clear_session()
    await expect_gone(target, clock, "quokka")
    sid = await write(target, "alice", "c3", [user("narwhal by manager")], clock=clock)
    async with manager_for(target, clock) as manager:
        await manager.clear_session(sid)
    await expect_gone(target, clock, "narwhal")
    assert len(await search(target, "alice", "keep", clock)) == 1


async def test_expired_sessions_are_not_found_and_cleanup_removes_them(
    target: str, clock: FakeClock
) -> None:
    await write(target, "alice", "old", [user("ancient pangolin")], clock=clock)
    clock.advance(days=6)
    fresh = await write(target, "alice", "new", [user("young pangolin")], clock=clock)
    clock.advance(days=1, seconds=1)  # "old" is now idle beyond the 7 days of retention
    assert ids(await search(target, "alice", "pangolin", clock)) == [fresh]
    assert await search(target, "alice", "ancient", clock) == []
    async with manager_for(target, clock) as manager:
        assert await manager.cleanup_inactive_sessions() == 1
    await expect_gone(target, clock, "ancient")
    assert ids(await search(target, "alice", "pangolin", clock)) == [fresh]


async def test_search_index_off_indexes_nothing(target: str, clock: FakeClock) -> None:
    with get_agent_session(
        "alice", "c1", db_path=target, clock=clock, search_index=False
    ) as session:
        await session.add_items([user("unindexed gecko"), assistant("fine")])  # type: ignore[list-item]
    settings = AgentSessionSettings(search_index=False)
    with get_agent_session("alice", "c2", db_path=target, settings=settings) as session:
        await session.add_items([user("another gecko")])  # type: ignore[list-item]
    assert indexed_texts(target) == []
    assert await search(target, "alice", "gecko", clock) == []
    async with manager_for(target, clock, settings=settings) as manager:
        with pytest.raises(SearchUnavailableError, match="SEARCH_INDEX"):
            await manager.search_sessions("alice", "gecko")
        with pytest.raises(InvalidArgumentError):  # bad input is still bad input
            await manager.search_sessions("alice", "  ")
    assert issubclass(SearchUnavailableError, RuntimeError)


async def test_calls_and_outputs_around_messages_keep_order(target: str, clock: FakeClock) -> None:
    # Indexing inserts rows one by one: the stored order must stay the written one.
    items = [user("first ibis"), call("k1"), output("k1"), assistant("second ibis"), user("3")]
    sid = await write(target, "alice", "c1", items, clock=clock)
    async with manager_for(target, clock) as manager:
        assert await manager.get_items(sid) == items
        hits = await manager.search_sessions("alice", "ibis")
    assert ids(hits) == [sid]


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_cli_search(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENT_SESSION_POOL_MIN_SIZE", "0")  # see test_cli's fixture

    async def populate() -> None:
        now = FakeClock(utc_now())
        try:
            await write(
                target, "alice", "c1", [user("the blue heron"), assistant("a bird")], clock=now
            )
            await write(target, "bob", "c1", [user("the blue heron")], clock=now)
        finally:
            if is_postgres(target):
                from agent_sessions.backends.postgres import close_pools

                await close_pools()

    asyncio.run(populate())
    code, text = run_cli("--db", target, "search", "--user", "alice", "heron")
    assert code == 0
    assert "user_alice_conv_c1" in text
    assert "blue heron" in text
    assert "bob" not in text
    code, text = run_cli("--db", target, "search", "--user", "alice", "blue", "--json")
    hits = json.loads(text)
    assert code == 0
    assert [hit["session_id"] for hit in hits] == ["user_alice_conv_c1"]
    assert hits[0]["last_activity"].endswith("Z")
    assert "blue" in hits[0]["snippet"]
    assert run_cli("--db", target, "search", "--user", "carol", "heron") == (
        0,
        "no matching sessions\n",
    )
    capsys.readouterr()
    code, text = run_cli("--db", target, "search", "--user", "alice", '" *')
    err = capsys.readouterr().err
    assert (code, text) == (2, "")
    assert err.count("\n") == 1
    assert "no words" in err
    code, _ = run_cli("--db", target, "search", "heron")  # --user is required
    assert code == 2
    monkeypatch.setenv("AGENT_SESSION_SEARCH_INDEX", "false")
    capsys.readouterr()
    code, _ = run_cli("--db", target, "search", "--user", "alice", "heron")
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (1, 1)
    assert "search is off" in err
